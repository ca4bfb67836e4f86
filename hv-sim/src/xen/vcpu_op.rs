//! `common/domain.c` `do_vcpu_op` / `common_vcpu_op` and
//! `default_initialise_vcpu`, with `arch/x86/domain.c`
//! `arch_set_info_guest` for a 64-bit PV vCPU (Xen 4.17.7): bringing up a
//! secondary vCPU.
//!
//! * `VCPUOP_initialise(vcpuid, ctxt)`: an unknown vCPU is -ENOENT; the
//!   5168-byte `vcpu_guest_context` is copied in (-EFAULT); an initialised
//!   vCPU is -EEXIST. Then `arch_set_info_guest`'s checks, in its order:
//!   every address it names canonical (rip, rsp, kernel_sp, ldt_base when
//!   ldt_ents, fs/gs bases, the three callbacks, then each trap_ctxt
//!   address) and the LDT base a guest address, page aligned with at most
//!   8192 entries (-EINVAL); more than 16 GDT frames (-EINVAL); a vCPU not
//!   started in kernel mode needs a user root in ctrlreg[1] (-EINVAL); the
//!   GDT as `set_gdt` takes it (`pv_set_gdt`); ctrlreg[3]'s frame taking
//!   the root page-table type (its errors; the GDT is dropped again).
//!   Xen copies the registers, the trap table and the bases before the GDT
//!   and root checks, so a vCPU refused there keeps those (uninitialised,
//!   so it can be initialised again): hv-sim does the same.
//! * `VCPUOP_up`: -EINVAL unless initialised; else the vCPU runs.
//! * `VCPUOP_down`: the vCPU stops; the last running one going down shuts
//!   the domain down (poweroff), as `do_vcpu_op` does. 0 either way.
//! * `VCPUOP_is_up`: 1 if running.
//! * The rest are not modelled (-ENOSYS, said so).
//!
//! Not modelled: the 32-bit (compat) context, a user root (ctrlreg[1]) for
//! a vCPU started in kernel mode, the FPU block and debug registers (read,
//! not checked), `vm_assist` (only vCPU 0's is checked by Xen, and vCPU 0
//! is built by the domain builder here), and vCPUs past
//! `XEN_LEGACY_MAX_VCPUS` without a registered `vcpu_info` (-EINVAL).

use super::*;
use crate::xen::misc::shutdown;

/// `sizeof(struct vcpu_guest_context)` for a 64-bit guest.
pub const VCPU_GUEST_CONTEXT_SIZE: usize = 5168;

/// The fields of a 64-bit `vcpu_guest_context` that hv-sim uses, at their
/// offsets (`public/arch-x86/xen.h`, `xen-x86_64.h`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuContext {
    /// `flags` (`VGCF_*`).
    pub flags: u64,
    /// `user_regs`: rip, rsp, rflags, rdi, rsi, cs, ss.
    pub entry: VcpuEntry,
    /// `trap_ctxt[256]`.
    pub trap_ctxt: Vec<TrapInfo>,
    /// `ldt_base`, `ldt_ents`.
    pub ldt: (u64, u64),
    /// `gdt_frames[16]`, `gdt_ents`.
    pub gdt_frames: [u64; 16],
    /// `gdt_ents`.
    pub gdt_ents: u64,
    /// `kernel_ss`, `kernel_sp`.
    pub kernel_stack: (u64, u64),
    /// `ctrlreg[8]`.
    pub ctrlreg: [u64; 8],
    /// `event_callback_eip`, `failsafe_callback_eip`, `syscall_callback_eip`.
    pub callbacks: [u64; 3],
    /// `fs_base`, `gs_base_kernel`, `gs_base_user`.
    pub bases: [u64; 3],
}

/// Offsets in the 64-bit context.
mod off {
    pub const FLAGS: usize = 512;
    pub const USER_REGS: usize = 520;
    pub const RSI: usize = USER_REGS + 13 * 8;
    pub const RDI: usize = USER_REGS + 14 * 8;
    pub const RIP: usize = USER_REGS + 16 * 8;
    pub const CS: usize = USER_REGS + 17 * 8;
    pub const RFLAGS: usize = USER_REGS + 18 * 8;
    pub const RSP: usize = USER_REGS + 19 * 8;
    pub const SS: usize = USER_REGS + 20 * 8;
    pub const TRAP_CTXT: usize = 720;
    pub const LDT_BASE: usize = 4816;
    pub const GDT_FRAMES: usize = 4832;
    pub const GDT_ENTS: usize = 4960;
    pub const KERNEL_SS: usize = 4968;
    pub const CTRLREG: usize = 4984;
    pub const CALLBACKS: usize = 5112;
    pub const FS_BASE: usize = 5144;
}

