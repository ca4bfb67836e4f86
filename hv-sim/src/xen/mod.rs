//! The Xen PV personality: a simulated PV domain that executes the
//! descriptor-table hypercalls exactly as current Xen does (see
//! `hv-sim/XEN-SEMANTICS.md`), for both the 64-bit PV ABI and the 32-bit
//! compat ABI.
//!
//! * [`XenDomain`]: guest RAM (one page-aligned host allocation, pfn `i` =
//!   page `i`), a non-identity p2m (`mfn = pfn * 3 + 0x1d0`), Xen's page
//!   type system for the writable / seg_desc / page-table cases, the
//!   guest's L1 mappings of its direct map, per-vCPU state, the trace and
//!   strict mode. Entry point: [`XenDomain::hypercall`].
//! * [`descriptor_policy::check_descriptor`]: the pure descriptor rule.
//! * [`XenVcpu`]: a per-vCPU handle implementing [`pvops_xen::XenPlatform`].
//!
//! # Layout: one file per Xen source file
//!
//! The domain's handlers are `impl Inner` blocks in files named after the
//! Xen file that holds the function they model (Xen 4.17), so a reader
//! goes from a Xen function to its model in one hop:
//!
//! | Xen | hv-sim (`src/xen/`) |
//! |---|---|
//! | `arch/x86/pv/hypercall.c` (dispatch) | `hypercall.rs` |
//! | `arch/x86/pv/descriptor-tables.c` (`do_set_gdt`, `do_update_descriptor`, `pv_destroy_ldt`) | `descriptor_tables.rs`; the rule itself (`check_descriptor`) in `descriptor_policy.rs` |
//! | `arch/x86/pv/callback.c` (`do_set_trap_table`) | `callback.rs` |
//! | `arch/x86/pv/misc-hypercalls.c` (`do_stack_switch`, `do_set_segment_base`) | `misc_hypercalls.rs` |
//! | `common/multicall.c` (`do_multicall`) | `multicall.rs` |
//! | `arch/x86/mm.c`: seg_desc / writable types, `do_update_va_mapping`, `do_mmuext_op` (its `switch` is `mmuext_cmd`, MMUEXT_SET_LDT `set_ldt`) | `mm.rs` |
//! | `arch/x86/mm.c`: page-table types, `get_page_from_l*e`, validation | `pagetables.rs` |
//! | `arch/x86/mm.c`: `do_mmu_update`, `mod_l*_entry`; the batch start, loop and end both batch calls share | `mmu_update.rs` |
//! | `arch/x86/mm.c`: MMUEXT pins, base pointers, page commands | `mmuext_pt.rs` |
//! | `arch/x86/pv/mm.c` (`pv_map_ldt_shadow_page`) | `pv_mm.rs` |
//! | `arch/x86/pv/ro-page-fault.c` (writable page tables) | `ro_page_fault.rs` |
//! | `arch/x86/pv/dom0_build.c` (`mark_pv_pt_pages_rdonly`) | `dom0_build.rs` |
//! | `arch/x86/pv/traps.c`, `x86_64/entry.S` (bounce frames, `do_iret`) | `traps.rs` |
//! | `drivers/char/console.c`, `common/sched/core.c` | `misc.rs` |
//! | `arch/x86/usercopy.c` (`copy_from_guest`, `copy_to_guest`) | `guest_access.rs` |
//! | (hv-sim's own) typed-frame shadows and the direct-store audit | `shadow.rs` |
//! | (hv-sim's own) invariants after every call | `invariants.rs`, `pt_invariants.rs` |
//! | (hv-sim's own) the bounded raw trace | `trace.rs` |
//!
//! Guest virtual addresses: for pv64 the direct map's VA of pfn `i` is the
//! host address of page `i` of the allocation, so in-process kernel code can
//! use its tables as ordinary memory. For pv32 guest VAs are 32-bit and
//! start at [`domain::PV32_VA_BASE`]; use [`XenDomain::host_write_u64`] and
//! friends to fill them.
//!
//! ```
//! use hv_sim::xen::{XenDomain, nr};
//! let dom = XenDomain::pv64(64, 1);
//! let gdt = dom.alloc_pages(1);
//! dom.host_write_u64(gdt + 8, 0x00af_9b00_0000_ffff); // kernel CS, DPL 0
//! let mfn = dom.virt_to_mfn(gdt).unwrap();
//! // A GDT frame must have no writable mapping: map it read-only first.
//! assert_eq!(dom.hypercall(0, nr::UPDATE_VA_MAPPING, [gdt, mfn << 12 | 1, 0, 0, 0, 0]), 0);
//! let list = dom.alloc_pages(1);
//! dom.host_write_u64(list, mfn);
//! assert_eq!(dom.hypercall(0, nr::SET_GDT, [list, 2, 0, 0, 0, 0]), 0);
//! assert_eq!(dom.gdt_entry(0, 1), 0x00af_fb00_0000_ffff); // DPL raised to 3
//! ```

pub mod descriptor_policy;
pub mod domain;
pub mod error;
pub mod fixtures;
pub mod mem;
pub mod misc;
pub mod platform;
pub mod trace;
pub mod traps;

