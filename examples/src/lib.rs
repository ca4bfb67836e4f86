//! Kernel-side code written against pvops, as a hobby kernel would write it,
//! and shared by the runnable examples and tests.
//!
//! [`cpu_init`] is generic over [`DescriptorOps`]: the same function runs
//! on bare metal with `pvops_native::NativeOps`, on the host against hv-sim's
//! CPU model (see `examples/host_unit_test.rs`), or through the installed
//! dynamic table.

use pvops::{
    Descriptor, DescriptorOps, Gdt, GdtEntry, GdtLayout, Idt, IdtGate, Ring, Selector,
    SystemDescriptor, presets,
};

/// The GDT layout this example kernel uses (Linux's).
pub const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
/// Kernel code selector.
pub const KERNEL_CS: Selector = Selector::gdt(2, Ring::Ring0);
/// TSS selector.
pub const TSS_SELECTOR: Selector = Selector::gdt(LAYOUT.tss, Ring::Ring0);

/// The initial GDT: Linux's x86_64 layout.
pub const INITIAL_GDT: [Descriptor; 16] = {
    let mut g = [Descriptor::NULL; 16];
    g[1] = presets::KERNEL_CODE32;
    g[2] = presets::KERNEL_CODE64;
    g[3] = presets::KERNEL_DATA;
    g[4] = presets::USER_CODE32;
    g[5] = presets::USER_DATA;
    g[6] = presets::USER_CODE64;
    g
};

/// Load the GDT, install the TSS and load TR, load the IDT with one gate per
/// handler, and set the kernel stack.
///
/// # Safety
/// `gdt` (holding [`INITIAL_GDT`]), `idt` and the TSS at `tss_base` (104
/// bytes) must stay valid while loaded; the handlers must be real entry
/// points.
pub unsafe fn cpu_init<O: DescriptorOps>(
    ops: &O,
    gdt: &Gdt,
    idt: &Idt,
    tss_base: u64,
    handlers: &[(u8, u64)],
    kernel_stack: u64,
) -> pvops::Result<()> {
    // SAFETY: forwarded contract.
    unsafe {
        ops.load_gdt(gdt)?;
        ops.write_gdt_entry(
            gdt,
            LAYOUT.tss as u32,
            GdtEntry::Double(SystemDescriptor::tss(tss_base, 103)?),
        )?;
        ops.load_tr(TSS_SELECTOR)?;
        for &(vector, handler) in handlers {
            let gate: IdtGate = pvops::Gate64::interrupt(KERNEL_CS, handler, Ring::Ring0);
            ops.write_idt_entry(idt, vector, gate)?;
        }
        ops.load_idt(idt)?;
        ops.load_kernel_stack(kernel_stack)
    }
}

/// The README's Rust snippets, compiled (and, where they can run on the
/// host, run) as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The "boot your own kernel" guide's Rust snippets, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/BOOT-YOUR-OWN-KERNEL.md")]
pub struct BootYourOwnKernelDoctests;
