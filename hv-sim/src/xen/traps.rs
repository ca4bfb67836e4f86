//! How Xen delivers an exception to a 64-bit PV kernel and how the kernel
//! returns: the bounce frame (`create_bounce_frame` in Xen's
//! `x86_64/entry.S`) and the `iret` hypercall (`do_iret` in `pv/iret.c`).
//! Pure functions over register values; the KVM runner
//! ([`crate::kvm::xen`]) reads and writes the vCPU and guest memory.
//!
//! Bounce frame, for a guest already in kernel mode (the only mode the
//! runner's guests use): the frame is pushed at the interrupted rsp rounded
//! down to 16 bytes; from the new rsp up it holds
//! `rcx, r11, [error code,] rip, cs, rflags, rsp, ss` where
//! * `cs` has its RPL cleared ("kernel context") and bits 32-39 hold the
//!   vCPU's event mask before delivery (`saved_upcall_mask`);
//! * `rflags` has IF = !saved_upcall_mask and IOPL 0 (no
//!   `VMASST_TYPE_architectural_iopl`);
//! * the event mask is then set if the trap-table entry asks for it
//!   (`flags & 4`, `TBF_INTERRUPT`);
//! * the guest continues at the handler on `FLAT_KERNEL_CS`/`FLAT_KERNEL_SS`
//!   with TF, NT, RF, VM and AC cleared.
//!
//! `iret`: the kernel jumps to the hypercall page's `iret` stub with
//! `[flags, rip, cs, rflags, rsp, ss]` on its stack; the stub pushes rcx,
//! r11 and rax, so Xen reads `rax, r11, rcx, flags, rip, cs, rflags, rsp,
//! ss` (`struct iret_context`). A `cs` with RPL 3 means "return to user
//! mode", which needs user page tables (none here: Xen crashes the domain).
//! Otherwise rip, rsp, `cs | 3`, `ss | 3` and rflags (IOPL and VM cleared,
//! IF set) are restored, rcx and r11 too unless `flags` has
//! `VGCF_in_syscall`, the event mask becomes !rflags.IF, and rax is the
//! saved rax.

/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.IOPL.
pub const RFLAGS_IOPL: u64 = 3 << 12;
/// RFLAGS.NT.
pub const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.RF.
pub const RFLAGS_RF: u64 = 1 << 16;
/// RFLAGS.VM.
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;
/// RFLAGS bit 1: reserved, always 1 (Xen's `X86_EFLAGS_MBS`).
pub const RFLAGS_MBS: u64 = 1 << 1;
/// The RFLAGS bits a 64-bit `iretq` executed at CPL 0 loads from its
/// frame (SDM vol. 2A, IRET, RETURN-TO-OUTER-PRIVILEGE-LEVEL, operand size
/// 64): CF PF AF ZF SF TF DF OF NT; RF AC ID; IF (CPL <= IOPL); IOPL, VIF,
/// VIP (CPL 0). Not VM (IA-32e mode) and none of the reserved bits 1, 3,
/// 5, 15, 22-63 (bit 1 reads as 1).
pub const IRETQ_LOADS: u64 = 0x3d_7fd5;
/// The RFLAGS bits `sysretq` loads from r11 (SDM vol. 2B, SYSRET:
/// `RFLAGS <- (R11 & 3C7FD7H) | 2`): as [`IRETQ_LOADS`] less RF.
pub const SYSRET_LOADS: u64 = 0x3c_7fd5;

