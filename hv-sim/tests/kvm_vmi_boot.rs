//! Boot the example kernel under KVM with hv-sim's VMI-style personality:
//! the ROM at 0xC0000 found by the kernel's probe, every op a call into the
//! ROM's stubs served by the same VMI personality the in-process tests use,
//! the effective tables installed on the real vCPU.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it.

#[path = "common/boot.rs"]
mod boot;

use hv_sim::kvm::CheckSummary;
use hv_sim::kvm::vmi::{self, VmiBootReport, boot_vmi};
use hv_sim::kvm::{self, Config};
use hv_sim::testing::{example_kernel_image, kvm_or_skip};
use hv_sim::vmi::VmiEvent;
use hv_sim::vmi::machine::{EINVAL, HV_RESERVED_GDT};
use pvops::{Descriptor, Gate64, Selector, SystemDescriptor, presets};

fn kernel_image() -> Vec<u8> {
    example_kernel_image().expect("example kernel builds")
}

const TSS_SEL: u16 = 0x40;
const KERNEL_DS: u16 = 0x18;

/// The kernel stack the last of the 64 switches set.
const LAST_SP0: u64 = 0x90_0000 + 63 * 0x1000;

#[test]
fn vmi_backend_boot_passes_every_check() {
    if !kvm_or_skip("vmi_backend_boot_passes_every_check") {
        return;
    }
    let image = kernel_image();
    let r = boot_vmi(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.boot.text);
    println!("{}", r.trace);
    println!("{}", r.summary());
    boot::assert_clean(&r.boot, 16, "vmi");
    assert!(
        r.boot.text.contains("vmi: ROM at 0xc0000"),
        "found by the probe"
    );

    assert_rom_calls(&r);
    assert_guest_and_effective_tables(&r);
    assert_real_tables(&r);

    // Ring 3 on hv-sim's flat CS/SS, DS from the guest's GDT (DPL 3).
    let seg = r.final_segments.expect("segments recorded at exit");
    assert_eq!(seg.cpl, 3, "{seg:?}");
    assert_eq!((seg.cs, seg.ss), (vmi::VMI_KERNEL_CS, vmi::VMI_KERNEL_SS));
    assert_eq!((seg.ds, seg.es, seg.ds_dpl), (KERNEL_DS, KERNEL_DS, 3));
    assert!(
        r.summary().starts_with("backend=vmi checks="),
        "{}",
        r.summary()
    );
    // The host's audit of the tables the vCPU ran on, after every install.
    assert_eq!(r.audits, r.installs, "every install audited");
    assert!(r.escapes.is_empty(), "{:#?}", r.escapes);
}

/// The ROM calls by kind (each one a port exit hv-sim served), the one
/// refusal the ROM judges, and the lazy batches.
fn assert_rom_calls(r: &VmiBootReport) {
    // ROM calls by kind: each one a port exit hv-sim served.
    let by = r.calls_by_name();
    println!("{by:?}");
    let get = |n: &str| by.get(n).copied().unwrap_or_default();
    assert_eq!(get("VMI_Init"), 1);
    assert_eq!(get("GetRelocationInfo"), 13, "one query per call used");
    assert_eq!(get("SetGDT"), 1);
    assert_eq!(get("SetIDT"), 1);
    assert_eq!(get("WriteIDTEntry"), 3);
    // The TSS (the data segment's load_tr is refused by the backend's
    // validation before it reaches the ROM).
    assert_eq!(get("SetTR"), 1);
    // load_ldt once, then in the 32 even switches; SetLDT(0) in the odd ones.
    assert_eq!(get("SetLDT"), 65);
    assert_eq!(get("UpdateKernelStack"), 65);
    assert_eq!(get("WriteLDTEntry"), 2);
    // The deferral check, then 64 switches: SetLazyMode(2) and (0) each.
    assert_eq!(get("SetLazyMode"), 130);
    // TSS 1, LDT descriptor 1 + 32, the empty LDT descriptor Linux's
    // vmi_set_ldt(NULL) writes before SetLDT(0) in the 32 odd switches,
    // TLS slots 2 + 1 + 64, call gate 1 (refused), slot 15 1.
    assert_eq!(get("WriteGDTEntry"), 135);
    let total: usize = by.values().sum();
    assert_eq!(total as u64, r.rom_calls, "every stub call was served");
    assert!(
        !r.trace
            .events
            .iter()
            .any(|e| matches!(e, VmiEvent::BadEntry { .. })),
        "no call outside the ROM's stubs"
    );

    // The negative check the ROM judges: the DPL-3 call gate, refused with
    // -EINVAL and its rule. (load_tr of a data segment is refused by the
    // backend's validation layer and never reaches the ROM.)
    let rejected = r.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(rejected[0].0, "WriteGDTEntry");
    assert_eq!(rejected[0].1, -EINVAL);
    assert!(rejected[0].2.contains("call gate"), "{}", rejected[0].2);

    // Lazy mode: changes queued, applied by one flush per batch.
    let (deferred, flushes) = r.lazy_batches();
    assert_eq!(flushes, 65);
    assert!(deferred >= 64 * 3, "{deferred}");
}

