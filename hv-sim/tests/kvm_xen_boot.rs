//! Boot the example kernel under KVM with hv-sim's Xen-style personality.
//!
//! Needs /dev/kvm; prints `SKIPPED: <reason>` and passes without it. The
//! note tests need no KVM.

#[path = "common/text.rs"]
mod text;

#[path = "common/boot.rs"]
mod boot;

use hv_sim::kvm::xen::{self, XEN_ELFNOTE_HYPERCALL_PAGE, boot_xen, hypercall_page_note};
use hv_sim::kvm::{self, Config};
use hv_sim::testing::{example_kernel_image, kvm_or_skip};
use hv_sim::xen::EINVAL;

fn kernel_image() -> Vec<u8> {
    example_kernel_image().expect("example kernel builds")
}

/// Offset of the hypercall-page note's header (namesz 4, descsz 8, type 2,
/// "Xen\0") in the image.
fn note_offset(image: &[u8]) -> usize {
    let mut pat = Vec::new();
    pat.extend_from_slice(&4u32.to_le_bytes());
    pat.extend_from_slice(&8u32.to_le_bytes());
    pat.extend_from_slice(&XEN_ELFNOTE_HYPERCALL_PAGE.to_le_bytes());
    pat.extend_from_slice(b"Xen\0");
    let hits: Vec<usize> = image
        .windows(pat.len())
        .enumerate()
        .filter(|(_, w)| *w == pat.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "exactly one hypercall-page note header");
    hits[0]
}

