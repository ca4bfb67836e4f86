//! Running under a VMI-style hypervisor: the option ROM found by the
//! probe, and the `VmiOps` backend built on it.
//!
//! * [`probe`] scans the option-ROM window (guest-physical 0xC0000..0xE0000
//!   in 2 KiB steps) through the kernel's identity map with the checks of
//!   `pvops_vmi::rom::check_rom` under Linux's rules (signatures, API 3.x,
//!   a PCI header offset, GPL license; no checksum or PCIR check, as Linux's
//!   `check_vmi_rom`). Nothing there (bare KVM, QEMU's VGA BIOS) means no
//!   VMI.
//! * [`init`] calls VMI_Init and queries each call's relocation through the
//!   ROM's own code (`KernelPlatform`: an indirect `call` with the SysV
//!   registers), then keeps the backend in a `spin::Once` so it can be
//!   installed as the `'static` ops table.

use pvops::GdtLayout;
use pvops_native::NativeOps;
use pvops_vmi::kernel::KernelPlatform;
use pvops_vmi::{InitError, NotFound, VmiOps, VmiRom};

static VMI: spin::Once<VmiOps<KernelPlatform>> = spin::Once::new();

fn platform() -> KernelPlatform {
    // SAFETY: the kernel runs identity-mapped (guest-physical = virtual) on
    // every loader it supports, and the option-ROM window is mapped
    // readable: RAM under hv-sim's native boot, the ROM window (read-only,
    // executable) under its VMI personality, BIOS ROMs under QEMU.
    unsafe { KernelPlatform::new(0) }
}

/// Look for a VMI ROM.
pub fn probe() -> Result<VmiRom, NotFound> {
    pvops_vmi::rom::probe(&platform())
}

/// Initialize the ROM and build the backend (once).
pub fn init(rom: VmiRom, layout: GdtLayout) -> Result<&'static VmiOps<KernelPlatform>, InitError> {
    // SAFETY: `rom` passed the probe on this platform and is the
    // hypervisor's ROM; its entry points follow the 64-bit convention of
    // `pvops_vmi::platform`. The native fallback runs in ring 0 with static
    // tables (`NativeOps::new`'s contract).
    let ops = unsafe { VmiOps::init(platform(), rom, layout, NativeOps::new(layout))? };
    Ok(VMI.call_once(|| ops))
}
