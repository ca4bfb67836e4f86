//! The 64-bit Xen PV ABI pieces the descriptor ops use: constants and the
//! exact in-memory layout of the argument structures.
//!
//! Layouts (`xen/include/public/xen.h`, `public/arch-x86/xen.h`, LP64; see
//! hv-sim's `XEN-SEMANTICS.md` §7):
//!
//! | struct | layout | size |
//! |---|---|---|
//! | `trap_info` | vector u8 @0, flags u8 @1, cs u16 @2, pad @4..8, address u64 @8 | 16 |
//! | `mmuext_op` | cmd u32 @0, pad @4..8, arg1 u64 @8, arg2 u64 @16 | 24 |
//! | `multicall_entry` | op u64 @0, result u64 @8, args\[6\] u64 @16..64 | 64 |
//!
//! Each structure is encoded here as little-endian 64-bit words, so the
//! encoders are plain arithmetic that build (and are unit-tested) on any
//! host; the backend stores the words into guest memory with aligned 8-byte
//! writes. The 32-bit (compat) layouts are different and not provided.

/// `DOMID_SELF`: the `foreigndom` argument of `mmuext_op` naming the caller.
pub const DOMID_SELF: u64 = 0x7FF0;

/// `MMUEXT_SET_LDT`: `arg1` = linear address, `arg2` = number of entries.
pub const MMUEXT_SET_LDT: u32 = 13;

/// `update_va_mapping` flush type: none (`UVMF_NONE`). Linux's
/// `set_aliased_prot` passes 0: Xen itself flushes stale writable TLB
/// entries when a frame changes type to "segment descriptor page".
pub const UVMF_NONE: u64 = 0;
/// `update_va_mapping` flush type: flush the whole local TLB.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `update_va_mapping` flush type: `invlpg` the one address.
pub const UVMF_INVLPG: u64 = 2;

/// PTE bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// PTE bit: writable.
pub const PTE_RW: u64 = 1 << 1;

/// `FLAT_KERNEL_SS` of the 64-bit PV ABI (`public/arch-x86/xen-x86_64.h`):
/// the stack selector Xen's bounce frames give a 64-bit PV kernel.
pub const FLAT_KERNEL_SS: u64 = 0xe02b;

/// Linux's `__KERNEL_DS` (x86_64: GDT entry 3, 0x18): the `ss` Linux's
/// `xen_load_sp0` passes to `stack_switch` (Xen raises its RPL to the
/// kernel's ring, 0x1b; a 64-bit PV guest's bounce frames use
/// `FLAT_KERNEL_SS` whatever it is).
pub const KERNEL_DS: u64 = 0x18;

/// `trap_info.flags` bit 2: mask events on entry (the PV analogue of an
/// interrupt gate clearing IF). Bits 0-1 are the DPL.
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

/// Calls per multicall batch (Linux `MC_BATCH`).
pub const MC_BATCH: usize = 32;

/// Size of `trap_info` (64-bit).
pub const TRAP_INFO_SIZE: usize = 16;
/// Size of `mmuext_op` (64-bit).
pub const MMUEXT_OP_SIZE: usize = 24;
/// Size of `multicall_entry` (64-bit).
pub const MULTICALL_ENTRY_SIZE: usize = 64;

/// One `trap_info` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrapInfo {
    /// Exception / interrupt vector.
    pub vector: u8,
    /// DPL in bits 0-1, [`TI_MASK_EVENTS`] in bit 2.
    pub flags: u8,
    /// Code selector (Xen raises its RPL to the guest kernel ring).
    pub cs: u16,
    /// Handler address; 0 terminates a table.
    pub address: u64,
}

