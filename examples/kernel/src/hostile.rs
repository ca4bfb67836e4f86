//! Hostile-guest checks under a VMI-style hypervisor (boot flag
//! [`crate::boot_flags::HOSTILE`]): the privilege escapes that issue 10
//! found in hv-sim's VMI personality, sent as raw ROM calls (around the
//! backend's validation layer, as a hostile kernel would), each followed by
//! the instruction that would *use* the escape on the real vCPU.
//!
//! Two probe handlers record the CS they run on: reached through a gate the
//! hypervisor should have refused, they would run in ring 0 (CPL = CS & 3).
//! A control check first shows that a legitimate gate reaches the probe (in
//! ring 3), so "the probe did not run" means something. Where a refused call
//! leaves the slot as it was, the CPU faults instead: #GP with the slot's
//! selector and EXT (Intel SDM vol. 3A §6.13, "Error Code"), caught by the
//! kernel's own #GP handler, which resumes after the 2-byte instruction.
//!
//! The host side (hv-sim's `kvm::escape_audit`) also reads the tables the
//! vCPU runs on after every install and looks for a way above ring 3.

use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvops::{Gate64, Ring, Selector};
use pvops_vmi::kernel::KernelPlatform;
use pvops_vmi::{RelocType, VmiOps, VmiPlatform, call};

use crate::cpu::{GP_COUNT, GP_ERROR, UD_COUNT, raw_str, ud_handler};
use crate::report::Tally;
use crate::{GDT, IDT, KERNEL_CS};

/// EINVAL as the ROM returns it.
const EINVAL: i64 = -22;
/// A not-present LDT descriptor: S = 0 and a system type, so a 64-bit
/// hypervisor that judged entries by their low half would take the pair as
/// one 16-byte entry and leave the high half unchecked.
const SYSTEM_PLACEHOLDER: u64 = 0x0000_0200_0000_0000;
/// A DPL 0 64-bit code segment.
const RING0_CODE64: u64 = 0x00af_9b00_0000_ffff;
/// The guest's GDT has 16 entries; the VMI personality's reserved ring-0
/// code segment follows them.
const RESERVED_RING0_CS: u16 = 16 << 3;

/// Runs of the probes, and the CS they last ran on.
static PROBE_RUNS: AtomicU32 = AtomicU32::new(0);
static PROBE_CS: AtomicU64 = AtomicU64::new(0xffff);

/// Reached through an interrupt gate from `ud2`: record CS, skip the `ud2`.
#[unsafe(naked)]
extern "C" fn probe_fault() {
    naked_asm!(
        "push rax",
        "mov eax, cs",
        "mov [rip + {cs}], rax",
        "pop rax",
        "lock inc dword ptr [rip + {n}]",
        "add qword ptr [rsp], 2",
        "iretq",
        cs = sym PROBE_CS,
        n = sym PROBE_RUNS
    )
}

/// Reached through a call gate: record CS, return far.
#[unsafe(naked)]
extern "C" fn probe_far() {
    naked_asm!(
        "push rax",
        "mov eax, cs",
        "mov [rip + {cs}], rax",
        "pop rax",
        "lock inc dword ptr [rip + {n}]",
        "retfq",
        cs = sym PROBE_CS,
        n = sym PROBE_RUNS
    )
}

/// The counters a check compares before and after.
#[derive(Clone, Copy)]
struct Counts {
    gp: u32,
    ud: u32,
    probe: u32,
}

fn counts() -> Counts {
    Counts {
        gp: GP_COUNT.load(Ordering::SeqCst),
        ud: UD_COUNT.load(Ordering::SeqCst),
        probe: PROBE_RUNS.load(Ordering::SeqCst),
    }
}

/// What happened since `c`: (#GP, #UD, probe runs).
fn since(c: Counts) -> (u32, u32, u32) {
    let n = counts();
    (n.gp - c.gp, n.ud - c.ud, n.probe - c.probe)
}

fn ud2() {
    // SAFETY: ud2 faults; whichever handler the effective IDT's gate 6
    // reaches (ud_handler, probe_fault, or gp_handler when the gate's
    // selector is not a code segment) resumes after the 2-byte instruction.
    unsafe { asm!("ud2", options(nostack)) };
}