#[test]
fn xen_backend_boot_passes_every_check() {
    if !kvm_or_skip("xen_backend_boot_passes_every_check") {
        return;
    }
    let image = kernel_image();
    let r = boot_xen(&image, &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.boot.text);
    println!("{}", r.trace);
    println!("{}", r.summary());
    boot::assert_clean(&r.boot, 14, "xen");

    // Hypercalls by kind, from the domain's trace: (direct, in a multicall).
    let by = r.calls_by_name();
    println!("{by:?}");
    let get = |n: &str| by.get(n).copied().unwrap_or_default();
    // set_gdt: the boot GDT, then each vCPU's own for the SMP check.
    assert_eq!(get("set_gdt"), (3, 0));
    // load_idt (one call for the whole table) + write_idt_entry calls for
    // the slots of the loaded IDT (none: the IDT is loaded last).
    assert_eq!(get("set_trap_table"), (1, 0));
    // 64 lazy context switches: each one multicall (stack_switch + SET_LDT
    // + the TLS slot that changed).
    assert_eq!(get("multicall").0, 64);
    // stack_switch: the boot stack, each vCPU's own, and one per switch.
    assert_eq!(get("stack_switch"), (3, 64));
    // SET_LDT: load_ldt once directly, then 64 times in multicalls.
    assert_eq!(get("mmuext_op"), (1, 64));
    // TLS slot 0 changes every switch (its limit), slot 1 once.
    assert_eq!(get("update_descriptor").1, 65);
    // update_va_mapping: GDT read-only, LDT read-only, LDT writable again;
    // the SMP check's two GDT pages read-only (vCPU 1's page twice: before
    // VCPUOP_initialise, and by its backend).
    assert_eq!(get("update_va_mapping"), (6, 0));
    // vcpu_op: VCPUOP_is_up(1) (the probe Linux's xen_fill_possible_map
    // makes), then VCPUOP_initialise, VCPUOP_up and vCPU 1's VCPUOP_down.
    assert_eq!(get("vcpu_op"), (4, 0));
    let direct: usize = by.values().map(|c| c.0).sum();
    assert_eq!(
        direct as u64, r.hypercalls,
        "every stub call reached the domain"
    );

    // The negative check: exactly one refusal, Xen's errno for a call gate
    // into Xen's own code segment.
    let rejected = r.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    let (name, errno, reason) = &rejected[0];
    assert_eq!(*name, "update_descriptor");
    assert_eq!(*errno, -EINVAL);
    assert!(reason.contains("0xe008"), "{reason}");

    // Xen's state at the end, and nothing Xen would not have allowed.
    assert_eq!(r.vcpu.gdt_ents, 16);
    assert_eq!(r.vcpu.trap_table[6].cs, 0x13, "RPL raised to 3");
    assert_eq!(r.vcpu.ldt_ents, 0, "the last switch loaded no LDT");
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.invariants, Ok(()));
    // Real page-table changes: the domain's mappings (GDT read-only, LDT
    // read-only, LDT writable again, the SMP check's two GDT pages
    // read-only), and the real LDT page mapped when the CPU first touched
    // it (Xen's lazy LDT) and unmapped when the next SET_LDT replaced the
    // LDT.
    assert_eq!(r.lazy_ldt_maps, 1, "one lazy LDT mapping");
    assert_eq!(r.pte_flushes, 7, "page-table changes mirrored");

    // Loaded as Xen's dom0 builder loads it: the layout Xen 4.17 computes
    // for this image, entered at the ENTRY note, ended by SCHEDOP_shutdown
    // (poweroff), exceptions bounced (#UD, #GP, #PF) and returned through
    // the iret hypercall.
    let end = r.layout.kernel_end;
    assert_eq!(r.layout, xen::Dom0Layout::new(end, 64 << 8));
    assert_eq!(r.notes.loader.as_deref(), Some("generic"));
    assert_eq!(r.shutdown, Some(0));
    assert_eq!(
        r.bounced.iter().map(|(v, n)| (*v, *n)).collect::<Vec<_>>(),
        [(6, 1), (13, 1), (14, 1)]
    );
    assert_eq!(r.irets, 3);
    assert!(
        get("console_io").0 >= 20,
        "the kernel reports through console_io"
    );
    assert_eq!(get("sched_op"), (1, 0));

    // The vCPU ran the kernel where Xen runs a 64-bit PV kernel: ring 3 on
    // FLAT_KERNEL_CS/SS, with DS/ES from its own GDT (DPL raised to 3).
    let seg = r.final_segments.expect("segments recorded at exit");
    assert_eq!(seg.cpl, 3, "{seg:?}");
    assert_eq!(
        (seg.cs, seg.ss),
        (xen::FLAT_KERNEL_CS, xen::FLAT_KERNEL_SS),
        "{seg:?}"
    );
    assert_eq!((seg.ds, seg.es, seg.ds_dpl), (0x18, 0x18, 3), "{seg:?}");
    if kvm::host_is_pvm() {
        assert!(r.emulated_cpuids >= 2, "detect() used the Xen prefix");
    }
}

