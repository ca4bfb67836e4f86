//! The vCPU as the emulator sees it ([`crate::emulate::CpuState`] for the
//! trap-and-emulate personality).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::emulate::{CpuState, DtRegisters, Segment, SegmentCache};

/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;

/// The vCPU as the emulator sees it: the registers at the fault, the
/// segment registers' hidden parts and EFER.LMA (the mode), and the
/// guest's virtual descriptor-table registers (virtual CPL 0, virtual
/// CR4.UMIP off).
pub(super) struct TrapCpu {
    pub(super) regs: kvm_regs,
    segs: [SegmentCache; 6],
    lma: bool,
    pub(super) dt: DtRegisters,
}

/// A KVM segment register as the emulator's segment cache (KVM's limit is
/// in bytes; the cache holds the descriptor's field and G).
fn segment_cache(s: &kvm_segment) -> SegmentCache {
    let g = s.g != 0;
    SegmentCache {
        base: s.base,
        limit: if g { s.limit >> 12 } else { s.limit },
        typ: s.type_ & 0xf,
        s: s.s != 0,
        dpl: s.dpl & 3,
        present: s.present != 0,
        db: s.db != 0,
        g,
        l: s.l != 0,
        unusable: s.unusable != 0,
    }
}

impl TrapCpu {
    pub(super) fn new(regs: kvm_regs, sregs: &kvm_sregs, dt: DtRegisters) -> TrapCpu {
        TrapCpu {
            regs,
            segs: [
                &sregs.es, &sregs.cs, &sregs.ss, &sregs.ds, &sregs.fs, &sregs.gs,
            ]
            .map(segment_cache),
            lma: sregs.efer & EFER_LMA != 0,
            dt,
        }
    }
}

impl CpuState for TrapCpu {
    fn gpr(&self, n: u8) -> u64 {
        let r = &self.regs;
        match n {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => r.rsp,
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            15 => r.r15,
            _ => 0,
        }
    }

    fn set_gpr(&mut self, n: u8, value: u64) {
        let r = &mut self.regs;
        let slot = match n {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => &mut r.rsp,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            15 => &mut r.r15,
            _ => return,
        };
        *slot = value;
    }

    fn rip(&self) -> u64 {
        self.regs.rip
    }

    fn segment(&self, seg: Segment) -> SegmentCache {
        self.segs[seg as usize]
    }

    fn long_mode_active(&self) -> bool {
        self.lma
    }

    fn cpl(&self) -> u8 {
        0
    }

    fn umip(&self) -> bool {
        false
    }

    fn descriptor_tables(&self) -> DtRegisters {
        self.dt
    }

    fn set_descriptor_tables(&mut self, dt: DtRegisters) {
        self.dt = dt;
    }
}
