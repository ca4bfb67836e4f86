//! # hv-sim — a userspace hypervisor simulator for pvops
//!
//! hv-sim executes and checks the calls pvops' backends make, the way the
//! real hypervisor would, so kernel descriptor code can be unit-tested on
//! the host. Today it contains:
//!
//! * [`softcpu`]: a model of the descriptor-table registers and
//!   instructions (LGDT … SLDT with their #GP/#NP checks and LTR's busy
//!   bit), which the native backend runs against in-process;
//! * [`explain`]: descriptors decoded into plain words;
//! * [`demo`]: the in-process demonstration behind `hv-sim demo`.
//!
//! The Xen PV and VMI personalities and the KVM runner are tracked as open
//! issues (see the README).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod demo;
pub mod explain;
pub mod kernel_build;
pub mod kvm;
pub mod qemu;
pub mod softcpu;
pub mod vmi;
pub mod xen;

pub use softcpu::{CpuMode, HostMemory, LinearMemory, SoftCpu};
