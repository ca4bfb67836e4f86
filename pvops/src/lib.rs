//! # pvops — paravirtualized descriptor-table ops for x86 kernels
//!
//! A kernel calls [`DescriptorOps`] instead of executing `lgdt`, `lidt`,
//! `ltr`, `lldt` (and their store forms) or writing table entries itself; a
//! backend carries each op out: the native instruction on bare metal
//! (`pvops-native`), a hypercall under a Xen-style hypervisor
//! (`pvops-xen`), a call into a VMI option ROM (`pvops-vmi`). This is the
//! design of Linux's paravirt-ops (`pv_cpu_ops`), for Rust kernels.
//!
//! This crate is `#![no_std]` without `alloc`. It holds:
//! * the descriptor model shared by guest code and the simulator:
//!   [`Selector`], [`Descriptor`] (8 bytes), [`SystemDescriptor`] (16-byte
//!   TSS/LDT), [`Gate32`]/[`Gate64`], [`DescriptorTablePointer`] and the
//!   exact 6/10-byte operands [`DtPtr32`]/[`DtPtr64`], const [`presets`];
//! * validated table handles [`Gdt`], [`Ldt`], [`Idt`] and [`TableStorage`];
//! * the ops trait [`DescriptorOps`], the function-pointer [`OpsTable`] and
//!   the boot-time [`dispatch::install`] (and, for host tests,
//!   `dispatch::with_installed`, feature `std`); [`percpu::PerCpu`], one
//!   backend per CPU for SMP kernels;
//! * [`Tss64`]/[`Tss32`] and [`TssStorage`], the [`GdtBuilder`] that hands
//!   back selectors, named [`Exception`] vectors and gate constructors
//!   that take handler functions ([`Gate64::interrupt_handler`]);
//! * hypervisor detection by CPUID, [`detect_hypervisor`];
//! * with the `x86_64` feature, conversions to and from rust-osdev's
//!   `x86_64` crate and the way from its tables to pvops' (`x86_64_interop`).
//!
//! # Cargo features
//! * `x86_64`: the `x86_64_interop` module.
//! * `std`: `dispatch::with_installed`, a per-thread scoped install for host
//!   tests.
//! * `x86-interrupt` (**nightly only**, off by default): gates for
//!   `extern "x86-interrupt" fn` handlers (`Gate64::x86_interrupt`,
//!   `Gate64::x86_exception`), with the interrupt stack frame type. It turns
//!   on the unstable `abi_x86_interrupt` language feature, so a stable
//!   compiler rejects it.
//!
//! ```
//! use pvops::{presets, DescriptorStorage, Ring, Selector};
//!
//! // Linux's x86_64 layout: null, kernel code32/code64/data, user code32/data/code64, ...
//! static GDT: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
//!
//! let gdt = GDT.gdt().unwrap();            // validated: aligned, <= 64 KiB
//! assert_eq!(gdt.pointer().limit, 16 * 8 - 1);
//! assert_eq!(presets::KERNEL_CODE64.0, 0x00af9b000000ffff);
//! assert_eq!(presets::KERNEL_CS, Selector::gdt(2, Ring::Ring0)); // __KERNEL_CS = 0x10
//! // A 16-byte TSS descriptor cannot go in the last slot (compiled for
//! // x86_64; for i686, in none: 32-bit mode has no 16-byte descriptors):
//! let tss = pvops::SystemDescriptor::tss(0x1000, pvops::Tss64::LIMIT).unwrap();
//! let err = gdt.entry_addr(15, &tss.into()).unwrap_err();
//! # #[cfg(target_arch = "x86_64")]
//! assert!(err.to_string().contains("needs slots 15 and 16"));
//! # #[cfg(not(target_arch = "x86_64"))]
//! # assert_eq!(err, pvops::PvError::DoubleSlotUnsupported);
//! ```

#![no_std]
#![cfg_attr(feature = "x86-interrupt", feature(abi_x86_interrupt))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod builder;
pub mod descriptor;
pub mod detect;
pub mod dispatch;
pub mod error;
pub mod exception;
pub mod gate;
pub mod ops;
pub mod percpu;
pub mod pointer;
pub mod presets;
pub mod selector;
pub mod table;
pub mod tss;
pub mod validate;
#[cfg(feature = "x86_64")]
pub mod x86_64_interop;

pub use builder::GdtBuilder;
pub use descriptor::{
    Descriptor, DescriptorFields, GdtEntry, SegmentType, SystemDescriptor, SystemDescriptorFields,
    SystemType,
};
#[doc(hidden)]
pub use detect::detect;
pub use detect::{Hypervisor, detect_hypervisor};
pub use dispatch::{Installed, OpsTable, install};
pub use error::{Errno, PvError, Result, TableKind};
pub use exception::Exception;
pub use gate::{Gate32, Gate32Fields, Gate64, Gate64Fields, GateKind, IdtGate};
pub use ops::{DescriptorOps, GdtLayout, TLS_ENTRIES};
pub use pointer::{DescriptorTablePointer, DtPtr32, DtPtr64, NativeDtPtr};
pub use selector::{Ring, Selector, TableIndicator};
pub use table::{DescriptorStorage, Gdt, Idt, IdtStorage, Ldt, TableRecord, TableStorage};
pub use tss::{Tss32, Tss64, TssStorage};
pub use validate::{IstSupport, Rule, Slot, TableView, VectorSet};