pub use descriptor_policy::{Abi, Reject, check_descriptor};
pub use domain::{GuestFault, TrapInfo, VcpuEntry, VcpuState, XenDomain, XenVersion};
pub use error::{BootstrapError, InvariantError};
pub use mem::{FrameInfo, PageType};
pub use platform::XenVcpu;
pub use trace::{Change, ChangeIds, EventDisplay, Trace, TraceEvent};

/// Hypercall numbers (`public/xen.h`).
pub mod nr {
    /// set_trap_table(table).
    pub const SET_TRAP_TABLE: u64 = 0;
    /// mmu_update(reqs, count, pdone, foreigndom).
    pub const MMU_UPDATE: u64 = 1;
    /// set_gdt(frame_list, entries).
    pub const SET_GDT: u64 = 2;
    /// stack_switch(ss, sp).
    pub const STACK_SWITCH: u64 = 3;
    /// update_descriptor(maddr, desc) (pv32: pa_lo, pa_hi, d_lo, d_hi).
    pub const UPDATE_DESCRIPTOR: u64 = 10;
    /// multicall(list, nr).
    pub const MULTICALL: u64 = 13;
    /// update_va_mapping(va, pte, flags) (pv32: va, pte_lo, pte_hi, flags).
    pub const UPDATE_VA_MAPPING: u64 = 14;
    /// iret (the KVM runner's, see `kvm::xen`; in process -ENOSYS).
    pub const IRET: u64 = 23;
    /// vcpu_op(cmd, vcpuid, arg): initialise, up, down and is_up (pv64).
    pub const VCPU_OP: u64 = 24;
    /// set_segment_base(which, base) (pv64 only).
    pub const SET_SEGMENT_BASE: u64 = 25;
    /// mmuext_op(ops, count, pdone, foreigndom).
    pub const MMUEXT_OP: u64 = 26;
    /// console_io(cmd, count, buffer).
    pub const CONSOLE_IO: u64 = 18;
    /// sched_op(cmd, arg).
    pub const SCHED_OP: u64 = 29;
}

/// EPERM.
pub const EPERM: i64 = 1;
/// ENOENT.
pub const ENOENT: i64 = 2;
/// ESRCH.
pub const ESRCH: i64 = 3;
/// EACCES.
pub const EACCES: i64 = 13;
/// EFAULT.
pub const EFAULT: i64 = 14;
/// EBUSY.
pub const EBUSY: i64 = 16;
/// EEXIST.
pub const EEXIST: i64 = 17;
/// EINVAL.
pub const EINVAL: i64 = 22;
/// ENOSYS.
pub const ENOSYS: i64 = 38;
/// EOPNOTSUPP.
pub const EOPNOTSUPP: i64 = 95;

/// MMUEXT_PIN_L1_TABLE (PIN_L2/L3/L4 follow: 1, 2, 3).
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// MMUEXT_PIN_L2_TABLE.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// MMUEXT_PIN_L3_TABLE.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// MMUEXT_PIN_L4_TABLE.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// MMUEXT_UNPIN_TABLE.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// MMUEXT_TLB_FLUSH_MULTI.
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// MMUEXT_INVLPG_MULTI.
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
/// MMUEXT_FLUSH_CACHE.
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
/// MMUEXT_CLEAR_PAGE.
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// MMUEXT_COPY_PAGE.
pub const MMUEXT_COPY_PAGE: u32 = 17;
/// MMUEXT_FLUSH_CACHE_GLOBAL.
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
/// MMU_NORMAL_PT_UPDATE (`mmu_update` command, low 3 bits of `ptr`).
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// MMU_MACHPHYS_UPDATE.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// MMU_PT_UPDATE_PRESERVE_AD.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// MMU_PT_UPDATE_NO_TRANSLATE.
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;

/// MMUEXT_TLB_FLUSH_LOCAL.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// MMUEXT_INVLPG_LOCAL.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// MMUEXT_TLB_FLUSH_ALL.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// MMUEXT_INVLPG_ALL.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// MMUEXT_NEW_BASEPTR.
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// MMUEXT_SET_LDT.
pub const MMUEXT_SET_LDT: u32 = 13;
/// MMUEXT_NEW_USER_BASEPTR.
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
/// MMUEXT_MARK_SUPER.
pub const MMUEXT_MARK_SUPER: u32 = 19;
/// MMUEXT_UNMARK_SUPER.
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// DOMID_SELF.
pub const DOMID_SELF: u16 = 0x7FF0;
/// DOMID_IO.
pub const DOMID_IO: u16 = 0x7FF1;
/// DOMID_XEN.
pub const DOMID_XEN: u16 = 0x7FF2;
/// DOMID_COW (no such domain without memory sharing).
pub const DOMID_COW: u16 = 0x7FF3;

/// Stored as ldt_base when SET_LDT installs 0 entries.
pub const ZERO_BLOCK_PTR: u64 = 0xBAD0_BAD0_BAD0_BAD0;

/// PTE present bit.
pub const PTE_PRESENT: u64 = 1;
/// PTE writable bit.
pub const PTE_WRITABLE: u64 = 2;