/// `call far [rax]` (2 bytes, m16:32) through `sel`.
fn far_call(sel: u16) {
    #[repr(C, packed)]
    struct Far {
        offset: u32,
        selector: u16,
    }
    let far = Far {
        offset: 0,
        selector: sel,
    };
    // SAFETY: through a call gate the CPU takes the target from the gate
    // and probe_far returns; anything else faults into gp_handler, which
    // resumes after the 2-byte instruction. Caller-saved registers are
    // declared clobbered.
    unsafe {
        asm!(
            ".byte 0xff, 0x18",
            in("rax") &raw const far,
            clobber_abi("C"),
        )
    };
}

/// What one `ud2` did: the counters since, and the last #GP error code.
#[derive(Clone, Copy)]
struct Shot {
    gp: u32,
    ud: u32,
    probe: u32,
    err: u64,
}

/// Run `ud2` through whatever gate 6 now is (unless `run` is false) and
/// count what landed where.
fn fire(run: bool) -> Shot {
    shot(|| {
        if run {
            ud2()
        }
    })
}

/// Run `f` and count what landed where.
fn shot(f: impl FnOnce()) -> Shot {
    let c = counts();
    f();
    let (gp, ud, probe) = since(c);
    Shot {
        gp,
        ud,
        probe,
        err: GP_ERROR.load(Ordering::SeqCst),
    }
}

/// What a `ud2` through a gate to a data-segment slot did. The SDM's
/// answer is #GP(selector + EXT) (vol. 3A §6.15, "Interrupt 13"; vol. 2,
/// the INT n/INTO/INT3/INT1 pseudocode: a gate whose selector names no code
/// segment). PVM instead stops the VM (shutdown), seen on this project's
/// hosts, so there the `ud2` is not run ([`fire`] with `run` false) and
/// the host's audit of the real tables is the proof.
struct Outcome {
    pvm: bool,
    shot: Shot,
}

impl Outcome {
    /// #GP(`err`) once, or not run on PVM; the probe never reached.
    fn faulted_with(&self, err: u64) -> bool {
        self.shot.probe == 0 && (self.pvm || (self.shot.gp == 1 && self.shot.err == err))
    }
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let Shot { gp, err, probe, .. } = self.shot;
        if self.pvm {
            write!(
                f,
                "#UD not raised: PVM shuts the VM down on a gate whose selector names no code segment (the SDM says #GP); probe runs {probe}"
            )
        } else {
            write!(f, "#GP {gp} error {err:#x}, probe runs {probe}")
        }
    }
}

/// A raw ROM call, around the backend.
fn rom(vmi: &VmiOps<KernelPlatform>, nr: u32, args: [u64; 4]) -> i64 {
    let Some(r) = vmi.relocation(nr).filter(|r| r.typ == RelocType::CallRel) else {
        return i64::MIN;
    };
    // SAFETY: `r.eip` is the CALL_REL entry the ROM's relocation query gave
    // for `nr`; the pointer arguments name this kernel's static tables or a
    // DTR on this stack.
    unsafe { vmi.platform().call(r.eip, args) as i64 }
}

fn gate(handler: extern "C" fn(), sel: u16) -> Gate64 {
    Gate64::interrupt(Selector(sel), handler as *const () as u64, Ring::Ring0)
}

fn write_gate(vmi: &VmiOps<KernelPlatform>, v: u64, g: Gate64) -> i64 {
    rom(vmi, call::WRITE_IDT_ENTRY, [IDT.base(), v, g.low, g.high])
}

/// Aim #UD (gate 6) at the probe through selector `sel` (WriteIDTEntry).
fn aim_ud(vmi: &VmiOps<KernelPlatform>, sel: u16) -> i64 {
    write_gate(vmi, 6, gate(probe_fault, sel))
}