impl TrapInfo {
    /// The all-zero terminator (`address == 0` ends a `set_trap_table` list).
    pub const TERMINATOR: TrapInfo = TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        address: 0,
    };

    /// The two little-endian words as stored in memory.
    pub const fn to_words(self) -> [u64; 2] {
        [
            self.vector as u64 | ((self.flags as u64) << 8) | ((self.cs as u64) << 16),
            self.address,
        ]
    }

    /// Convert one IDT gate the way Linux's `cvt_gate_to_trap` does, or
    /// `None` for a gate the hypervisor is not told about. The present bit
    /// is not looked at (Linux does not either: a not-present trap or
    /// interrupt gate is registered like a present one). `None` for:
    ///
    /// * not an interrupt or trap gate (task, call, reserved types, S = 1);
    /// * an IST index on a vector other than #DB (1), NMI (2), #DF (8) or
    ///   #MC (18). Linux accepts an IST only on the handlers of its
    ///   `trap_array` marked `ist_okay` (debug, NMI, double fault, machine
    ///   check) and warns and skips any other IST gate. PV has no IST: the
    ///   index is dropped and the handler runs on the kernel stack.
    /// * offset 0: Xen reads `address == 0` as the end of the list.
    ///
    /// `flags` = the gate's DPL, plus [`TI_MASK_EVENTS`] for an interrupt
    /// gate (it clears IF natively).
    pub const fn from_gate(vector: u8, gate: pvops::Gate64) -> Option<TrapInfo> {
        // No present check: Linux's cvt_gate_to_trap registers any trap or
        // interrupt gate, present or not.
        let dpl = gate.dpl() as u8;
        let flags = match gate.kind() {
            Some(pvops::GateKind::Interrupt) => dpl | TI_MASK_EVENTS,
            Some(pvops::GateKind::Trap) => dpl,
            _ => return None,
        };
        if gate.ist() != 0 && !matches!(vector, 1 | 2 | 8 | 18) {
            return None;
        }
        let address = gate.offset();
        if address == 0 {
            return None;
        }
        Some(TrapInfo {
            vector,
            flags,
            cs: gate.selector().0,
            address,
        })
    }

    /// Decode the two words (the padding is ignored).
    pub const fn from_words(w: [u64; 2]) -> TrapInfo {
        TrapInfo {
            vector: w[0] as u8,
            flags: (w[0] >> 8) as u8,
            cs: (w[0] >> 16) as u16,
            address: w[1],
        }
    }
}

/// One `mmuext_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmuextOp {
    /// Command (`MMUEXT_*`).
    pub cmd: u32,
    /// `arg1` (mfn or linear address).
    pub arg1: u64,
    /// `arg2` (nr_ents, vcpumask pointer or src_mfn).
    pub arg2: u64,
}

impl MmuextOp {
    /// `MMUEXT_SET_LDT(linear_addr, nr_ents)`.
    pub const fn set_ldt(linear_addr: u64, nr_ents: u32) -> MmuextOp {
        MmuextOp {
            cmd: MMUEXT_SET_LDT,
            arg1: linear_addr,
            arg2: nr_ents as u64,
        }
    }

    /// The three little-endian words as stored in memory (padding zero).
    pub const fn to_words(self) -> [u64; 3] {
        [self.cmd as u64, self.arg1, self.arg2]
    }
}

/// One `multicall_entry` as the guest writes it (`result` starts at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Written by the hypervisor: the call's return value (a signed long).
    pub result: u64,
    /// Arguments (Xen reads the first five).
    pub args: [u64; 6],
}

impl MulticallEntry {
    /// The eight little-endian words as stored in memory.
    pub const fn to_words(self) -> [u64; 8] {
        [
            self.op,
            self.result,
            self.args[0],
            self.args[1],
            self.args[2],
            self.args[3],
            self.args[4],
            self.args[5],
        ]
    }

    /// Byte offset of `result` inside an entry.
    pub const RESULT_OFFSET: usize = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_info_layout() {
        let t = TrapInfo {
            vector: 0x80,
            flags: 3 | TI_MASK_EVENTS,
            cs: 0xe033,
            address: 0xffff_8000_0000_1000,
        };
        let w = t.to_words();
        // vector @0, flags @1, cs @2..4, pad @4..8, address @8.
        let mut bytes = [0u8; TRAP_INFO_SIZE];
        bytes[..8].copy_from_slice(&w[0].to_le_bytes());
        bytes[8..].copy_from_slice(&w[1].to_le_bytes());
        assert_eq!(bytes[0], 0x80);
        assert_eq!(bytes[1], 7);
        assert_eq!(&bytes[2..4], &[0x33, 0xe0]);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
        assert_eq!(&bytes[8..16], &0xffff_8000_0000_1000u64.to_le_bytes());
        assert_eq!(TrapInfo::from_words(w), t);
        assert_eq!(TrapInfo::TERMINATOR.to_words(), [0, 0]);
    }

