//! Scaffolding shared by hv-sim's Xen PV tests (the one copy): hv-sim's
//! tests include it with `#[path = "common/xen.rs"] mod xen_helpers;` and
//! import the helpers they use. Every helper follows the domain's ABI
//! (`XenDomain::abi`): pv64 and pv32 argument layouts where they differ.

// Each test binary compiles this module on its own and uses only some of
// the helpers; the rest would warn as dead code in that binary.
#![allow(dead_code)]

use hv_sim::xen::*;

/// Hypercall `nr` from vCPU 0 with the arguments `a` (the rest zero).
pub fn hc(d: &XenDomain, nr: u64, a: &[u64]) -> i64 {
    let mut args = [0u64; 6];
    args[..a.len()].copy_from_slice(a);
    d.hypercall(0, nr, args)
}

/// The frame `va` is mapped to (which must be mapped).
pub fn mfn(d: &XenDomain, va: u64) -> u64 {
    d.virt_to_mfn(va).unwrap()
}

/// update_va_mapping of `va` to `pte` (pv32 splits the PTE in two).
pub fn uvm(d: &XenDomain, va: u64, pte: u64, flags: u64) -> i64 {
    match d.abi() {
        Abi::Pv64 => hc(d, nr::UPDATE_VA_MAPPING, &[va, pte, flags]),
        Abi::Pv32 => hc(
            d,
            nr::UPDATE_VA_MAPPING,
            &[va, pte & 0xFFFF_FFFF, pte >> 32, flags],
        ),
    }
}

/// update_va_mapping of `va` to its own frame, present, read-only or
/// writable, no flush flags.
pub fn map(d: &XenDomain, va: u64, writable: bool) -> i64 {
    let pte = mfn(d, va) << 12 | 1 | if writable { 2 } else { 0 };
    uvm(d, va, pte, 0)
}

/// A page with `descs` at slots 0.., mapped read-only; returns (va, mfn).
pub fn table(d: &XenDomain, descs: &[u64]) -> (u64, u64) {
    let va = d.alloc_pages(1);
    for (i, x) in descs.iter().enumerate() {
        assert!(d.host_write_u64(va + 8 * i as u64, *x));
    }
    assert_eq!(map(d, va, false), 0);
    (va, mfn(d, va))
}

/// set_gdt with the frame list `mfns` (unsigned long per frame for pv64,
/// uint32 for pv32) in a fresh page.
pub fn set_gdt(d: &XenDomain, mfns: &[u64], entries: u64) -> i64 {
    let list = d.alloc_pages(1);
    match d.abi() {
        Abi::Pv64 => {
            for (i, m) in mfns.iter().enumerate() {
                d.host_write_u64(list + 8 * i as u64, *m);
            }
        }
        Abi::Pv32 => {
            // uint32 frame list: pack two per 8-byte write.
            for (i, pair) in mfns.chunks(2).enumerate() {
                let v = pair[0] | pair.get(1).copied().unwrap_or(0) << 32;
                d.host_write_u64(list + 8 * i as u64, v);
            }
        }
    }
    hc(d, nr::SET_GDT, &[list, entries])
}

/// Write the mmuext ops (cmd, arg1, arg2) in the ABI's layout (24 bytes
/// each for pv64, 12 for pv32) to a fresh page; returns their VA.
pub fn ops(d: &XenDomain, list: &[(u32, u64, u64)]) -> u64 {
    let va = d.alloc_pages(1);
    for (i, (c, a1, a2)) in list.iter().enumerate() {
        match d.abi() {
            Abi::Pv64 => {
                let o = va + 24 * i as u64;
                d.host_write_u64(o, u64::from(*c));
                d.host_write_u64(o + 8, *a1);
                d.host_write_u64(o + 16, *a2);
            }
            Abi::Pv32 => {
                // 12-byte ops: write them through a byte image.
                let mut img = vec![0u8; 12 * list.len() + 8];
                for (j, (c, a1, a2)) in list.iter().enumerate() {
                    img[12 * j..12 * j + 4].copy_from_slice(&c.to_le_bytes());
                    img[12 * j + 4..12 * j + 8].copy_from_slice(&(*a1 as u32).to_le_bytes());
                    img[12 * j + 8..12 * j + 12].copy_from_slice(&(*a2 as u32).to_le_bytes());
                }
                for (k, w) in img.chunks(8).enumerate() {
                    let mut b = [0u8; 8];
                    b[..w.len()].copy_from_slice(w);
                    d.host_write_u64(va + 8 * k as u64, u64::from_le_bytes(b));
                }
                return va;
            }
        }
    }
    va
}