/// Issue 9: the kernel brings up vCPU 1 with `VCPUOP_initialise` +
/// `VCPUOP_up` (as on real Xen); hv-sim starts a second KVM vCPU at the
/// context's entry, runs it until its `VCPUOP_down`, then resumes vCPU 0.
/// The runner's read-back of each vCPU (KVM's FS base; the kernel stack
/// and GDT frame the domain keeps for it, Xen's per-vCPU `TSS.rsp0` and
/// GDT) must be what the kernel says that vCPU loaded, and differ between
/// the two.
#[test]
fn xen_boot_brings_up_a_second_vcpu_with_its_own_stack_gdt_and_fs() {
    if !kvm_or_skip("xen_boot_brings_up_a_second_vcpu_with_its_own_stack_gdt_and_fs") {
        return;
    }
    let r = boot_xen(&kernel_image(), &Config::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = &r.boot.text;
    let smp = r
        .boot
        .checks
        .iter()
        .find(|c| c.name.starts_with("smp 2 vCPUs (Xen)"))
        .unwrap_or_else(|| panic!("no smp check in:\n{text}"));
    assert!(smp.passed && !smp.skipped, "{smp:?}\n{text}");
    assert!(smp.detail.contains("VCPUOP_up: 0, 0"), "{smp:?}");
    let line = |prefix: &str| text::line(text, prefix);
    let mut seen = Vec::new();
    for cpu in 0..2 {
        let kvm = line(&format!("{}{cpu}:", xen::VCPU_LINE_PREFIX));
        let guest = line(&format!("xen smp vcpu {cpu}:"));
        assert!(guest.contains("done=1 "), "{guest}");
        assert_eq!(
            text::field(&kvm, "fs.base="),
            text::field(&guest, " tls="),
            "{kvm}\n{guest}"
        );
        assert_eq!(
            text::field(&kvm, "kernel_sp="),
            text::field(&guest, " kstack="),
            "{kvm}\n{guest}"
        );
        assert_eq!(
            text::field(&kvm, "gdt_frame="),
            text::field(&guest, " gdt="),
            "{kvm}\n{guest}"
        );
        assert_eq!(
            text::field(&kvm, " tr="),
            format!("{:#x}", xen::TSS_SELECTOR),
            "{kvm}"
        );
        seen.push([
            text::field(&kvm, "fs.base="),
            text::field(&kvm, "kernel_sp="),
            text::field(&kvm, "gdt_frame="),
        ]);
    }
    for (a, b) in seen[0].iter().zip(&seen[1]) {
        assert_ne!(a, b, "vCPU 0 and vCPU 1 share a value:\n{text}");
    }
    let by = r.calls_by_name();
    assert_eq!(
        by.get("vcpu_op").map(|c| c.0),
        Some(4),
        "is_up, initialise, up, down"
    );
    assert!(
        r.rejected().iter().all(|(n, _, _)| *n != "vcpu_op"),
        "{:?}",
        r.rejected()
    );
}

#[test]
fn hypercall_page_note_is_found() {
    let image = kernel_image();
    let page = hypercall_page_note(&image).expect("the kernel names its hypercall page");
    assert_eq!(page % 4096, 0);
    assert_eq!(
        xen::hypercall_stub(13)[..8],
        [0xb8, 13, 0, 0, 0, 0xe7, 0xe8, 0xc3]
    );
}

#[test]
fn missing_hypercall_page_note_is_refused() {
    let mut image = kernel_image();
    let off = note_offset(&image);
    // Another note type: the kernel no longer names a hypercall page.
    image[off + 8..off + 12].copy_from_slice(&0x7fu32.to_le_bytes());
    let err = hypercall_page_note(&image).unwrap_err().to_string();
    assert!(err.contains("XEN_ELFNOTE_HYPERCALL_PAGE"), "{err}");
    assert!(err.contains("no such note"), "{err}");
    if kvm_or_skip("missing_hypercall_page_note_is_refused (boot)") {
        let err = boot_xen(&image, &Config::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("XEN_ELFNOTE_HYPERCALL_PAGE"), "{err}");
    }
}

#[test]
fn malformed_hypercall_page_notes_are_refused() {
    let image = kernel_image();
    let off = note_offset(&image);
    // A misaligned address.
    let mut bad = image.clone();
    bad[off + 16] ^= 0x08;
    let err = hypercall_page_note(&bad).unwrap_err().to_string();
    assert!(err.contains("not page aligned"), "{err}");
    // An address outside every executable segment.
    let mut bad = image.clone();
    bad[off + 16..off + 24].copy_from_slice(&0x7000_0000u64.to_le_bytes());
    let err = hypercall_page_note(&bad).unwrap_err().to_string();
    assert!(err.contains("executable PT_LOAD"), "{err}");
    // A 4-byte descriptor (the note's size field says 4: the address is cut).
    let mut bad = image;
    bad[off + 4..off + 8].copy_from_slice(&4u32.to_le_bytes());
    let err = hypercall_page_note(&bad).unwrap_err().to_string();
    assert!(err.contains("XEN_ELFNOTE_HYPERCALL_PAGE"), "{err}");
}
