//! A second vCPU (issue 9): the native personality's START_AP port, and
//! a vCPU a personality brings up itself (the Xen-style one's
//! `VCPUOP_up`, [`super::personality::PortAction::StartVcpu`]).
//!
//! A kernel that sees [`boot_flags::START_AP_PORT`] writes the 64-bit
//! entry point of its next CPU to [`ports::START_AP`]. The runner creates
//! the next vCPU in the state the boot vCPU got (long mode, hv-sim's boot
//! GDT and page tables, rdi = the boot flags, rsi = the vCPU's index) and
//! runs it on the VM thread until it halts; then the write returns and the
//! boot vCPU runs on. The two vCPUs take turns rather than run at once: a
//! kernel that waits for its AP sees it done when the write returns. (QEMU
//! `-smp 2` runs the same kernel's APs concurrently, started by
//! INIT-SIPI-SIPI.) Each vCPU has its own registers in KVM, so what one
//! loads into GDTR, TR or FS is its own.

use std::sync::atomic::AtomicBool;

use vm_memory::{Bytes, GuestAddress};

use super::{Config, Crash, KvmError, Machine, Run, boot_flags, exit_loop, ports, setup_vcpu};
use crate::kvm::personality::Personality;
use crate::kvm::regs::Vcpu;

/// Most vCPUs a boot may have (the boot vCPU included).
pub(crate) const MAX_VCPUS: u64 = 4;

/// Start the next vCPU at the entry `b` names and run it until it halts.
/// `Some(status)`: the AP itself ended the guest with an exit write.
pub(super) fn start_ap(
    m: &Machine,
    guest: &mut dyn Personality,
    cfg: &Config,
    timed_out: &AtomicBool,
    run: &mut Run,
    b: [u8; 4],
    len: usize,
) -> Result<Option<u32>, KvmError> {
    let entry = u32::from_le_bytes(b) as u64;
    let port = ports::START_AP;
    if len != 4 {
        return Err(run.stopped(Crash::PortWidth {
            name: "start-AP",
            port,
            len,
            protocol: "the AP's 64-bit entry point",
        }));
    }
    if entry >= cfg.mem_size as u64 {
        return Err(run.stopped(Crash::ApEntry {
            port,
            entry,
            mem_size: cfg.mem_size,
        }));
    }
    let id = run.aps + 1;
    if id >= MAX_VCPUS {
        return Err(run.stopped(Crash::TooManyAps {
            port,
            id,
            max: MAX_VCPUS,
        }));
    }
    run.aps = id;
    debug_assert_ne!(boot_flags::START_AP_PORT, 0);
    run_ap(m, guest, cfg, timed_out, run, entry, id)
}

/// vCPU `cur` (`vcpu`) brought up vCPU `next` ([`crate::kvm::personality::PortAction::StartVcpu`]):
/// add the personality's read-back of `cur`, run `next` until it goes
/// down, then resume `cur`. `Some(status)`: `next` ended the guest.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_vcpu(
    m: &Machine,
    guest: &mut dyn Personality,
    cfg: &Config,
    timed_out: &AtomicBool,
    run: &mut Run,
    vcpu: &mut Vcpu<'_>,
    cur: u64,
    next: u64,
) -> Result<Option<u32>, KvmError> {
    if next >= MAX_VCPUS || next == cur || run.started & (1 << next) != 0 {
        return Err(run.stopped(Crash::VcpuRestart {
            cur,
            next,
            max: MAX_VCPUS,
        }));
    }
    run.started |= 1 << next;
    run.aps += 1;
    let s = vcpu.sregs().map_err(|e| run.stopped(e))?;
    if let Some(line) = guest.vcpu_report(cur, &s) {
        run.text.extend_from_slice(line.as_bytes());
    }
    let status = run_ap(m, guest, cfg, timed_out, run, 0, next)?;
    if status.is_none() {
        guest.select_vcpu(cur);
        guest.resume(&m.vm, vcpu).map_err(|e| run.stopped(e))?;
    }
    Ok(status)
}

/// Create vCPU `id` at `entry` (the personality may replace the entry
/// state), run it until it halts or goes down, and add the runner's
/// read-back of its registers to the text.
pub(super) fn run_ap(
    m: &Machine,
    guest: &mut dyn Personality,
    cfg: &Config,
    timed_out: &AtomicBool,
    run: &mut Run,
    entry: u64,
    id: u64,
) -> Result<Option<u32>, KvmError> {
    guest.select_vcpu(id);
    let (mut vcpu, mut cache) = setup_vcpu(m, guest, entry, cfg, id)?;
    let status = exit_loop(m, guest, &mut vcpu, &mut cache, cfg, timed_out, run, id)?;
    if status.is_none() {
        // What KVM holds for the stopped vCPU: the runner's side of the
        // kernel's own read-back (`smp cpu N:` lines).
        let s = cache.sregs(&vcpu).map_err(|e| run.stopped(e))?;
        let line = guest.vcpu_report(id, &s).unwrap_or_else(|| {
            // The rsp0 of the TSS its TR names, read from guest memory.
            let mut rsp0 = [0u8; 8];
            let rsp0 = m
                .mem
                .read_slice(&mut rsp0, GuestAddress(s.tr.base.wrapping_add(4)))
                .map(|()| format!("{:#x}", u64::from_le_bytes(rsp0)))
                .unwrap_or_else(|_| "(not in guest RAM)".to_string());
            format!(
                "{AP_STATE_PREFIX}{id} halted: tr={:#x} tr.base={:#x} gdt.base={:#x} TSS.rsp0={rsp0}\n",
                s.tr.selector, s.tr.base, s.gdt.base
            )
        });
        run.text.extend_from_slice(line.as_bytes());
    }
    run.ap_ioctls.add(cache.counts());
    Ok(status)
}

/// The line the runner adds to the guest's text for a halted AP:
/// `hv-sim: vCPU <n> halted: tr=.. tr.base=.. gdt.base=.. TSS.rsp0=..`.
pub(crate) const AP_STATE_PREFIX: &str = "hv-sim: vCPU ";
