//! Boot `examples/kernel32`, the 32-bit protected-mode (i686) kernel on
//! pvops' native backend, under QEMU TCG through its PVH note (issue 11,
//! deliverable 3). QEMU's CPU, not hv-sim, executes every `lgdt`, `ltr`,
//! `lldt`, segment load and exception delivery; each check reads the effect
//! back with the raw instruction. Prints `SKIPPED: <reason>` without QEMU
//! (fails instead with `HV_SIM_REQUIRE_QEMU=1`).

use std::time::{Duration, Instant};

use hv_sim::kernel_build::{build_kernel_workspace_for, example_dir};
use hv_sim::testing::qemu_or_skip;

/// The kernel's target: stable Rust has no bare-metal i686 target, so the
/// kernel builds freestanding for the Linux one (see its .cargo/config.toml).
const TARGET: &str = "i686-unknown-linux-gnu";

/// Every check the kernel reports, in order.
const CHECKS: [&str; 19] = [
    "protected mode, paging off",
    "pvh start info",
    "load_gdt + segment reload",
    "store_gdt (6-byte sgdt)",
    "write_gdt_entry + load_tr (8-byte 32-bit TSS descriptor, busy)",
    "load_tr refuses the busy TSS",
    "load_kernel_stack -> TSS.esp0",
    "write_idt_entry + load_idt/store_idt (32-bit gates, 6-byte sidt)",
    "int3 lands in the #BP handler (32-bit gate)",
    "ud2 lands in the #UD handler (32-bit gate)",
    "bad selector -> #GP(selector) through a 32-bit gate, 32-bit frame",
    "ring 3 -> int 0x80 enters on TSS.ss0:esp0 (32-bit inter-privilege frame)",
    "write_ldt_entry + load_ldt (8-byte LDT descriptor, sldt, store_ldt)",
    "LDT selector loads (FS:[0] through LDT[1])",
    "64 context switches (load_tls via GS, load_kernel_stack, load_ldt) in lazy mode",
    "free_ldt",
    "write_gdt_entry refuses a 16-byte descriptor",
    "write_idt_entry refuses a 32-bit gate to a 64-bit code segment",
    "load_kernel_stack refuses a stack above 4 GiB",
];

#[test]
fn kernel32_boots_under_qemu_through_pvh() {
    if !qemu_or_skip("kernel32_boots_under_qemu_through_pvh") {
        return;
    }
    let elf = build_kernel_workspace_for(&example_dir("kernel32"), "kernel32", TARGET)
        .unwrap_or_else(|e| panic!("{e}"))
        .join("pvops-kernel32");
    let image = std::fs::read(&elf).expect("read the kernel");
    // An ELF32 (class 1) for the i386 machine (3): the 32-bit build, not a
    // 64-bit kernel that switches modes.
    assert_eq!(
        (image[4], u16::from_le_bytes([image[18], image[19]])),
        (1, 3)
    );
    let start = Instant::now();
    let r = hv_sim::qemu::boot(&elf, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.text);
    println!("QEMU TCG boot to exit: {:?}", start.elapsed());
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, CHECKS, "{}", r.text);
    let failed: Vec<_> = r.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "failed: {failed:#?}");
    assert_eq!(r.exit_status, Some(0), "{}", r.text);
}
