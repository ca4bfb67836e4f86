//! Kernel-side code written against pvops, as a hobby kernel would write it,
//! and shared by the runnable examples and tests.
//!
//! [`cpu_init`] is generic over [`DescriptorOps`]: the same function runs
//! on bare metal with `pvops_native::NativeOps`, on the host against hv-sim's
//! CPU model (see `examples/host_unit_test.rs`), or through the installed
//! dynamic table.

use pvops::{DescriptorOps, Gdt, GdtLayout, Idt, Selector, SystemDescriptor, Tss64, presets};

/// The GDT layout this example kernel uses (Linux's).
pub const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
/// Kernel code selector (`__KERNEL_CS`).
pub const KERNEL_CS: Selector = presets::KERNEL_CS;
/// TSS selector.
pub const TSS_SELECTOR: Selector = presets::TSS_SELECTOR;

/// The initial GDT: Linux's x86_64 layout.
pub const INITIAL_GDT: [pvops::Descriptor; 16] = presets::LINUX_X86_64_GDT;

/// An interrupt entry point: an assembly stub or a naked function.
pub type Handler = unsafe extern "C" fn();

/// Load the GDT, install the TSS and load TR, load the IDT with one gate per
/// handler, and set the kernel stack.
///
/// # Safety
/// `gdt` (holding [`INITIAL_GDT`]), `idt` and the TSS at `tss_base`
/// ([`Tss64::SIZE`] bytes) must stay valid while loaded; the handlers must
/// be real entry points.
pub unsafe fn cpu_init<O: DescriptorOps>(
    ops: &O,
    gdt: &Gdt,
    idt: &Idt,
    tss_base: u64,
    handlers: &[(u8, Handler)],
    kernel_stack: u64,
) -> pvops::Result<()> {
    // SAFETY: forwarded contract.
    unsafe {
        ops.load_gdt(gdt)?;
        let tss = SystemDescriptor::tss(tss_base, Tss64::LIMIT)?;
        ops.write_gdt_entry(gdt, LAYOUT.tss as u32, tss.into())?;
        ops.load_tr(TSS_SELECTOR)?;
        for &(vector, handler) in handlers {
            ops.set_handler(idt, vector, KERNEL_CS, handler)?;
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
