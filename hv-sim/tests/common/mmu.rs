//! The fixture shared by the Xen MMU tests (`xen_mmu.rs`, `xen_mmu_update.rs`):
//! a pv64 domain with one page of hypercall arguments, and the page-table
//! flag constants they write. Included with
//! `#[path = "common/mmu.rs"] mod mmu;` after `mod xen_helpers;`.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]

use super::xen_helpers::{hc, map, mfn};
use hv_sim::xen::*;

/// `_PAGE_USER`, `_PAGE_GUEST_KERNEL`, `_PAGE_GLOBAL`, `_PAGE_ACCESSED`,
/// `_PAGE_DIRTY`, `_PAGE_PCD`, `_PAGE_PSE`.
pub const US: u64 = 4;
pub const GK: u64 = 1 << 52;
pub const G: u64 = 0x100;
pub const A: u64 = 0x20;
pub const D: u64 = 0x40;
pub const PCD: u64 = 0x10;
pub const PSE: u64 = 0x80;
pub const KDATA: u64 = 0x00cf_9300_0000_ffff;

/// A pv64 domain and one page of arguments: mmuext ops from offset 0,
/// mmu_update requests from 1024, `done` at 2048.
pub struct T {
    pub d: XenDomain,
    pub args: u64,
}

impl T {
    pub fn new(privileged: bool) -> T {
        let d = XenDomain::pv64(64, 1);
        d.set_privileged(privileged);
        let args = d.alloc_pages(1);
        T { d, args }
    }

    pub fn hc(&self, nr: u64, a: &[u64]) -> i64 {
        hc(&self.d, nr, a)
    }

    /// A fresh page: (va, mfn), mapped writable.
    pub fn page(&self) -> (u64, u64) {
        let va = self.d.alloc_pages(1);
        (va, mfn(&self.d, va))
    }

    pub fn put(&self, va: u64, slot: u64, v: u64) {
        assert!(self.d.host_write_u64(va + slot * 8, v));
    }

    pub fn get(&self, va: u64, slot: u64) -> u64 {
        self.d.host_read_u64(va + slot * 8).unwrap()
    }

    /// update_va_mapping of `va` to its own frame.
    pub fn map(&self, va: u64, rw: bool) -> i64 {
        map(&self.d, va, rw)
    }

    pub fn done_va(&self) -> u64 {
        self.args + 2048
    }

    pub fn done(&self) -> u64 {
        self.d.host_read_u64(self.done_va()).unwrap()
    }

    /// mmuext_op with `ops`, `done` at its place (preset to all ones).
    pub fn ext(&self, ops: &[(u32, u64, u64)], dom: u16) -> i64 {
        for (k, (cmd, a1, a2)) in ops.iter().enumerate() {
            let at = self.args + 24 * k as u64;
            self.d.host_write_u64(at, u64::from(*cmd));
            self.d.host_write_u64(at + 8, *a1);
            self.d.host_write_u64(at + 16, *a2);
        }
        self.d.host_write_u64(self.done_va(), u64::MAX);
        self.hc(
            nr::MMUEXT_OP,
            &[self.args, ops.len() as u64, self.done_va(), u64::from(dom)],
        )
    }

    pub fn pin(&self, level: u32, mfn: u64) -> i64 {
        self.ext(&[(MMUEXT_PIN_L1_TABLE + level - 1, mfn, 0)], DOMID_SELF)
    }

    pub fn unpin(&self, mfn: u64) -> i64 {
        self.ext(&[(MMUEXT_UNPIN_TABLE, mfn, 0)], DOMID_SELF)
    }

    /// mmu_update with (ptr, val) requests.
    pub fn mmu(&self, reqs: &[(u64, u64)], dom: u32) -> i64 {
        for (k, (p, v)) in reqs.iter().enumerate() {
            let at = self.args + 1024 + 16 * k as u64;
            self.d.host_write_u64(at, *p);
            self.d.host_write_u64(at + 8, *v);
        }
        self.d.host_write_u64(self.done_va(), u64::MAX);
        self.hc(
            nr::MMU_UPDATE,
            &[
                self.args + 1024,
                reqs.len() as u64,
                self.done_va(),
                u64::from(dom),
            ],
        )
    }

    pub fn typ(&self, mfn: u64) -> (PageType, u32) {
        let f = self.d.frame(mfn).unwrap();
        (f.typ, f.type_count)
    }

    pub fn ok(&self) {
        self.d.check_invariants().unwrap();
    }

    /// A read-only page holding an L1 with `entries`; (va, mfn).
    pub fn l1(&self, entries: &[(u64, u64)]) -> (u64, u64) {
        let (va, m) = self.page();
        for (s, v) in entries {
            self.put(va, *s, *v);
        }
        assert_eq!(self.map(va, false), 0);
        (va, m)
    }
}

/// The done value written back (low 4 bytes over the all-ones preset).
pub fn done32(t: &T) -> u64 {
    t.done() & 0xffff_ffff
}
