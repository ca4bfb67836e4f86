//! Scaffolding shared by hv-sim's VMI personality tests that drive a
//! `VmiHypervisor<RamMemory>` call by call (`vmi_escapes.rs`,
//! `vmi_invariants.rs`): the RAM layout, VMI API 3.0's call numbers as
//! literals (Linux `asm/vmi.h`, independent of the guest crate), and raw
//! descriptor builders. Each test file keeps its own `call` wrapper (what
//! it checks after every call).

// Each test binary compiles this module on its own and uses only some of
// it.
#![allow(dead_code)]

use hv_sim::vmi::{GuestKind, RamMemory, VmiHypervisor};

pub const RAM: u64 = 0xC100_0000;
pub const RAM_SIZE: usize = 0x10000;
pub const GDT: u64 = RAM + 0x1000;
pub const IDT: u64 = RAM + 0x2000;
pub const DTR: u64 = RAM + 0x4000;
pub const TSS: u64 = RAM + 0x5000;

pub const SET_GDT: u32 = 3;
pub const SET_IDT: u32 = 5;
pub const SET_TR: u32 = 6;
pub const WRITE_GDT_ENTRY: u32 = 11;
pub const WRITE_IDT_ENTRY: u32 = 13;
pub const SET_LAZY_MODE: u32 = 73;

/// 64-bit ring-0 code segment (L, DPL 0, present, accessed).
pub const KERNEL_CODE64: u64 = 0x00af_9b00_0000_ffff;
/// Flat data segment, DPL 0.
pub const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;

pub type Hv = VmiHypervisor<RamMemory>;

/// A fresh machine of `kind` after VMI_Init.
pub fn machine(kind: GuestKind) -> Hv {
    let hv = VmiHypervisor::new(kind, RamMemory::new(RAM, RAM_SIZE));
    assert_eq!(hv.init(), 0);
    hv
}

/// The last call's rejection reason ("" if it was accepted).
pub fn reason(hv: &Hv) -> String {
    hv.trace()
        .last_call()
        .and_then(|(_, r)| r.map(String::from))
        .unwrap_or_default()
}

/// Write a DTR operand at [`DTR`] (10 bytes for 64-bit, 6 for 32-bit).
pub fn write_dtr(hv: &Hv, base: u64, limit: u64) {
    hv.memory().write_u64(DTR, limit | (base << 16));
    hv.memory().write_u64(DTR + 8, base >> 48);
}

/// A 64-bit interrupt gate (DPL 0) to `offset` through `sel`.
pub fn gate64(sel: u64, offset: u64) -> (u64, u64) {
    let low = (offset & 0xFFFF) | (sel << 16) | (0x8E << 40) | ((offset & 0xFFFF_0000) << 32);
    (low, offset >> 32)
}

/// A 64-bit available TSS descriptor at `base` with limit 0x67, present or
/// not.
pub fn tss64(base: u64, present: bool) -> (u64, u64) {
    let low = 0x67
        | ((base & 0xFF_FFFF) << 16)
        | (0x9 << 40)
        | (u64::from(present) << 47)
        | ((base & 0xFF00_0000) << 32);
    (low, base >> 32)
}