/// `VGCF_in_kernel`.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_online`.
pub const VGCF_ONLINE: u64 = 1 << 5;

impl VcpuContext {
    /// Decode the 64-bit layout.
    pub fn parse(b: &[u8; VCPU_GUEST_CONTEXT_SIZE]) -> VcpuContext {
        let q = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let trap_ctxt = (0..256)
            .map(|i| {
                let o = off::TRAP_CTXT + 16 * i;
                TrapInfo {
                    vector: b[o],
                    flags: b[o + 1],
                    cs: u16::from_le_bytes([b[o + 2], b[o + 3]]),
                    address: q(o + 8),
                }
            })
            .collect();
        VcpuContext {
            flags: q(off::FLAGS),
            entry: VcpuEntry {
                rip: q(off::RIP),
                rsp: q(off::RSP),
                rflags: q(off::RFLAGS),
                rdi: q(off::RDI),
                rsi: q(off::RSI),
                cs: q(off::CS) as u16,
                ss: q(off::SS) as u16,
                flags: q(off::FLAGS),
                iopl: 0,
            },
            trap_ctxt,
            ldt: (q(off::LDT_BASE), q(off::LDT_BASE + 8)),
            gdt_frames: std::array::from_fn(|i| q(off::GDT_FRAMES + 8 * i)),
            gdt_ents: q(off::GDT_ENTS),
            kernel_stack: (q(off::KERNEL_SS), q(off::KERNEL_SS + 8)),
            ctrlreg: std::array::from_fn(|i| q(off::CTRLREG + 8 * i)),
            callbacks: std::array::from_fn(|i| q(off::CALLBACKS + 8 * i)),
            bases: std::array::from_fn(|i| q(off::FS_BASE + 8 * i)),
        }
    }
}

impl Inner {
    /// `do_vcpu_op(cmd, vcpuid, arg)`.
    pub(super) fn vcpu_op(&mut self, cmd: u64, vcpuid: u64, arg: u64) -> Hc {
        let n = self.vcpus.len();
        let Some(t) = usize::try_from(vcpuid as u32).ok().filter(|&t| t < n) else {
            return Err(fail(
                ENOENT,
                format!("vCPU {vcpuid}: the domain has {n} vCPUs"),
            ));
        };
        match cmd as u32 {
            0 => self.vcpu_initialise(t, arg),
            1 if !self.vcpus[t].initialised => Err(fail(
                EINVAL,
                format!("VCPUOP_up: vCPU {t} has not been initialised (VCPUOP_initialise)"),
            )),
            1 => {
                self.vcpus[t].up = true;
                Ok(0)
            }
            2 => Ok(self.vcpu_down(t)),
            3 => Ok(i64::from(self.vcpus[t].up)),
            c => Err(fail(
                ENOSYS,
                format!(
                    "hv-sim does not model VCPUOP {c} (it models initialise, up, down and is_up)"
                ),
            )),
        }
    }

    /// `VCPUOP_down`: the last running vCPU going down shuts the domain
    /// down (poweroff); otherwise the vCPU stops (0 either way).
    fn vcpu_down(&mut self, t: usize) -> i64 {
        let others_up = self.vcpus.iter().enumerate().any(|(i, v)| i != t && v.up);
        if !others_up {
            self.shutdown = Some(shutdown::POWEROFF);
            self.note(Change::Shutdown {
                reason: shutdown::POWEROFF,
                name: shutdown::name(shutdown::POWEROFF),
            });
            return 0;
        }
        self.vcpus[t].up = false;
        0
    }

