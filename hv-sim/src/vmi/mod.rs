//! The VMI personality: a simulated VMI-style hypervisor with a real option
//! ROM image, the relocation query, and calls 3–14 and SetLazyMode (73).
//!
//! * [`abi`]: hv-sim's own transcription of the VMI ABI (call numbers,
//!   relocation types, ROM header layout, probe window, lazy modes) from
//!   Linux's `asm/vmi.h` and `vmi_32.c`. The personality uses only these,
//!   never the guest crate's constants, so it stays an independent oracle
//!   for `pvops-vmi`.
//! * [`rom`]: the ROM image (API 3.0 header, PCI/PnP headers, `"GPL"`,
//!   checksum, x86-64 call stubs) and [`RomBuilder`] to break it on purpose.
//! * [`VmiHypervisor`]: the option-ROM window (guest-physical
//!   0xC0000..1 MiB), the relocation answers, and the calls. It keeps the
//!   **guest's view** ([`GuestView`]: the DTRs, selectors and stack it set;
//!   table entries as written, in the guest's own memory) apart from the
//!   **effective state** ([`EffectiveState`]: the hypervisor's copies of the
//!   tables after [`policy`]'s fix-ups, at the hypervisor's own addresses,
//!   with its reserved GDT entries appended and the TSS marked busy), so
//!   GetGDT/GetIDT return what the guest expects while the CPU would use
//!   something else.
//! * Every call checks everything first and then writes guest memory in
//!   one all-or-nothing write ([`GuestMemory::write`]'s contract), so a
//!   refused call changes nothing: not guest memory, the guest's view, the
//!   effective state or the pending batch. Each 8-byte slot that reaches an
//!   effective table is checked as the CPU can read it, whichever half of
//!   a 16-byte descriptor it came from; IDT gates are re-checked against
//!   the GDT and LDT whenever any of the three changes, and a gate whose
//!   target would run the guest above its ring (the hypervisor's reserved
//!   entries, or any code segment of lower DPL) is refused. The rules, and
//!   where they are stricter than Linux's client needs, are in
//!   `hv-sim/VMI-SEMANTICS.md`.
//! * Module layout: [`machine`] (the ROM window, dispatch, lazy batching),
//!   [`state`] (guest view, effective state), [`memory`] (guest memory),
//!   [`policy`] (descriptor rules), [`invariants`], [`trace`] (bounded,
//!   raw records formatted on display); the calls are one method each in
//!   private modules by concern (`tables.rs`, `entries.rs`, `kstack.rs`,
//!   `gates.rs`).
//! * Lazy mode: between SetLazyMode(2) and SetLazyMode(0) each call is
//!   checked and answered at once (errors are not deferred) and updates the
//!   guest's view, but its effective-state changes are queued and applied
//!   at SetLazyMode(0); the trace shows them `deferred:` and then `flush:`.
//! * UpdateKernelStack(selector, sp0) accepts what Linux's client sends:
//!   `vmi_load_sp0` passes `__KERNEL_DS` (the kernel's stack segment, the
//!   TSS's ss0), and i386 `cpu_init` calls it *before* SetTR. The first
//!   argument is therefore either the loaded TR (pvops-vmi's 64-bit
//!   convention) or a selector of a present writable data segment among the
//!   guest's GDT entries; sp0 must be a valid guest address (canonical, or
//!   below 4 GiB for a 32-bit guest). The data-segment rule is a deliberate
//!   addition (Linux never sends anything else; any other selector could
//!   not be a kernel stack segment, and the hypervisor's reserved GDT
//!   entries are not the guest's to name), documented on the handler.
//! * [`VmiHypervisor::check_invariants`]: what must hold after every call
//!   (no live descriptor lets the guest run above its ring, no effective
//!   gate targets a code segment above it or the hypervisor's entries, no
//!   half-validated 16-byte entry; the effective state matches the guest's
//!   view outside lazy batches). The KVM runner checks it after every call
//!   too, before it installs the tables on the vCPU.
//! * [`pvops_vmi::VmiPlatform`] is implemented for [`VmiHypervisor`]
//!   ([`platform`]), so the VMI backend runs against it in-process.
//!
//! Relocation answers ([`default_answers`], changeable with
//! [`VmiHypervisor::set_answer`]): CALL_REL for 3–14 and 73; NOP for IODelay
//! (65); NONE (trap the native instruction) for the rest.
//!
//! ```
//! use hv_sim::vmi::{GuestKind, RamMemory, VmiHypervisor};
//! let hv = VmiHypervisor::new(GuestKind::Vmi64, RamMemory::new(0x10_0000, 0x1000));
//! let rom = pvops_vmi::rom::probe(&hv).unwrap();
//! assert_eq!(rom.base, 0xC8000);
//! // Over simulated RAM the ROM's transport is safe: `call_entry` and
//! // `reloc_query` run the call the entry point names.
//! assert_eq!(hv.call_entry(rom.init_entry(), [0; 4]), 0);
//! let (eip, typ) = hv.reloc_query(rom.reloc_entry(), hv_sim::vmi::abi::call::GET_TR);
//! assert_eq!((eip, typ), (0xC8000 + 0x100 + 16 * 10, 1)); // CALL_REL
//! assert_eq!(hv.call_entry(eip, [0; 4]), 0); // GetTR: no TR yet
//! ```

pub mod abi;
mod entries;
pub mod error;
mod gates;
pub mod invariants;
mod kstack;
pub mod machine;
pub mod memory;
pub mod platform;
pub mod policy;
pub mod rom;
pub mod state;
mod tables;
pub mod trace;

pub use abi::Reloc;
pub use error::{CheckedState, EntryError, InvariantError, RomError, Violation};
pub use machine::{
    DEFAULT_ROM_BASE, EffectiveState, GuestMemory, GuestView, HostGuestMemory, HostWindow,
    RamMemory, VmiHypervisor, default_answers,
};
pub use policy::{GuestKind, Reject};
pub use rom::RomBuilder;
pub use trace::{Change, VmiEvent, VmiTrace};
