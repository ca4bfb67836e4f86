//! # pvops-xen — the Xen PV backend
//!
//! [`XenOps`] carries out every [`pvops::DescriptorOps`] op with the 64-bit
//! Xen PV hypercalls, the way Linux's Xen PV guest does
//! (`arch/x86/xen/enlighten_pv.c`, `multicalls.c`). The environment — the
//! hypercall transport, the p2m (`virt_to_mfn`) and a scratch page for
//! argument structures — comes from a [`XenPlatform`]; hv-sim implements it
//! in-process, so this code is tested against a simulated hypervisor.
//!
//! ## Op by op
//!
//! | op | hypercalls | deferred in lazy mode |
//! |---|---|---|
//! | `load_gdt` | `update_va_mapping(va, mfn<<12 \| P, 0)` per GDT page (read-only), then `set_gdt(frames, entries)` with the machine frames in scratch | the remaps yes, `set_gdt` no |
//! | `store_gdt` / `store_idt` / `store_ldt` | none: the guest's own view (shadows), never Xen's tables | — |
//! | `store_tr` | none: 0, as Linux's `xen_store_tr` | — |
//! | `write_gdt_entry` | `update_descriptor(maddr of slot, desc)`; TSS/LDT descriptors (types 1, 2, 3, 9, 0xB, 8- or 16-byte) are checked against the table and then ignored; another 16-byte entry (a 64-bit call gate) is sent as two `update_descriptor`s, upper half first | no |
//! | `write_ldt_entry` | `update_descriptor(maddr of slot, desc)` | no |
//! | `load_idt` | one `set_trap_table` with every forwardable gate as `trap_info`, terminated by an all-zero entry (two calls if the scratch buffer cannot hold 257 entries) | no |
//! | `write_idt_entry` | native store into the IDT; if the slot is in the loaded IDT, `set_trap_table` with that vector | no |
//! | `load_ldt` | `mmuext_op(MMUEXT_SET_LDT(base, entries), 1, NULL, DOMID_SELF)`; `None` sends (0, 0) | yes |
//! | `alloc_ldt` / `free_ldt` | `update_va_mapping` per LDT page: read-only / writable again | yes |
//! | `load_tr` | none (Xen owns the TSS); validated against the kept TSS descriptor | — |
//! | `load_kernel_stack` | `stack_switch(__KERNEL_DS = 0x18, sp0)` (as Linux) | yes |
//! | `load_tls` | `update_descriptor` for each TLS slot whose shadow differs | yes |
//! | `enter_lazy_cpu` / `leave_lazy_cpu` / `flush_lazy` | start queuing / send the queue | — |
//!
//! Which gates `load_idt` forwards is [`TrapInfo::from_gate`]: interrupt
//! and trap gates with a non-zero offset, `flags` = DPL (+4 for an
//! interrupt gate, events masked on entry). Xen's `trap_info` has no IST
//! field: a present gate with an IST index is refused
//! ([`Rule::IstNotHonoured`](pvops::Rule::IstNotHonoured)) unless the
//! kernel opted into losing it on that vector with
//! [`XenOps::with_ist_dropped_on`] (Linux's choice:
//! [`VectorSet::LINUX_IST_OKAY`](pvops::VectorSet::LINUX_IST_OKAY), #DB,
//! NMI, #DF, #MC); those gates go to Xen without their IST.
//! Xen has no per-vector clear, so a vector whose new gate is not
//! forwardable keeps its previous registration (as in Linux).
//!
//! Before any hypercall, every op runs the validation layer
//! ([`pvops::validate`]) as the other backends do, with this vCPU's view
//! of its tables: the GDT and LDT shadows read from guest memory, the TSS
//! and LDT descriptors kept from Xen (so `load_tr` is checked, and an LDT
//! selector refused, as on native), and Xen's reserved selectors
//! (`0xe000` up, [`FIRST_RESERVED_GDT_ENTRY`]) left to Xen. Also checked
//! here: the GDT and (for `load_ldt`) the LDT must start on a page boundary
//! ([`PvError::MisalignedTable`](pvops::PvError::MisalignedTable) with
//! `align: 4096`) because Xen takes them as whole frames. What only Xen can
//! judge (frame ownership, its own selectors) comes back as
//! [`PvError::Hypervisor`](pvops::PvError::Hypervisor) naming the hypercall
//! (`"set_gdt"`, `"update_descriptor"`, ...), Xen's errno and the slot or
//! vector; a page the p2m cannot translate is
//! [`PvError::NoTranslation`](pvops::PvError::NoTranslation).
//!
//! ## Lazy mode and the multicall queue
//!
//! Calls marked "deferred" above are queued (32 calls, Linux's `MC_BATCH`;
//! `mmuext_op` structures in a fixed arena) and sent together. Outside lazy
//! mode an op sends its own calls at once (Linux `xen_mc_issue`); inside
//! `enter_lazy_cpu` .. `leave_lazy_cpu` they wait until:
//! * `leave_lazy_cpu` or `flush_lazy`;
//! * the queue cannot take the next op's calls (it is sent first);
//! * a non-deferred call (`set_gdt`, `set_trap_table`, `update_descriptor`
//!   from `write_*_entry`) is about to run: the queue goes first, keeping
//!   the order the guest asked for.
//!
//! A queue of one call is sent as that hypercall; two or more as one
//! `multicall` laid out in the scratch buffer (Linux's singleton bypass).
//! Xen runs every entry of a multicall and writes each result, so when
//! several fail all of them still ran: the error names the **first**
//! failing entry's hypercall and errno. If a flush forced by another op
//! fails, that op returns the flush's error and is not carried out.
//! Nested `enter_lazy_cpu`, or `leave_lazy_cpu` outside lazy mode, is
//! [`PvError::LazyModeMismatch`](pvops::PvError::LazyModeMismatch).
//!
//! Shadows (`store_*`) follow the guest's requests: in lazy mode they change
//! when the call is queued. A TLS slot whose `update_descriptor` fails is
//! forgotten, so the next `load_tls` sends it again.
//!
//! ## Differences from Linux and limits
//! * Only the mapping at the table's own virtual address is made read-only;
//!   other writable aliases (Linux also fixes the direct-map alias) are the
//!   kernel's business, and Xen refuses `set_gdt` with `-EINVAL` while one
//!   exists.
//! * The PTEs `update_va_mapping` installs carry only P (and RW when made
//!   writable again): the `XenPlatform` trait does not expose the kernel's
//!   own mapping flags, so NX, G and the accessed/dirty bits of the
//!   original mapping are not kept (Linux rebuilds the PTE from
//!   `PAGE_KERNEL_RO`, which has NX).
//! * Linux's `xen_load_tls` also clears %fs in lazy mode so the CPU does not
//!   hold a TLS descriptor that is about to change; segment registers are
//!   the kernel's `switch_to` business, not this backend's.
//! * The per-vCPU lock is held across hypercalls: an op must not be called
//!   from an interrupt that interrupted an op on the same vCPU (Linux runs
//!   these paths with preemption off for the same reason).
//! * When `set_gdt` fails, the pages already made read-only stay so (Linux
//!   `BUG()`s instead); make them writable with the kernel's own
//!   `update_va_mapping` if the memory is reused.
//! * `write_gdt_entry` and `write_ldt_entry` are not deferred (Linux calls
//!   `update_descriptor` directly after flushing); `load_tls`'s are.
//! * The backend keeps no per-vCPU Xen state across vCPUs: one [`XenOps`]
//!   per vCPU, its state behind a [`spin::Mutex`].
//! * 32-bit (compat) PV guests have other structure layouts and selectors;
//!   the ops are compiled only for `target_arch = "x86_64"`. On other
//!   targets this crate provides the platform trait, hypercall numbers and
//!   ABI encoders only.
//!
//! ```
//! # #[cfg(target_arch = "x86_64")] {
//! use core::cell::Cell;
//! use pvops::{DescriptorOps, GdtLayout};
//! use pvops_xen::{XenOps, XenPlatform};
//!
//! /// A stand-in platform that accepts every hypercall and counts them
//! /// (a kernel uses its hypercall page; tests use hv-sim's `XenVcpu`).
//! #[repr(align(4096))]
//! struct Page([u8; 4096]);
//! struct Counting(Cell<u32>, Box<Page>);
//! // SAFETY: the scratch page is a live, aligned page of this process that
//! // only this backend uses; the stand-in "hypercall" touches no memory.
//! unsafe impl XenPlatform for Counting {
//!     unsafe fn hypercall(&self, _nr: u32, _args: [u64; 5]) -> i64 {
//!         self.0.set(self.0.get() + 1);
//!         0
//!     }
//!     fn virt_to_mfn(&self, va: u64) -> Option<u64> {
//!         Some(va >> 12)
//!     }
//!     fn scratch(&self) -> (u64, usize) {
//!         (&*self.1 as *const Page as u64, 4096)
//!     }
//! }
//!
//! let ops = XenOps::new(
//!     Counting(Cell::new(0), Box::new(Page([0; 4096]))),
//!     GdtLayout::LINUX_X86_64,
//! );
//! // A context switch: both calls wait in the queue...
//! ops.enter_lazy_cpu()?;
//! // SAFETY: the stand-in hypervisor touches no memory.
//! unsafe {
//!     ops.load_kernel_stack(0xffff_8800_0001_0000)?;
//!     ops.load_ldt(None)?;
//! }
//! assert_eq!(ops.platform().0.get(), 0);
//! // ...and leave as one multicall.
//! ops.leave_lazy_cpu()?;
//! assert_eq!(ops.platform().0.get(), 1);
//! # }
//! # Ok::<(), pvops::PvError>(())
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
#[cfg(target_arch = "x86_64")]
mod batch;
pub mod hypercall_page;
#[cfg(target_arch = "x86_64")]
mod ops;
pub mod platform;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