    #[test]
    fn gate_conversion_follows_linux() {
        use pvops::{Gate64, Ring, Selector};
        let cs = Selector(0xe033);
        let h = 0xffff_8000_0010_0000;
        let int = Gate64::interrupt(cs, h, Ring::Ring0);
        assert_eq!(
            TrapInfo::from_gate(14, int),
            Some(TrapInfo {
                vector: 14,
                flags: TI_MASK_EVENTS,
                cs: 0xe033,
                address: h
            })
        );
        let bp = Gate64::trap(cs, h, Ring::Ring3);
        assert_eq!(TrapInfo::from_gate(3, bp).map(|t| t.flags), Some(3));
        // IST: only #DB, NMI, #DF, #MC.
        for v in [1u8, 2, 8, 18] {
            assert!(TrapInfo::from_gate(v, int.with_ist(1).unwrap()).is_some());
        }
        assert_eq!(TrapInfo::from_gate(14, int.with_ist(1).unwrap()), None);
        // A not-present interrupt gate is registered (Linux's
        // cvt_gate_to_trap looks only at the type); an all-zero gate is not
        // (type 0, offset 0).
        let absent = Gate64 {
            low: int.low & !(1 << 47),
            high: int.high,
        };
        assert_eq!(TrapInfo::from_gate(5, absent).map(|t| t.address), Some(h));
        // Call gate, zero offset, garbage.
        assert_eq!(TrapInfo::from_gate(5, Gate64::MISSING), None);
        assert_eq!(
            TrapInfo::from_gate(5, Gate64::call(cs, h, Ring::Ring3)),
            None
        );
        assert_eq!(
            TrapInfo::from_gate(5, Gate64::interrupt(cs, 0, Ring::Ring0)),
            None
        );
        assert_eq!(
            TrapInfo::from_gate(
                5,
                Gate64 {
                    low: u64::MAX,
                    high: u64::MAX
                }
            ),
            None
        );
    }