/// A pv64 multicall entry at `va`: `op`, result preset to 0x5555, `args`.
pub fn mc_entry(d: &XenDomain, va: u64, op: u64, args: &[u64]) {
    d.host_write_u64(va, op);
    d.host_write_u64(va + 8, 0x5555);
    for (i, a) in args.iter().enumerate() {
        d.host_write_u64(va + 16 + 8 * i as u64, *a);
    }
}

/// `VCPUOP_*` (public/vcpu.h) and the 64-bit `vcpu_guest_context` layout
/// (public/arch-x86/xen.h, xen-x86_64.h), written out from the headers
/// rather than taken from hv-sim. Shared with `tests/tests/xen_smp.rs`.
pub mod vcpu_ctx {
    /// `__HYPERVISOR_vcpu_op`.
    pub const VCPU_OP: u64 = 24;
    /// VCPUOP_initialise.
    pub const INITIALISE: u64 = 0;
    /// VCPUOP_up.
    pub const UP: u64 = 1;
    /// VCPUOP_is_up.
    pub const IS_UP: u64 = 3;
    /// VGCF_in_kernel.
    pub const VGCF_IN_KERNEL: u64 = 1 << 2;
    /// VGCF_online.
    pub const VGCF_ONLINE: u64 = 1 << 5;
    /// flags.
    pub const FLAGS: u64 = 512;
    /// user_regs.rip.
    pub const RIP: u64 = 520 + 16 * 8;
    /// user_regs.cs.
    pub const CS: u64 = 520 + 17 * 8;
    /// user_regs.rflags.
    pub const RFLAGS: u64 = 520 + 18 * 8;
    /// user_regs.rsp.
    pub const RSP: u64 = 520 + 19 * 8;
    /// user_regs.ss.
    pub const SS: u64 = 520 + 20 * 8;
    /// trap_ctxt[0].
    pub const TRAP_CTXT: u64 = 720;
    /// ldt_base (ldt_ents follows).
    pub const LDT_BASE: u64 = 4816;
    /// gdt_frames[0].
    pub const GDT_FRAMES: u64 = 4832;
    /// gdt_ents.
    pub const GDT_ENTS: u64 = 4960;
    /// kernel_ss (kernel_sp follows).
    pub const KERNEL_SS: u64 = 4968;
    /// ctrlreg[0].
    pub const CTRLREG: u64 = 4984;
    /// sizeof(struct vcpu_guest_context).
    pub const SIZE: u64 = 5168;
}

/// What a vCPU context written by [`put_context`] holds.
pub struct Context {
    /// Entry RIP.
    pub rip: u64,
    /// Entry RSP.
    pub rsp: u64,
    /// Entry CS (Xen raises its RPL to 3).
    pub cs: u64,
    /// Entry RFLAGS (Xen clears IOPL, sets IF).
    pub rflags: u64,
    /// The one GDT frame (16 entries).
    pub gdt: u64,
    /// The root page-table frame.
    pub root: u64,
}

/// Write a kernel-mode 64-bit `vcpu_guest_context` at `ctx` (two zeroed
/// pages) as Linux's `cpu_initialize_context` does: `c`'s registers, SS and
/// kernel SS = FLAT_KERNEL_SS (0xe02b), one GDT frame of 16 entries, CR3.
pub fn put_context(d: &XenDomain, ctx: u64, c: &Context) {
    use vcpu_ctx::*;
    let put = |off: u64, v: u64| assert!(d.host_write_u64(ctx + off, v));
    put(FLAGS, VGCF_IN_KERNEL);
    put(RIP, c.rip);
    put(RSP, c.rsp);
    put(CS, c.cs);
    put(SS, 0xe02b);
    put(RFLAGS, c.rflags);
    put(GDT_FRAMES, c.gdt);
    put(GDT_ENTS, 16);
    put(KERNEL_SS, 0xe02b);
    put(CTRLREG + 3 * 8, c.root << 12);
}