    /// `default_initialise_vcpu` + `arch_set_info_guest` (64-bit PV).
    fn vcpu_initialise(&mut self, t: usize, arg: u64) -> Hc {
        if self.abi != Abi::Pv64 {
            return Err(fail(
                ENOSYS,
                "hv-sim models VCPUOP_initialise for 64-bit PV guests only",
            ));
        }
        let mut b = [0u8; VCPU_GUEST_CONTEXT_SIZE];
        if self.load_bytes(arg, &mut b).is_err() {
            return Err(fail(
                EFAULT,
                format!(
                    "vcpu_guest_context at {arg:#x} ({VCPU_GUEST_CONTEXT_SIZE} bytes) cannot be read"
                ),
            ));
        }
        if self.vcpus[t].initialised {
            return Err(fail(EEXIST, format!("vCPU {t} is already initialised")));
        }
        let c = VcpuContext::parse(&b);
        check_context(&c)?;
        // Registers, trap table, stack, bases: stored before the GDT and
        // root checks, as arch_set_info_guest does.
        let krpl = self.abi.krpl() as u16;
        let raise = |sel: u16| {
            if sel & 3 < krpl {
                (sel & !3) | krpl
            } else {
                sel
            }
        };
        let mut entry = c.entry;
        entry.cs = raise(entry.cs);
        entry.ss = raise(entry.ss);
        // RFLAGS, exactly as arch_set_info_guest (4.17.7 domain.c
        // 1167-1172): IOPL is virtualised (kept in pv.iopl, cleared in the
        // saved flags), IF set. Nothing else is touched there: VM and the
        // reserved bits stay in Xen's saved registers until the exit to
        // the guest clamps them (traps::exit_rflags).
        entry.iopl = entry.rflags & traps::RFLAGS_IOPL;
        entry.rflags = (entry.rflags & !traps::RFLAGS_IOPL) | traps::RFLAGS_IF;
        let vc = &mut self.vcpus[t];
        vc.entry = Some(entry);
        vc.trap_table = c
            .trap_ctxt
            .iter()
            .map(|ti| TrapInfo {
                cs: raise(ti.cs),
                ..*ti
            })
            .collect();
        vc.kernel_ss = u64::from(raise(c.kernel_stack.0 as u16)) | (c.kernel_stack.0 & !0xffff);
        vc.kernel_sp = c.kernel_stack.1;
        [vc.fs_base, vc.gs_base_kernel, vc.gs_base_user] = c.bases;
        if c.flags & VGCF_IN_KERNEL == 0 && c.ctrlreg[1] == 0 {
            return Err(fail(
                EINVAL,
                "a vCPU not started in kernel mode (VGCF_in_kernel clear) needs a user page-table root in ctrlreg[1]",
            ));
        }
        if c.ctrlreg[1] != 0 {
            return Err(fail(
                ENOSYS,
                "hv-sim does not model a user page-table root (ctrlreg[1]); Xen takes it as a second root",
            ));
        }
        let (ldt_base, ldt_ents) = c.ldt;
        let vc = &mut self.vcpus[t];
        vc.ldt_ents = ldt_ents as u32;
        vc.ldt_base = if ldt_ents == 0 { 0 } else { ldt_base };
        self.install_gdt(t, &c.gdt_frames, c.gdt_ents as u32)
            .map_err(|f| fail(f.errno, format!("gdt_frames: {}", f.reason)))?;
        if let Err(f) = self.new_baseptr(t, c.ctrlreg[3] >> 12) {
            // pv_destroy_gdt.
            for m in std::mem::take(&mut self.vcpus[t].gdt_frames) {
                self.put_type(m);
            }
            self.vcpus[t].gdt_ents = 0;
            return Err(fail(f.errno, format!("ctrlreg[3]: {}", f.reason)));
        }
        let vc = &mut self.vcpus[t];
        vc.initialised = true;
        vc.up = c.flags & VGCF_ONLINE != 0;
        Ok(0)
    }
}

/// The checks of `arch_set_info_guest` that need only the context.
fn check_context(c: &VcpuContext) -> Result<(), Fail> {
    let e = &c.entry;
    let (ldt_base, ldt_ents) = c.ldt;
    let named = [
        ("user_regs.rip", e.rip, true),
        ("user_regs.rsp", e.rsp, true),
        ("kernel_sp", c.kernel_stack.1, true),
        ("ldt_base", ldt_base, ldt_ents != 0),
        ("fs_base", c.bases[0], true),
        ("gs_base_kernel", c.bases[1], true),
        ("gs_base_user", c.bases[2], true),
        ("event_callback_eip", c.callbacks[0], true),
        ("syscall_callback_eip", c.callbacks[2], true),
        ("failsafe_callback_eip", c.callbacks[1], true),
    ];
    for (what, a, checked) in named {
        if checked && !is_canonical(a) {
            return Err(fail(EINVAL, format!("{what} {a:#x} is not canonical")));
        }
    }
    for (i, ti) in c.trap_ctxt.iter().enumerate() {
        if !is_canonical(ti.address) {
            return Err(fail(
                EINVAL,
                format!("trap_ctxt[{i}].address {:#x} is not canonical", ti.address),
            ));
        }
    }
    if !addr_ok64(ldt_base) {
        return Err(fail(
            EINVAL,
            format!("ldt_base {ldt_base:#x} is inside Xen's part of the address space"),
        ));
    }
    if ldt_base & 0xfff != 0 || ldt_ents > 8192 {
        return Err(fail(
            EINVAL,
            format!(
                "LDT {ldt_base:#x} with {ldt_ents} entries: the base must be page aligned and at most 8192 entries"
            ),
        ));
    }
    if c.gdt_ents.div_ceil(512) > 16 {
        return Err(fail(
            EINVAL,
            format!(
                "gdt_ents {}: more than the 16 frames of gdt_frames",
                c.gdt_ents
            ),
        ));
    }
    Ok(())
}