    #[test]
    fn mmuext_and_multicall_layout() {
        let op = MmuextOp::set_ldt(0x7000, 5);
        assert_eq!(op.to_words(), [13, 0x7000, 5]);
        assert_eq!(op.to_words().len() * 8, MMUEXT_OP_SIZE);
        let e = MulticallEntry {
            op: 10,
            result: 0,
            args: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(e.to_words(), [10, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(e.to_words().len() * 8, MULTICALL_ENTRY_SIZE);
    }
}

/// `CONSOLEIO_write` (`public/xen.h`): `console_io(CONSOLEIO_write, count,
/// buffer)` prints `count` bytes on the hypervisor's console (the hardware
/// domain's text goes to Xen's serial line).
pub const CONSOLEIO_WRITE: u64 = 0;

/// `SCHEDOP_shutdown` (`public/sched.h`): `sched_op(SCHEDOP_shutdown,
/// &sched_shutdown)`, where `sched_shutdown` is one `u32` reason.
pub const SCHEDOP_SHUTDOWN: u64 = 2;

/// Shutdown reasons (`public/sched.h`, `SHUTDOWN_*`).
pub mod shutdown {
    /// Domain exited normally; clean up and kill.
    pub const POWEROFF: u32 = 0;
    /// Clean up, kill, and then restart.
    pub const REBOOT: u32 = 1;
    /// Clean up, save suspend info, kill.
    pub const SUSPEND: u32 = 2;
    /// Tell controller we've crashed.
    pub const CRASH: u32 = 3;
}

/// `VGCF_in_syscall` (`public/arch-x86/xen.h`): in an `iret_context`'s
/// `flags`, "rcx and r11 are not to be restored" (return from a syscall).
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;

/// `start_info.flags` (`public/xen.h`): the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `start_info.flags`: the domain is the initial (hardware) domain, dom0.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// Length of `start_info.magic`.
pub const START_INFO_MAGIC_LEN: usize = 32;
/// `MAX_GUEST_CMDLINE`: length of `start_info.cmd_line`.
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// What `start_info.magic` starts with for a 64-bit PV guest
/// (`"xen-<version>-x86_64"`; Xen writes `"xen-3.0-x86_64"`).
pub const START_INFO_MAGIC_PREFIX: &[u8] = b"xen-3.0-x86_64";

/// `start_info_t` of the 64-bit PV ABI (`public/xen.h`, `struct
/// start_info`): what Xen's domain builder leaves in guest memory and
/// passes in rsi at the guest's entry point.
///
/// | offset | field |
/// |---|---|
/// | 0 | `magic[32]` |
/// | 32 | `nr_pages` |
/// | 40 | `shared_info` (machine address) |
/// | 48 | `flags` (u32, `SIF_*`) |
/// | 56 | `store_mfn` |
/// | 64 | `store_evtchn` (u32) |
/// | 72 | `console`: dom0 `{info_off u32, info_size u32}` or domU `{mfn u64 @72, evtchn u32 @80}` |
/// | 88 | `pt_base` (virtual address of the top-level page table) |
/// | 96 | `nr_pt_frames` |
/// | 104 | `mfn_list` (virtual address of the p2m list) |
/// | 112 | `mod_start` |
/// | 120 | `mod_len` |
/// | 128 | `cmd_line[1024]` |
/// | 1152 | `first_p2m_pfn` |
/// | 1160 | `nr_p2m_frames` |
///
/// 64-bit only: the 32-bit PV ABI's `start_info` has 4-byte `unsigned
/// long`s.
#[cfg(target_arch = "x86_64")]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL padded.
    pub magic: [u8; START_INFO_MAGIC_LEN],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Machine frame of the xenstore page (0 for dom0).
    pub store_mfn: u64,
    /// Event channel of the xenstore page.
    pub store_evtchn: u32,
    /// The console union (8-byte aligned): for dom0 word 0 holds
    /// `info_off` (low half) and `info_size` (high half); for a domU word 0
    /// is the console page's mfn and word 1 its event channel.
    pub console: [u64; 2],
    /// Virtual address of the top-level page table Xen built.
    pub pt_base: u64,
    /// Frames of the bootstrap page tables.
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list (`nr_pages` machine frame numbers).
    pub mfn_list: u64,
    /// Virtual address (or pfn) of the module, 0 if none.
    pub mod_start: u64,
    /// Size of the module in bytes.
    pub mod_len: u64,
    /// The guest's command line, NUL terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial p2m table (and page-table) frames.
    pub first_p2m_pfn: u64,
    /// Frames of the initial p2m table.
    pub nr_p2m_frames: u64,
}

#[cfg(target_arch = "x86_64")]
mod start_info_layout {
    use super::StartInfo;
    use core::mem::{offset_of, size_of};
    static_assertions::const_assert_eq!(size_of::<StartInfo>(), 1168);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, nr_pages), 32);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, flags), 48);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, store_evtchn), 64);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, console), 72);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, pt_base), 88);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, mfn_list), 104);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, cmd_line), 128);
    static_assertions::const_assert_eq!(offset_of!(StartInfo, first_p2m_pfn), 1152);
}

#[cfg(target_arch = "x86_64")]
impl StartInfo {
    /// Does `magic` name the 64-bit PV ABI (`"xen-3.0-x86_64"`)?
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(START_INFO_MAGIC_PREFIX)
    }

    /// The magic as text (up to its first NUL).
    pub fn magic_str(&self) -> &str {
        nul_terminated(&self.magic)
    }

    /// dom0's console fields: (`info_off`, `info_size`) of the VGA
    /// console info after the start info (0, 0 when there is none).
    pub fn console_dom0(&self) -> (u32, u32) {
        (self.console[0] as u32, (self.console[0] >> 32) as u32)
    }

    /// The command line as text (up to its first NUL; invalid UTF-8 cut
    /// at the first bad byte).
    pub fn cmd_line_str(&self) -> &str {
        nul_terminated(&self.cmd_line)
    }
}

#[cfg(target_arch = "x86_64")]
fn nul_terminated(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    match core::str::from_utf8(&b[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}
