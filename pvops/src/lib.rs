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
//! * hypervisor [`detect()`]ion by CPUID;
//! * with the `x86_64` feature, conversions to and from rust-osdev's
//!   `x86_64` crate and the way from its tables to pvops' (`x86_64_interop`).
//!
//! ```
//! use pvops::{presets, Descriptor, DescriptorStorage, Ring, Selector};
//!
//! static GDT: DescriptorStorage<16> = DescriptorStorage::new([
//!     Descriptor::NULL, presets::KERNEL_CODE32, presets::KERNEL_CODE64, presets::KERNEL_DATA,
//!     presets::USER_CODE32, presets::USER_DATA, presets::USER_CODE64, Descriptor::NULL,
//!     Descriptor::NULL, Descriptor::NULL, Descriptor::NULL, Descriptor::NULL,
//!     Descriptor::NULL, Descriptor::NULL, Descriptor::NULL, Descriptor::NULL,
//! ]);
//!
//! let gdt = GDT.gdt().unwrap();            // validated: aligned, <= 64 KiB
//! assert_eq!(gdt.pointer().limit, 16 * 8 - 1);
//! assert_eq!(presets::KERNEL_CODE64.0, 0x00af9b000000ffff);
//! assert_eq!(Selector::gdt(2, Ring::Ring0).bits(), 0x10); // __KERNEL_CS
//! // A 16-byte TSS descriptor cannot go in the last slot:
//! let tss = pvops::SystemDescriptor::tss(0x1000, 0x67).unwrap();
//! let err = gdt.entry_addr(15, &tss.into()).unwrap_err();
//! assert!(err.to_string().contains("needs slots 15 and 16"));
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod descriptor;
pub mod detect;
pub mod dispatch;
pub mod error;
pub mod gate;
pub mod ops;
pub mod percpu;
pub mod pointer;
pub mod presets;
pub mod selector;
pub mod table;
pub mod validate;
#[cfg(feature = "x86_64")]
pub mod x86_64_interop;

pub use descriptor::{
    Descriptor, DescriptorFields, GdtEntry, SegmentType, SystemDescriptor, SystemDescriptorFields,
    SystemType,
};
pub use detect::{Hypervisor, detect};
pub use dispatch::{Installed, OpsTable, install};
pub use error::{Errno, PvError, Result, TableKind};
pub use gate::{Gate32, Gate32Fields, Gate64, Gate64Fields, GateKind, IdtGate};
pub use ops::{DescriptorOps, GdtLayout, TLS_ENTRIES};
pub use pointer::{DescriptorTablePointer, DtPtr32, DtPtr64, NativeDtPtr};
pub use selector::{Ring, Selector, TableIndicator};
pub use table::{DescriptorStorage, Gdt, Idt, IdtStorage, Ldt, TableRecord, TableStorage};
pub use validate::{IstSupport, Rule, Slot, TableView, VectorSet};