/// The RFLAGS a 64-bit PV vCPU runs with when Xen 4.17.7 enters it with
/// `saved` in its saved registers (`restore_all_guest`,
/// `x86_64/entry.S`): IOPL and VM cleared and IF set (lines 207-208 on the
/// `sysretq` path, 241-242 on the `iretq` one), then the instruction loads
/// what it loads ([`IRETQ_LOADS`], [`SYSRET_LOADS`]) with bit 1 set. The
/// `sysretq` path is taken when the saved `entry_vector` has
/// `TRAP_syscall` (a hypercall's `iret` with `VGCF_in_syscall`) and rip
/// is canonical. The result is always a valid RFLAGS for a 64-bit vCPU
/// entry (SDM vol. 3C, VM entries, "Checks on Guest RIP, RFLAGS, and
/// SSP": bits 3, 5, 15 and 22-63 clear, bit 1 set, VM clear in IA-32e
/// mode).
pub fn exit_rflags(saved: u64, sysret: bool) -> u64 {
    let r11 = (saved & !(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF;
    let loads = if sysret { SYSRET_LOADS } else { IRETQ_LOADS };
    (r11 & loads) | RFLAGS_MBS
}

/// The vCPU after Xen 4.17.7 returns from an `iret` hypercall to `r`:
/// (rflags, rcx, r11). Without `VGCF_in_syscall`, `iretq` with the
/// context's rcx and r11. With it, the hypercall's `TRAP_syscall` stays in
/// `entry_vector`, so `restore_all_guest` leaves through `sysretq`
/// (`x86_64/entry.S` 204-233; `iretq` at 236-247 when rip is not
/// canonical): rcx = rip (line 230, or 238) and r11 = the flags (206-208,
/// as `do_iret` left them), which `sysretq` then loads ([`exit_rflags`]).
pub fn iret_exit(r: &IretReturn) -> (u64, u64, u64) {
    match r.rcx_r11 {
        Some((rcx, r11)) => (exit_rflags(r.rflags, false), rcx, r11),
        None => {
            let r11 = (r.rflags & !(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF;
            let sysret = super::domain::is_canonical(r.rip);
            (exit_rflags(r.rflags, sysret), r.rip, r11)
        }
    }
}

/// `VGCF_in_syscall` in `iret_context.flags`.
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;
/// `trap_info.flags` bit 2: mask events on entry (`TBF_INTERRUPT`).
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// Vectors whose hardware exception pushes an error code (and Xen's bounce
/// frame with it): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The interrupted context, as the CPU (or hv-sim) saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted {
    /// rip.
    pub rip: u64,
    /// cs selector.
    pub cs: u16,
    /// rflags.
    pub rflags: u64,
    /// rsp.
    pub rsp: u64,
    /// ss selector.
    pub ss: u16,
    /// rcx.
    pub rcx: u64,
    /// r11.
    pub r11: u64,
}

/// A bounce frame: where it goes and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceFrame {
    /// The guest's new rsp: the frame's lowest address.
    pub rsp: u64,
    /// The frame's words from `rsp` up.
    pub words: Vec<u64>,
    /// The handler's rflags (what the vCPU continues with).
    pub rflags: u64,
    /// The event mask after delivery.
    pub upcall_mask: u8,
}

/// Build the bounce frame for an exception taken in guest kernel mode.
/// `mask_events` is the trap-table entry's `flags & 4`.
pub fn bounce_frame(
    at: &Interrupted,
    error_code: Option<u32>,
    upcall_mask: u8,
    mask_events: bool,
) -> BounceFrame {
    let top = at.rsp & !0xf;
    let cs_word = u64::from(at.cs & !3) | (u64::from(upcall_mask) << 32);
    let mut flags = at.rflags & !(RFLAGS_IF | RFLAGS_IOPL);
    if upcall_mask == 0 {
        flags |= RFLAGS_IF;
    }
    let mut words = vec![at.rcx, at.r11];
    if let Some(e) = error_code {
        words.push(u64::from(e));
    }
    words.extend([at.rip, cs_word, flags, at.rsp, u64::from(at.ss)]);
    BounceFrame {
        rsp: top.wrapping_sub(8 * words.len() as u64),
        words,
        rflags: at.rflags & !(RFLAGS_AC | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | RFLAGS_TF),
        upcall_mask: upcall_mask | u8::from(mask_events),
    }
}

/// The state `iret` returns to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IretReturn {
    /// rax (the saved one).
    pub rax: u64,
    /// rip.
    pub rip: u64,
    /// cs (`| 3`).
    pub cs: u16,
    /// rflags (IOPL and VM cleared, IF set).
    pub rflags: u64,
    /// rsp.
    pub rsp: u64,
    /// ss (`| 3`).
    pub ss: u16,
    /// rcx and r11, unless `VGCF_in_syscall` said to keep the current ones.
    pub rcx_r11: Option<(u64, u64)>,
    /// The event mask: !rflags.IF.
    pub upcall_mask: u8,
}

/// Why an `iret` crashes the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IretError {
    /// The context could not be read from the guest stack.
    Unreadable(u64),
    /// `cs` has RPL 3: a return to user mode without user page tables.
    NoUserPageTables(u16),
}

// Written out rather than derived with thiserror, so that the in-process
// models (hv-sim without default features) do not need it.
impl core::fmt::Display for IretError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IretError::Unreadable(at) => write!(
                f,
                "iret: fault while reading the iret context from the guest stack at {at:#x}"
            ),
            IretError::NoUserPageTables(cs) => write!(
                f,
                "iret: guest switching to user mode (cs {cs:#x}) with no user page tables"
            ),
        }
    }
}

impl std::error::Error for IretError {}