/// The guest's view at the end, and the effective state hv-sim derived.
fn assert_guest_and_effective_tables(r: &VmiBootReport) {
    // The guest's view at the end.
    let g = &r.guest;
    assert_eq!(g.gdtr.map(|p| p.limit), Some(16 * 8 - 1));
    assert_eq!(g.idtr.map(|p| p.limit), Some(256 * 16 - 1));
    assert_eq!(g.tr, Selector(TSS_SEL));
    assert_eq!(g.ldtr, Selector::NULL, "the last switch loaded no LDT");
    let last_sp0 = LAST_SP0;
    assert_eq!(g.kernel_stack, Some((Selector(TSS_SEL), last_sp0)));
    assert_eq!(g.lazy_mode, 0);

    // The effective state: at hv-sim's pages, DPLs compressed to 3, the
    // personality's reserved entries after the guest's, TSS busy.
    let e = &r.effective;
    assert_eq!(e.gdt_base, vmi::REAL_GDT);
    assert_eq!(e.idt_base, vmi::REAL_IDT);
    assert_eq!(e.gdt.len(), 16 + HV_RESERVED_GDT.len());
    assert_eq!(&e.gdt[16..], &HV_RESERVED_GDT);
    assert_eq!(Descriptor(e.gdt[2]).dpl() as u8, 3);
    assert_eq!(Descriptor(e.gdt[3]).dpl() as u8, 3);
    assert_eq!(
        Descriptor(e.gdt[8]).typ(),
        0xb,
        "TSS busy in the effective GDT"
    );
    assert_eq!(e.tr, Selector(TSS_SEL));
    assert_eq!(e.sp0, last_sp0);
    assert!(e.ldt.is_empty());
    let gate = |v: usize| Gate64 {
        low: e.idt[v].0,
        high: e.idt[v].1,
    };
    assert_eq!(gate(6).selector(), Selector(0x13), "RPL raised to 3");
    assert_eq!(gate(13).selector(), Selector(0x13));
}

/// The tables the real vCPU ran on.
fn assert_real_tables(r: &VmiBootReport) {
    let e = &r.effective;
    let last_sp0 = LAST_SP0;
    // The real vCPU ran on them.
    let real = r.real.as_ref().expect("tables recorded at exit");
    assert_eq!(real.gdtr, (vmi::REAL_GDT, 0xffff));
    assert_eq!(real.idtr, (vmi::REAL_IDT, 256 * 16 - 1));
    assert_eq!(real.tr, (TSS_SEL, vmi::TSS_COPY, 0x67));
    assert_eq!(real.ldtr, (0, 0, 0));
    assert_eq!(real.tss_rsp0, last_sp0, "UpdateKernelStack reached the TSS");
    for (i, (&re, &ee)) in real.gdt.iter().zip(&e.gdt).enumerate() {
        if i == 8 || i == 9 {
            continue;
        }
        assert_eq!(re, ee, "real GDT[{i}] is the effective entry");
    }
    let tss = SystemDescriptor {
        low: real.gdt[8],
        high: real.gdt[9],
    };
    assert_eq!(tss.base(), vmi::TSS_COPY, "TR names hv-sim's TSS copy");
    assert_eq!(Descriptor(tss.low).typ(), 0xb);
    assert_eq!(real.hv_gdt[0], 0x00af_fb00_0000_ffff, "hv-sim's ring-3 CS");
    assert_eq!(&real.idt[..], &e.idt[..]);
    assert_eq!(
        real.gdt[15],
        presets::USER_DATA.0 | (1 << 40),
        "slot 15 written, accessed bit set"
    );
    assert_eq!(real.gdt[14], 0, "the refused call gate is nowhere");
}

