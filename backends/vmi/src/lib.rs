//! VMI-style pvops backend (option ROM probe, relocation query, calls 3–14
//! and SetLazyMode).
//!
//! Not implemented yet: this crate reserves the name and layout in the
//! workspace. The work is tracked by the "VMI-style backend" issue.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

/// VMI API 3.0 call numbers for descriptor tables (Linux `asm/vmi.h`).
pub mod call {
    /// SetGDT.
    pub const SET_GDT: u32 = 3;
    /// SetLDT.
    pub const SET_LDT: u32 = 4;
    /// SetIDT.
    pub const SET_IDT: u32 = 5;
    /// SetTR.
    pub const SET_TR: u32 = 6;
    /// GetGDT.
    pub const GET_GDT: u32 = 7;
    /// GetLDT.
    pub const GET_LDT: u32 = 8;
    /// GetIDT.
    pub const GET_IDT: u32 = 9;
    /// GetTR.
    pub const GET_TR: u32 = 10;
    /// WriteGDTEntry.
    pub const WRITE_GDT_ENTRY: u32 = 11;
    /// WriteLDTEntry.
    pub const WRITE_LDT_ENTRY: u32 = 12;
    /// WriteIDTEntry.
    pub const WRITE_IDT_ENTRY: u32 = 13;
    /// UpdateKernelStack.
    pub const UPDATE_KERNEL_STACK: u32 = 14;
    /// SetLazyMode.
    pub const SET_LAZY_MODE: u32 = 73;
}