/// Evaluate an `iret` from the 9-word `iret_context` at the guest's rsp.
pub fn iret(ctx: [u64; 9]) -> Result<IretReturn, IretError> {
    let [rax, r11, rcx, flags, rip, cs, rflags, rsp, ss] = ctx;
    if cs & 3 == 3 {
        return Err(IretError::NoUserPageTables(cs as u16));
    }
    Ok(IretReturn {
        rax,
        rip,
        cs: (cs as u16) | 3,
        rflags: (rflags & !(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF,
        rsp,
        ss: (ss as u16) | 3,
        rcx_r11: (flags & VGCF_IN_SYSCALL == 0).then_some((rcx, r11)),
        upcall_mask: u8::from(rflags & RFLAGS_IF == 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Interrupted {
        Interrupted {
            rip: 0x20_1234,
            cs: 0xe033,
            rflags: 0x3246 | RFLAGS_TF | RFLAGS_AC,
            rsp: 0x22_3f38,
            ss: 0xe02b,
            rcx: 0xc,
            r11: 0x11,
        }
    }

    /// entry.S create_bounce_frame: `andq $~0xf,%rsi`, then 7 words (8
    /// with an error code) below; RPL cleared in cs; mask in bits 32-39;
    /// IF = !mask, IOPL 0; TF/NT/RF/VM/AC cleared in the live rflags.
    #[test]
    fn frame_layout_with_and_without_error_code() {
        let f = bounce_frame(&at(), None, 1, false);
        assert_eq!(f.rsp, 0x22_3f30 - 7 * 8);
        assert_eq!(
            f.words,
            vec![
                0xc,
                0x11,
                0x20_1234,
                0x1_0000_e030,
                0x0046 | RFLAGS_TF | RFLAGS_AC,
                0x22_3f38,
                0xe02b
            ]
        );
        assert_eq!(f.rflags, 0x3246);
        assert_eq!(f.upcall_mask, 1);
        let g = bounce_frame(&at(), Some(0x7f8), 0, true);
        assert_eq!(g.rsp, 0x22_3f30 - 8 * 8);
        assert_eq!(g.words[2], 0x7f8);
        assert_eq!(g.words[4], 0xe030, "mask 0 in bits 32-39");
        assert_eq!(g.words[5] & RFLAGS_IF, RFLAGS_IF, "IF = !saved mask");
        assert_eq!(g.upcall_mask, 1, "TBF_INTERRUPT sets the mask");
    }

    /// pv/iret.c do_iret.
    #[test]
    fn iret_restores_and_forces_guest_privilege() {
        let r = iret([
            7,
            0x11,
            0xc,
            0,
            0x20_1236,
            0x1_0000_e030,
            0x46,
            0x22_3f38,
            0xe02b,
        ])
        .unwrap();
        assert_eq!(r.rax, 7);
        assert_eq!(r.cs, 0xe033);
        assert_eq!(r.ss, 0xe02b);
        assert_eq!(r.rflags, 0x46 | RFLAGS_IF);
        assert_eq!(r.rcx_r11, Some((0xc, 0x11)));
        assert_eq!(r.upcall_mask, 1);
        let s = iret([
            0,
            0,
            0,
            VGCF_IN_SYSCALL,
            1,
            0xe030,
            0x3200 | RFLAGS_VM,
            2,
            0xe02b,
        ])
        .unwrap();
        assert_eq!(s.rcx_r11, None);
        assert_eq!(s.rflags, RFLAGS_IF, "IOPL and VM cleared, IF set");
        assert_eq!(s.upcall_mask, 0);
        assert_eq!(
            iret([0, 0, 0, 0, 1, 0xe033, 0, 2, 0xe02b]),
            Err(IretError::NoUserPageTables(0xe033))
        );
    }

    /// Whatever a guest put in its flags, the vCPU is entered with a valid
    /// RFLAGS (SDM vol. 3C, VM-entry checks on guest RFLAGS, written out
    /// here: bits 3, 5, 15, 22-63 clear, bit 1 set, VM clear in IA-32e
    /// mode) with IF set and IOPL 0.
    #[test]
    fn exit_rflags_is_always_a_valid_entry_rflags() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![0, u64::MAX];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((0..256).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }));
        let reserved: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !((1u64 << 22) - 1);
        for v in values {
            for sysret in [false, true] {
                let r = exit_rflags(v, sysret);
                assert_eq!(r & reserved, 0, "{v:#x}: reserved bits in {r:#x}");
                assert_eq!(r & 0x2, 0x2, "{v:#x}: bit 1");
                assert_eq!(r & (1 << 17), 0, "{v:#x}: VM");
                assert_eq!(r & 0x3200, 0x200, "{v:#x}: IF set, IOPL 0");
            }
        }
    }

    /// `iret` with and without `VGCF_in_syscall` (entry.S: sysretq with
    /// rcx = rip and r11 = the flags; RF not loaded), and with a
    /// non-canonical rip (iretq, RF loaded, rcx = rip still).
    #[test]
    fn iret_exit_registers() {
        let rf = RFLAGS_RF | RFLAGS_AC;
        // rax r11 rcx flags rip cs rflags rsp ss
        let ctx = |flags: u64, rip: u64| [1, 0x11, 0xc, flags, rip, 0xe030, 0x46 | rf, 8, 0xe02b];
        let r = iret(ctx(0, 0x20_1000)).expect("kernel return");
        assert_eq!(iret_exit(&r), (0x246 | rf, 0xc, 0x11));
        let r = iret(ctx(VGCF_IN_SYSCALL, 0x20_1000)).expect("kernel return");
        assert_eq!(iret_exit(&r), (0x246 | RFLAGS_AC, 0x20_1000, 0x246 | rf));
        let far = 0x8000_0000_0000_0000;
        let r = iret(ctx(VGCF_IN_SYSCALL, far)).expect("kernel return");
        assert_eq!(iret_exit(&r), (0x246 | rf, far, 0x246 | rf));
    }
}