/// Run the hostile checks (after `run_vmi_checks`: GDT, IDT and TR loaded,
/// gate 6 = `ud_handler`, GDT[12..=14] the TLS slots, GDT[15] a data
/// segment).
pub fn run(vmi: &VmiOps<KernelPlatform>, t: &mut Tally, pvm: bool) {
    let gdt = GDT.base();
    let own_ud = gate(ud_handler, KERNEL_CS);
    let restore = |vmi: &VmiOps<KernelPlatform>| write_gate(vmi, 6, own_ud);

    // Control: a legitimate gate reaches the probe, in ring 3.
    let rc = aim_ud(vmi, KERNEL_CS);
    let probe = fire(true).probe;
    let cs = PROBE_CS.load(Ordering::SeqCst);
    let back = restore(vmi);
    t.check(
        "hostile control: a gate to the kernel's own code reaches the probe in ring 3",
        rc == 0 && back == 0 && probe == 1 && cs & 3 == 3,
        format_args!("rc {rc} probe runs {probe} cs {cs:#x}"),
    );

    // 1. A DPL 0 code segment smuggled as the high half of a 16-byte
    //    "system" pair, then #UD aimed at the slot it would land in.
    let before = (GDT.read(14), GDT.read(15));
    let rc = rom(
        vmi,
        call::WRITE_GDT_ENTRY,
        [gdt, 14, SYSTEM_PLACEHOLDER, RING0_CODE64],
    );
    let aim = aim_ud(vmi, 15 << 3);
    let o = Outcome {
        pvm,
        shot: fire(!pvm),
    };
    let back = restore(vmi);
    t.check(
        "hostile, WriteGDTEntry smuggling DPL 0 code in a 16-byte pair -> -EINVAL; #UD through that slot -> #GP(0x79), not ring 0",
        rc == EINVAL
            && (GDT.read(14), GDT.read(15)) == before
            && aim == 0
            && back == 0
            && o.faulted_with(0x79),
        format_args!("rc {rc}, gate rc {aim}; {o}"),
    );

    // 2. An IDT gate aimed at the hypervisor's reserved ring-0 code segment.
    let before = IDT.read(6);
    let rc = aim_ud(vmi, RESERVED_RING0_CS);
    let Shot { gp, ud, probe, .. } = fire(true);
    t.check(
        "hostile, WriteIDTEntry to the hypervisor's ring-0 code segment -> -EINVAL; #UD still reaches the kernel's handler",
        rc == EINVAL && IDT.read(6) == before && ud == 1 && gp == 0 && probe == 0,
        format_args!("rc {rc}; #UD {ud} #GP {gp} probe runs {probe}"),
    );

    // 3. A DPL 3 call gate to the reserved ring-0 segment, smuggled as the
    //    high half of a pair at 12-13, then a far call through slot 13.
    let before = (GDT.read(12), GDT.read(13));
    let target = probe_far as *const () as u64;
    let call_gate = (target & 0xffff)
        | u64::from(RESERVED_RING0_CS) << 16
        | 0xec << 40
        | ((target >> 16) & 0xffff) << 48;
    let rc = rom(
        vmi,
        call::WRITE_GDT_ENTRY,
        [gdt, 12, SYSTEM_PLACEHOLDER, call_gate],
    );
    let Shot { gp, probe, err, .. } = shot(|| far_call(13 << 3 | 3));
    t.check(
        "hostile, WriteGDTEntry smuggling a DPL 3 call gate to ring 0 -> -EINVAL; lcall through that slot -> #GP(0x68), not ring 0",
        rc == EINVAL
            && (GDT.read(12), GDT.read(13)) == before
            && probe == 0
            && gp == 1
            && err == 0x68,
        format_args!("rc {rc}; #GP {gp} error {err:#x}, probe runs {probe}"),
    );

    // 4. A gate that is harmless now (its slot is a data segment), then a
    //    SetGDT one entry shorter, which would put the reserved ring-0 code
    //    segment in that slot: the gates must be re-checked.
    let aim = aim_ud(vmi, 15 << 3);
    let short = pvops::DescriptorTablePointer {
        limit: 15 * 8 - 1,
        base: gdt,
    }
    .to_packed64();
    let rc = rom(vmi, call::SET_GDT, [&raw const short as u64, 0, 0, 0]);
    let o = Outcome {
        pvm,
        shot: fire(!pvm),
    };
    let back = restore(vmi);
    let (sgdt_limit, _) = crate::cpu::raw_sgdt();
    t.check(
        "hostile, SetGDT that would move a live gate's slot onto the ring-0 segment -> -EINVAL; #UD -> #GP(0x79), not ring 0",
        aim == 0 && rc == EINVAL && back == 0 && o.faulted_with(0x79) && sgdt_limit == 0xffff,
        format_args!("gate rc {aim}, SetGDT rc {rc}; {o}; sgdt limit {sgdt_limit:#x}"),
    );

    // 5. An 8-byte write over the upper half of the loaded TSS descriptor.
    let before = GDT.read(9);
    let rc = rom(vmi, call::WRITE_GDT_ENTRY, [gdt, 9, RING0_CODE64, 0]);
    t.check(
        "hostile, WriteGDTEntry over the live TSS descriptor's upper half -> -EINVAL; TR unchanged",
        rc == EINVAL && GDT.read(9) == before && raw_str() == crate::TSS_SEL.bits(),
        format_args!("rc {rc}; str {:#x}", raw_str()),
    );
}
