//! # hv-sim — a userspace hypervisor simulator for pvops
//!
//! hv-sim executes and checks the calls pvops' backends make, the way the
//! real hypervisor would, so kernel descriptor code can be unit-tested on
//! the host, and runs a real guest kernel under KVM with each personality.
//!
//! * [`xen`]: a Xen PV domain (pv64 and pv32 ABIs) that validates the
//!   descriptor hypercalls exactly as Xen does, with a trace and strict mode;
//! * [`vmi`]: a VMI option ROM image and the VMI personality (guest view vs
//!   effective tables, relocation answers, lazy mode);
//! * [`kvm`]: the KVM runner that boots `examples/kernel` natively, as a Xen
//!   PV guest (hypercall page) or as a VMI guest (ROM at 0xC0000), and
//!   [`qemu`]: the same image under QEMU through its PVH entry;
//! * [`realxen`]: the same image as dom0 of the real Xen hypervisor
//!   (Debian's 4.17) under QEMU;
//! * [`softcpu`]: a model of the descriptor-table registers and
//!   instructions (LGDT … SLDT with their #GP/#NP checks and LTR's busy
//!   bit), which the native backend runs against in-process;
//! * [`explain`]: descriptors decoded into plain words;
//! * [`mod@bench`]: the measurements `hv-sim bench` prints as one table.
//!
//! The `hv-sim` command (its argument parsing, the demo with its
//! in-process runs, printing and verdict, the fuzzer's driver) is the
//! separate `hv-sim-cli` crate, which uses only this API. Two modules serve
//! tests and that crate rather than kernels: `kernel_build` (builds `examples/kernel`) and `testing` (the
//! `SKIPPED` / `HV_SIM_REQUIRE_*` rules). They stay here because hv-sim's
//! own integration tests boot the example kernel, and an integration test
//! sees only the library's public API. [`fuzz`] (the fuzz targets and their
//! invariants) and [`mod@bench`] (the measurements) stay for the same kind
//! of reason: the cargo-fuzz target in `fuzz/`, the `fuzz_regressions`
//! test and the criterion benches in `benches/` link them, and none of
//! those can depend on a binary crate.
//!
//! ## Features
//!
//! * `kvm` (default): the machine runners, [`kvm`], [`qemu`], [`realxen`],
//!   `differential`, `kernel_build` and `testing`, and [`mod@bench`], with
//!   the crates they need (kvm-ioctls, kvm-bindings, vm-memory,
//!   vmm-sys-util, libc, goblin, flate2, thiserror, hvsim-boot-protocol).
//!
//! A kernel's unit tests need only the in-process models, without it:
//!
//! ```toml
//! [dev-dependencies]
//! hv-sim = { version = "0.1", default-features = false }
//! ```
//!
//! That is [`xen`], [`vmi`], [`softcpu`], [`emulate`], [`explain`],
//! and [`fuzz`], on pvops, its backends and iced-x86.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// Without `kvm`, the docs still name the runners (`kvm`, `qemu`, ...).
#![cfg_attr(not(feature = "kvm"), allow(rustdoc::broken_intra_doc_links))]

// The in-process models: always built.
pub mod emulate;
pub mod explain;
pub mod fuzz;
pub mod softcpu;
pub mod vmi;
pub mod xen;

// The machine runners (feature `kvm`).
#[cfg(feature = "kvm")]
pub mod bench;
#[cfg(feature = "kvm")]
pub mod differential;
#[cfg(feature = "kvm")]
pub mod kernel_build;
#[cfg(feature = "kvm")]
pub mod kvm;
#[cfg(feature = "kvm")]
pub mod qemu;
#[cfg(feature = "kvm")]
pub mod realxen;
#[cfg(feature = "kvm")]
pub mod testing;

pub use softcpu::{CpuMode, HostMemory, LinearMemory, SoftCpu};
