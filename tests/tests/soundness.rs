//! Issue 9, deliverable 1: the undefined behaviour reproduced from safe code,
//! kept as regression tests. The cases that were a trait implementable
//! without `unsafe` or a safe constructor taking raw addresses are
//! `compile_fail` doctests next to the trait or constructor (`Cpu`,
//! `HardwareCpu::new`, `XenPlatform`, `pvops_xen::KernelPlatform::new`,
//! `VmiPlatform`, `pvops_vmi::kernel::KernelPlatform::new`); the ones that
//! run are here. CI runs this file under Miri too (`.ci/run`), except the
//! tests that drive hv-sim's Xen domain (slow there, and not what Miri is
//! checking).

use std::sync::atomic::{AtomicBool, Ordering};

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use hv_sim::xen::XenDomain;
use pvops::{Descriptor, DescriptorOps, DescriptorStorage, GdtEntry, GdtLayout, PvError, presets};
use pvops_native::NativeOps;
use pvops_xen::{XenOps, XenPlatform};

/// `TableStorage::read` is safe and the storage is `Sync`: reading a slot
/// while an op writes it on another thread was a data race (volatile read
/// against volatile write) that Miri reported. Slots are now atomic words
/// on both sides.
#[test]
fn reading_a_table_while_an_op_writes_it_is_not_a_race() {
    static GDT: DescriptorStorage<16> = DescriptorStorage::new([Descriptor::NULL; 16]);
    // SAFETY: the CPU model is only given the static GDT above.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let ops: &'static NativeOps<SoftCpu> =
        Box::leak(Box::new(NativeOps::with_cpu(cpu, GdtLayout::LINUX_X86_64)));
    let gdt = GDT.gdt().unwrap();
    let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let writer = std::thread::spawn(move || {
        for i in 1..4 {
            // SAFETY: the static GDT; it is not loaded, so no live segment
            // changes.
            unsafe {
                ops.write_gdt_entry(&gdt, i, GdtEntry::Single(presets::KERNEL_DATA))
                    .unwrap();
            }
        }
        done.store(true, Ordering::Release);
    });
    let mut reads = 0;
    while !done.load(Ordering::Acquire) || reads < 4 {
        for i in 1..4 {
            let d = GDT.read(i).unwrap();
            assert!(d == Descriptor::NULL || d == presets::KERNEL_DATA);
        }
        reads += 1;
        std::thread::yield_now();
    }
    writer.join().unwrap();
    assert_eq!(GDT.read(3), Some(presets::KERNEL_DATA));
}

/// `NativeOps::store_ldt` is safe and reads the GDT that `Cpu::sgdt`
/// names. Over a CPU whose registers hold only what was loaded through it
/// (the `Cpu` contract), it finds the LDT descriptor the backend wrote, and
/// reports a selector that names something else as an error.
#[test]
fn store_ldt_reads_only_the_loaded_gdt() {
    static GDT: DescriptorStorage<16> = DescriptorStorage::new([Descriptor::NULL; 16]);
    static LDT: DescriptorStorage<4> = DescriptorStorage::new([Descriptor::NULL; 4]);
    // SAFETY: the CPU model is only given the static tables above.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let ops = NativeOps::with_cpu(cpu, GdtLayout::LINUX_X86_64);
    assert_eq!(ops.store_ldt(), Ok(None), "nothing loaded: nothing read");
    let ldt = LDT.ldt().unwrap();
    // SAFETY: static tables.
    unsafe {
        ops.load_gdt(&GDT.gdt().unwrap()).unwrap();
        ops.load_ldt(Some(&ldt)).unwrap();
    }
    assert_eq!(ops.store_ldt(), Ok(Some(ldt)));
}

/// An `XenOps` over hv-sim's pv32 vCPU handle wrote its multicall into the
/// pv32 guest VA of the scratch page as if it were a host pointer and
/// segfaulted in the safe `leave_lazy_cpu`. The pv32 handle now has no
/// scratch buffer, so the op is refused.
#[test]
#[cfg_attr(miri, ignore = "drives hv-sim's Xen domain; not a Miri target")]
fn xen_ops_over_a_pv32_vcpu_refuse_instead_of_crashing() {
    let dom = XenDomain::pv32(32, 1);
    let handle = dom.vcpu_handle(0);
    assert!(!handle.host_addressed());
    assert_eq!(handle.scratch().1, 0, "no scratch buffer on pv32");
    let ops = XenOps::new(handle, GdtLayout::LINUX_X86_64);
    ops.enter_lazy_cpu().unwrap();
    // SAFETY: scalar arguments only; queued, not sent.
    unsafe {
        ops.load_kernel_stack(0xC010_0000).unwrap();
        ops.load_ldt(None).unwrap();
    }
    let err = ops.leave_lazy_cpu().unwrap_err();
    assert!(
        matches!(err, PvError::Unsupported { backend: "xen", .. }),
        "{err}"
    );
    assert!(!ops.is_lazy());
    assert_eq!(ops.queued(), 0);
}

/// The same ops over a pv64 domain, whose guest VAs are this process's
/// addresses, still run as one multicall.
#[test]
#[cfg_attr(miri, ignore = "drives hv-sim's Xen domain; not a Miri target")]
fn xen_ops_over_a_pv64_vcpu_still_batch() {
    let dom = XenDomain::pv64(32, 1);
    let handle = dom.vcpu_handle(0);
    assert!(handle.host_addressed());
    assert_eq!(handle.scratch().1, 4096);
    let ops = XenOps::new(handle, GdtLayout::LINUX_X86_64);
    ops.enter_lazy_cpu().unwrap();
    let sp = dom.alloc_pages(1) + 4096;
    // SAFETY: `sp` is the top of a page of the domain's RAM.
    unsafe {
        ops.load_kernel_stack(sp).unwrap();
        ops.load_ldt(None).unwrap();
    }
    ops.leave_lazy_cpu().unwrap();
    assert_eq!(dom.vcpu(0).kernel_sp, sp);
}