pub use abi::MC_BATCH;
pub use abi::TrapInfo;
pub use hypercall_page::KernelPlatform;
#[cfg(target_arch = "x86_64")]
pub use ops::{FIRST_RESERVED_GDT_ENTRY, XenOps, is_tss_or_ldt};
pub use platform::XenPlatform;

/// Xen hypercall numbers used by the descriptor ops (`xen/include/public/xen.h`).
pub mod nr {
    /// `set_trap_table(trap_info *)`.
    pub const SET_TRAP_TABLE: u32 = 0;
    /// `set_gdt(frames, entries)`.
    pub const SET_GDT: u32 = 2;
    /// `stack_switch(ss, sp)`.
    pub const STACK_SWITCH: u32 = 3;
    /// `update_descriptor(maddr, desc)`.
    pub const UPDATE_DESCRIPTOR: u32 = 10;
    /// `multicall(list, nr)`.
    pub const MULTICALL: u32 = 13;
    /// `update_va_mapping(va, pte, flags)`.
    pub const UPDATE_VA_MAPPING: u32 = 14;
    /// `set_segment_base(which, base)`.
    pub const SET_SEGMENT_BASE: u32 = 25;
    /// `mmuext_op(ops, count, done, foreigndom)`.
    pub const MMUEXT_OP: u32 = 26;
    /// `console_io(cmd, count, buffer)`.
    pub const CONSOLE_IO: u32 = 18;
    /// `iret`: jumped to (not called) with an `iret_context` on the stack.
    pub const IRET: u32 = 23;
    /// `sched_op(cmd, arg)`.
    pub const SCHED_OP: u32 = 29;

    /// The hypercall's name, for errors and traces.
    pub const fn name(nr: u32) -> &'static str {
        match nr {
            SET_TRAP_TABLE => "set_trap_table",
            SET_GDT => "set_gdt",
            STACK_SWITCH => "stack_switch",
            UPDATE_DESCRIPTOR => "update_descriptor",
            MULTICALL => "multicall",
            UPDATE_VA_MAPPING => "update_va_mapping",
            SET_SEGMENT_BASE => "set_segment_base",
            MMUEXT_OP => "mmuext_op",
            CONSOLE_IO => "console_io",
            IRET => "iret",
            SCHED_OP => "sched_op",
            _ => "unknown hypercall",
        }
    }
}
