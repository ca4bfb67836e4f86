//! Xen-style pvops backend (hypercall page: `set_gdt`, `update_descriptor`,
//! `set_trap_table`, `mmuext_op(SET_LDT)`, `stack_switch`, `multicall`).
//!
//! Not implemented yet: this crate reserves the name and layout in the
//! workspace. The work is tracked by the "hv-sim with a Xen PV personality"
//! issue; see the README's op table for what each op will do.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod platform;

pub use platform::XenPlatform;

/// Xen hypercall numbers used by the descriptor ops (`xen/include/public/xen.h`).
pub mod nr {
    /// `set_trap_table(trap_info *)`.
    pub const SET_TRAP_TABLE: u32 = 0;
    /// `set_gdt(frames, entries)`.
    pub const SET_GDT: u32 = 2;
    /// `stack_switch(ss, sp)`.
    pub const STACK_SWITCH: u32 = 3;
    /// `update_descriptor(maddr, desc)`.
    pub const UPDATE_DESCRIPTOR: u32 = 10;
    /// `multicall(list, nr)`.
    pub const MULTICALL: u32 = 13;
    /// `update_va_mapping(va, pte, flags)`.
    pub const UPDATE_VA_MAPPING: u32 = 14;
    /// `set_segment_base(which, base)`.
    pub const SET_SEGMENT_BASE: u32 = 25;
    /// `mmuext_op(ops, count, done, foreigndom)`.
    pub const MMUEXT_OP: u32 = 26;
}