/// Issue 10's VMI escapes, sent by the kernel as raw ROM calls on a real
/// vCPU (boot flag HOSTILE), each followed by the instruction that would use
/// the escape: the calls are refused with -EINVAL and the rule, the CPU
/// faults where a refused slot leaves nothing to use (#GP with the slot's
/// selector), nothing runs above ring 3, and the host's audit of the real
/// tables after every install finds no way up.
#[test]
fn vmi_escapes_fail_on_the_real_vcpu() {
    if !kvm_or_skip("vmi_escapes_fail_on_the_real_vcpu") {
        return;
    }
    let cfg = Config {
        boot_flags: kvm::host_boot_flags() | kvm::boot_flags::HOSTILE,
        ..Config::default()
    };
    let r = boot_vmi(&kernel_image(), &cfg).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.boot.text);
    let failed = r.boot.failed();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    let hostile: Vec<_> = r
        .boot
        .checks
        .iter()
        .filter(|c| c.name.starts_with("hostile"))
        .collect();
    assert_eq!(hostile.len(), 6, "control + 5 attacks: {hostile:#?}");
    assert_eq!(r.boot.exit_status, Some(0));

    // The refusals, in order, each naming its rule (after the boot's own
    // refused call gate).
    let rejected = r.rejected();
    println!("{rejected:#?}");
    let attacks: Vec<_> = rejected.iter().skip(1).collect();
    assert_eq!(attacks.len(), 5, "{rejected:#?}");
    let expect = [
        (
            "WriteGDTEntry",
            "GDT[15], the upper half of the 16-byte descriptor",
        ),
        ("WriteIDTEntry", "hypervisor's reserved ring-0 entries"),
        (
            "WriteGDTEntry",
            "GDT[13], the upper half of the 16-byte descriptor",
        ),
        (
            "SetGDT",
            "IDT[6]'s gate selector 0x7b names GDT[15], one of the hypervisor's reserved",
        ),
        (
            "WriteGDTEntry",
            "GDT[9] is the upper half of the present 16-byte descriptor",
        ),
    ];
    for ((call, errno, reason), (want_call, word)) in attacks.iter().zip(expect) {
        assert_eq!((*call, *errno), (want_call, -EINVAL), "{reason}");
        assert!(
            reason.contains(word),
            "{call}: `{reason}` should name `{word}`"
        );
    }

    // The host's audit: every install, no way above ring 3.
    assert!(r.audits > 0);
    assert_eq!(r.audits, r.installs, "every install audited");
    assert!(r.escapes.is_empty(), "{:#?}", r.escapes);
    let seg = r.final_segments.expect("segments recorded at exit");
    assert_eq!(seg.cpl, 3, "{seg:?}");
}

/// Without the personality the same kernel finds no ROM (RAM at 0xC0000)
/// and runs the native backend.
#[test]
fn plain_kvm_boot_finds_no_vmi_rom() {
    if !kvm_or_skip("plain_kvm_boot_finds_no_vmi_rom") {
        return;
    }
    let r = kvm::boot(&kernel_image(), &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.text.contains("no usable VMI option ROM"), "{}", r.text);
    assert!(r.text.contains("backend: native"), "{}", r.text);
    assert!(r.failed().is_empty());
}

/// A ROM the kernel must refuse (non-GPL license): its probe, running on
/// the real vCPU against the ROM in guest memory, names the rule and calls
/// nothing in the ROM. With no usable ROM it falls back to the native
/// backend, whose `lgdt` cannot run in ring 3, so the VM stops.
#[test]
fn kernel_probe_refuses_a_non_gpl_rom() {
    if !kvm_or_skip("kernel_probe_refuses_a_non_gpl_rom") {
        return;
    }
    let rom = hv_sim::vmi::RomBuilder {
        license: Some(b"Proprietary".to_vec()),
        ..Default::default()
    };
    let err = vmi::boot_vmi_with_rom(&kernel_image(), &Config::default(), &rom)
        .expect_err("a ring-3 kernel cannot run natively");
    let kvm::KvmError::GuestCrashed { text, .. } = &err else {
        panic!("{err}");
    };
    println!("{text}");
    assert!(
        text.contains("VMI ROM at 0xc0000 refused: non-GPL license `Proprietary`"),
        "{text}"
    );
    assert!(text.contains("backend: native"), "{text}");
    assert!(!text.contains("backend: vmi"), "{text}");
}
