//! Property tests: no sequence of hypercalls (well-formed or random) leaves
//! a live GDT/LDT code/data descriptor below the guest kernel's ring, makes
//! a live descriptor page writable, breaks the type counts, or panics the
//! simulator (non-strict mode); and `check_descriptor` keeps exactly the
//! guarantees of Xen's source (see `check_descriptor_property`).
//!
//! Each property runs from fixed seeds and then one random seed, printed on
//! standard error with the command that reruns it (`common/seeds.rs`).

#[path = "common/seeds.rs"]
mod seeds;

use hv_sim::xen::*;
use proptest::prelude::*;

const TABLE_PAGES: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    SetGdt {
        vcpu: usize,
        pages: Vec<usize>,
        entries: u64,
    },
    UpdateDesc {
        page: usize,
        slot: u64,
        desc: u64,
        misalign: bool,
    },
    Map {
        page: usize,
        flags: u64,
    },
    SetLdt {
        vcpu: usize,
        page: usize,
        ents: u64,
    },
    TouchLdt {
        vcpu: usize,
        index: u32,
        user: bool,
    },
    NewBaseptr {
        vcpu: usize,
        page: usize,
    },
    RogueWrite {
        page: usize,
        slot: u64,
        value: u64,
    },
    TrapTable {
        addr: u64,
        cs: u16,
    },
    SegBase {
        which: u64,
        base: u64,
    },
    Multicall {
        vcpu: usize,
        inner: Vec<(u64, u64, u64)>,
        nested: bool,
    },
    Raw {
        vcpu: usize,
        nr: u64,
        args: [u64; 6],
    },
}

fn desc() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        // Present code/data with any DPL and flags.
        (any::<u64>(), 0u64..4)
            .prop_map(|(x, dpl)| (x & !(3 << 45)) | 1 << 47 | 1 << 44 | dpl << 45),
        // Present system descriptors.
        (any::<u64>(), 0u64..16).prop_map(|(x, t)| (x & !(0x1F << 40)) | 1 << 47 | t << 40),
        // Call gates with small selectors.
        (0u64..0x10000, 0u64..4, 0u64..32).prop_map(|(sel, dpl, p)| 1 << 47
            | 0xC << 40
            | dpl << 45
            | p << 32
            | sel << 16),
        Just(0u64),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..TABLE_PAGES;
    let vcpu = 0usize..2;
    prop_oneof![
        (
            vcpu.clone(),
            prop::collection::vec(page.clone(), 0..3),
            0u64..1600
        )
            .prop_map(|(vcpu, pages, entries)| Op::SetGdt {
                vcpu,
                pages,
                entries
            }),
        (page.clone(), 0u64..512, desc(), any::<bool>()).prop_map(
            |(page, slot, desc, misalign)| Op::UpdateDesc {
                page,
                slot,
                desc,
                misalign
            }
        ),
        (
            page.clone(),
            prop_oneof![Just(0u64), Just(1), Just(3), Just(0x11), 0u64..0x1000]
        )
            .prop_map(|(page, flags)| Op::Map { page, flags }),
        (
            vcpu.clone(),
            page.clone(),
            prop_oneof![Just(0u64), 1u64..1100, 8000u64..9000]
        )
            .prop_map(|(vcpu, page, ents)| Op::SetLdt { vcpu, page, ents }),
        (vcpu.clone(), 0u32..1100, any::<bool>()).prop_map(|(vcpu, index, user)| Op::TouchLdt {
            vcpu,
            index,
            user
        }),
        (vcpu.clone(), page.clone()).prop_map(|(vcpu, page)| Op::NewBaseptr { vcpu, page }),
        (page.clone(), 0u64..512, desc()).prop_map(|(page, slot, value)| Op::RogueWrite {
            page,
            slot,
            value
        }),
        (any::<u64>(), any::<u16>()).prop_map(|(addr, cs)| Op::TrapTable { addr, cs }),
        (0u64..5, any::<u64>()).prop_map(|(which, base)| Op::SegBase { which, base }),
        (
            vcpu.clone(),
            prop::collection::vec((0u64..30, any::<u64>(), any::<u64>()), 0..4),
            any::<bool>()
        )
            .prop_map(|(vcpu, inner, nested)| Op::Multicall {
                vcpu,
                inner,
                nested
            }),
        (vcpu, 0u64..45, any::<[u64; 6]>()).prop_map(|(vcpu, nr, args)| Op::Raw { vcpu, nr, args }),
    ]
}

struct World {
    d: XenDomain,
    pages: Vec<u64>,
    list: u64,
    scratch: u64,
}

impl World {
    fn new(abi: Abi, init: &[u64]) -> World {
        let d = XenDomain::new(abi, 24, 2);
        let pages: Vec<u64> = (0..TABLE_PAGES).map(|_| d.alloc_pages(1)).collect();
        for (i, p) in pages.iter().enumerate() {
            for (j, v) in init.iter().enumerate() {
                d.host_write_u64(p + 8 * ((i * 37 + j * 5) % 512) as u64, *v);
            }
        }
        let list = d.alloc_pages(1);
        let scratch = d.alloc_pages(1);
        let w = World {
            d,
            pages,
            list,
            scratch,
        };
        // Half the table pages start read-only, ready to be descriptor pages.
        for p in 0..TABLE_PAGES / 2 {
            w.apply(&Op::Map { page: p, flags: 1 });
        }
        w
    }

    fn mfn(&self, page: usize) -> u64 {
        self.d.virt_to_mfn(self.pages[page]).unwrap()
    }

    fn put_longs(&self, va: u64, vals: &[u64]) {
        match self.d.abi() {
            Abi::Pv64 => {
                for (i, v) in vals.iter().enumerate() {
                    self.d.host_write_u64(va + 8 * i as u64, *v);
                }
            }
            Abi::Pv32 => {
                for (i, ch) in vals.chunks(2).enumerate() {
                    let w = (ch[0] & 0xFFFF_FFFF) | ch.get(1).map_or(0, |x| x << 32);
                    self.d.host_write_u64(va + 8 * i as u64, w);
                }
            }
        }
    }

    fn apply(&self, op: &Op) {
        let d = &self.d;
        let pv32 = d.abi() == Abi::Pv32;
        match op {
            Op::SetGdt {
                vcpu,
                pages,
                entries,
            } => {
                let m: Vec<u64> = pages.iter().map(|p| self.mfn(*p)).collect();
                self.put_longs(self.list, &m);
                d.hypercall(*vcpu, nr::SET_GDT, [self.list, *entries, 0, 0, 0, 0]);
            }
            Op::UpdateDesc {
                page,
                slot,
                desc,
                misalign,
            } => {
                let ma = (self.mfn(*page) << 12) + slot * 8 + u64::from(*misalign) * 4;
                let args = if pv32 {
                    [
                        ma & 0xFFFF_FFFF,
                        ma >> 32,
                        desc & 0xFFFF_FFFF,
                        desc >> 32,
                        0,
                        0,
                    ]
                } else {
                    [ma, *desc, 0, 0, 0, 0]
                };
                d.hypercall(0, nr::UPDATE_DESCRIPTOR, args);
            }
            Op::Map { page, flags } => {
                let pte = self.mfn(*page) << 12 | flags;
                let args = if pv32 {
                    [self.pages[*page], pte & 0xFFFF_FFFF, pte >> 32, 0, 0, 0]
                } else {
                    [self.pages[*page], pte, 0, 0, 0, 0]
                };
                d.hypercall(0, nr::UPDATE_VA_MAPPING, args);
            }
            Op::SetLdt { vcpu, page, ents } => {
                self.mmuext(*vcpu, MMUEXT_SET_LDT, self.pages[*page], *ents)
            }
            Op::NewBaseptr { vcpu, page } => {
                self.mmuext(*vcpu, MMUEXT_NEW_BASEPTR, self.mfn(*page), 0)
            }
            Op::TouchLdt { vcpu, index, user } => {
                let _ = d.touch_ldt_from(*vcpu, *index, *user);
            }
            Op::RogueWrite { page, slot, value } => {
                d.host_write_u64(self.pages[*page] + slot * 8, *value);
            }
            Op::TrapTable { addr, cs } => {
                let e = if pv32 {
                    vec![3 | u64::from(*cs) << 16 | (addr & 0xFFFF_FFFF) << 32, 0]
                } else {
                    vec![3 | u64::from(*cs) << 16, *addr, 0, 0]
                };
                for (i, v) in e.iter().enumerate() {
                    d.host_write_u64(self.scratch + 8 * i as u64, *v);
                }
                d.hypercall(0, nr::SET_TRAP_TABLE, [self.scratch, 0, 0, 0, 0, 0]);
            }
            Op::SegBase { which, base } => {
                d.hypercall(0, nr::SET_SEGMENT_BASE, [*which, *base, 0, 0, 0, 0]);
            }
            Op::Multicall {
                vcpu,
                inner,
                nested,
            } => {
                // Entries: (op among the modelled ones, arg0, arg1) pointing
                // into table pages half of the time.
                let mut vals = vec![];
                for (k, (n, a0, a1)) in inner.iter().enumerate() {
                    let nr = [0, 2, 3, 10, 13, 14, 25, 26][(*n % 8) as usize];
                    let nr = if *nested && k == 0 { nr::MULTICALL } else { nr };
                    let a0 = if a0 % 2 == 0 {
                        (self.mfn((*a0 as usize / 2) % TABLE_PAGES) << 12) + (a0 >> 8) % 512 * 8
                    } else {
                        *a0
                    };
                    vals.extend_from_slice(&[nr, 0, a0, *a1, 0, 0, 0, 0]);
                }
                self.put_longs(self.scratch, &vals);
                d.hypercall(
                    *vcpu,
                    nr::MULTICALL,
                    [self.scratch, inner.len() as u64, 0, 0, 0, 0],
                );
            }
            Op::Raw { vcpu, nr, args } => {
                d.hypercall(*vcpu, *nr, *args);
            }
        }
    }

    fn mmuext(&self, vcpu: usize, cmd: u32, a1: u64, a2: u64) {
        if self.d.abi() == Abi::Pv32 {
            self.d
                .host_write_u64(self.scratch, u64::from(cmd) | (a1 & 0xFFFF_FFFF) << 32);
            self.d.host_write_u64(self.scratch + 8, a2 & 0xFFFF_FFFF);
        } else {
            self.put_longs(self.scratch, &[u64::from(cmd), a1, a2]);
        }
        self.d.hypercall(
            vcpu,
            nr::MMUEXT_OP,
            [self.scratch, 1, 0, u64::from(DOMID_SELF), 0, 0],
        );
    }

    fn check(&self, op: &Op) -> Result<(), TestCaseError> {
        if let Err(e) = self.d.check_invariants() {
            return Err(TestCaseError::fail(format!(
                "after {op:?}: {e}\n{}",
                self.d.trace()
            )));
        }
        for v in 0..2 {
            prop_assert!(!self.d.vcpu(v).in_multicall);
        }
        Ok(())
    }
}

fn run(abi: Abi, init: Vec<u64>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let w = World::new(abi, &init);
    for op in &ops {
        w.apply(op);
        w.check(op)?;
    }
    // Touch every LDT page and re-check: lazily mapped pages obey the rules too.
    for v in 0..2 {
        for i in (0..8192).step_by(512) {
            let _ = w.d.touch_ldt(v, i);
        }
    }
    w.check(&Op::TouchLdt {
        vcpu: 0,
        index: 0,
        user: false,
    })
}

seeds::seeded_proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pv64_random_sequences(init in prop::collection::vec(desc(), 0..8),
                             ops in prop::collection::vec(op(), 1..40)) {
        run(Abi::Pv64, init, ops)?;
    }

    #[test]
    fn pv32_random_sequences(init in prop::collection::vec(desc(), 0..8),
                             ops in prop::collection::vec(op(), 1..40)) {
        run(Abi::Pv32, init, ops)?;
    }

    /// Xen's guarantees for one descriptor: see [`check_descriptor_property`].
    #[test]
    fn check_descriptor_never_lowers_privilege(d in desc(), pv32 in any::<bool>()) {
        let abi = if pv32 { Abi::Pv32 } else { Abi::Pv64 };
        check_descriptor_property(abi, d)?;
    }

    /// The same for call gates whose selector is at or near either flat
    /// kernel CS (`desc()` makes a gate to 0xe019 about once in 330,000 cases).
    #[test]
    fn check_descriptor_gates_near_the_flat_kernel_cs(
        sel in prop_oneof![Just(0xe019u64), Just(0xe033), 0xe000u64..0xe040],
        dpl in 0u64..4,
        params in 0u64..0x40,
        other in any::<u64>(),
        pv32 in any::<bool>(),
    ) {
        let abi = if pv32 { Abi::Pv32 } else { Abi::Pv64 };
        // Keep the offset bits of `other`; make it a present call gate.
        let d = (other & 0xFFFF_0000_0000_FFFF)
            | 1 << 47 | dpl << 45 | 0xC << 40 | params << 32 | sel << 16;
        check_descriptor_property(abi, d)?;
    }
}

const FIRST_RESERVED_GDT_ENTRY: u64 = 7168;

/// Xen's `guest_gate_selector_okay(d, sel)` (xen/arch/x86/include/asm/desc.h),
/// transcribed: a guest GDT index (below FIRST_RESERVED_GDT_ENTRY), or exactly
/// the flat kernel CS (FLAT_KERNEL_CS 0xe033 / FLAT_COMPAT_KERNEL_CS 0xe019,
/// RPL included), or an LDT selector (TI set).
fn gate_selector_okay(abi: Abi, sel: u64) -> bool {
    sel >> 3 < FIRST_RESERVED_GDT_ENTRY || sel == u64::from(abi.flat_kernel_cs()) || sel & 4 != 0
}

/// What Xen's `check_descriptor` (xen/arch/x86/pv/descriptor-tables.c, at
/// c447b7308b13 as in XEN-SEMANTICS.md; the macros are in
/// xen/arch/x86/include/asm/desc.h) guarantees about one descriptor `d`,
/// first as given by the guest, then for the value Xen stored when it is
/// validated again (a page that lost its seg_desc type and gets it back goes
/// through `validate_segdesc_page`, same file, which runs `check_descriptor`
/// in place on every slot).
///
/// First pass, by the branches of `check_descriptor`:
/// * P clear: stored unchanged ("A not-present descriptor will always
///   fault").
/// * Code/data (S set): `__fixup_guest_selector(dom, dpl)` raises the DPL
///   to krpl (GUEST_KERNEL_RPL: 3 pv64, 1 pv32) and never lowers it, so the
///   stored DPL is max(DPL, krpl); pv32 refuses the L bit and may only widen
///   a base-0 limit; nothing else changes.
/// * System type 0 (upper half of a 16-byte gate): stored unchanged, DPL
///   not raised (`return true` before the write-back).
/// * Other system types than 0xc: refused.
/// * Call gate: refused unless `guest_gate_selector_okay(dom, cs)` holds for
///   the raw selector and the reserved bits (0xff pv64, 0xe0 pv32) are
///   clear; stored with DPL 0 and the fixed-up DPL, max(DPL, krpl), in the
///   selector's RPL (`cs = (cs & ~3) | dpl`). Nothing else changes.
///
/// Second pass, `check_descriptor(s)` on the stored `s`: the same value
/// again (idempotent), except for pv32 call gates. Their stored DPL field
/// is 0, so the second `__fixup_guest_selector` makes dpl = 1 and
/// `cs = (cs & ~3) | dpl` resets the selector RPL to 1, whatever DPL (1..3)
/// it carried. And when the first pass accepted the selector only because
/// it was exactly FLAT_COMPAT_KERNEL_CS 0xe019 (GDT index 7171, reserved)
/// and the DPL was 2 or 3, the stored selector is 0xe01a or 0xe01b, which
/// `guest_gate_selector_okay` (exact compare, RPL included) refuses: Xen
/// rejects its own stored value. On pv64 the selector RPL is always stored
/// as 3 (krpl 3), so FLAT_KERNEL_CS 0xe033 survives and pv64 is idempotent
/// for every DPL.
///
/// Neither pass lowers privilege: a stored code/data DPL and a stored gate's
/// selector RPL are never below krpl. (The pv32 reset to 1 makes a gate
/// stricter, callable from the kernel only, never more permissive.)
fn check_descriptor_property(abi: Abi, d: u64) -> Result<(), TestCaseError> {
    let krpl = u64::from(abi.krpl());
    let pv32 = abi == Abi::Pv32;
    let dpl_bits = 3u64 << 45;
    let present = d & 1 << 47 != 0;
    let code_data = d & 1 << 44 != 0;
    let typ = (d >> 40) & 0xF;
    let dpl = (d >> 45) & 3;
    let fixed_dpl = dpl.max(krpl);
    let sel = (d >> 16) & 0xFFFF;
    let r = check_descriptor(abi, d);

    // First pass.
    if !present || (!code_data && typ == 0) {
        prop_assert_eq!(r, Ok(d));
        return Ok(());
    }
    if code_data {
        if pv32 && d & 1 << 53 != 0 {
            prop_assert_eq!(r, Err(Reject::LongModeSegmentOnPv32));
            return Ok(());
        }
        let Ok(s) = r else {
            return Err(TestCaseError::fail(format!("code/data refused: {r:?}")));
        };
        prop_assert_eq!((s >> 45) & 3, fixed_dpl);
        // pv32 may set limit bits (a[15:0], b[19:16]); nothing else changes.
        let limit_bits = if pv32 { 0xF_0000_0000_FFFF } else { 0 };
        prop_assert_eq!(s & !dpl_bits & !limit_bits, d & !dpl_bits & !limit_bits);
        prop_assert_eq!(s & limit_bits & d, d & limit_bits);
        if s & limit_bits != d & limit_bits {
            // Only a flat (base 0) page-granular segment is widened, to 4 GiB.
            let base = (d >> 16) & 0xFF_FFFF | (d >> 56) << 24;
            prop_assert!(base == 0 && d & 1 << 55 != 0 && s & limit_bits == limit_bits);
        }
        prop_assert_eq!(check_descriptor(abi, s), Ok(s), "revalidation");
        return Ok(());
    }
    if typ != 0xC {
        prop_assert!(r.is_err(), "system type {typ:#x} accepted: {r:?}");
        return Ok(());
    }
    let reserved = if pv32 { 0xE0 } else { 0xFF };
    if !gate_selector_okay(abi, sel) || (d >> 32) & reserved != 0 {
        prop_assert!(r.is_err(), "gate accepted: {r:?}");
        return Ok(());
    }
    let Ok(s) = r else {
        return Err(TestCaseError::fail(format!("gate refused: {r:?}")));
    };
    let rpl_bits = 3u64 << 16;
    prop_assert_eq!(s, (d & !dpl_bits & !rpl_bits) | fixed_dpl << 16);

    // Second pass.
    let again = check_descriptor(abi, s);
    let stored_sel = (s >> 16) & 0xFFFF;
    if !pv32 {
        prop_assert_eq!(again, Ok(s), "pv64 gate revalidation");
    } else if !gate_selector_okay(abi, stored_sel) {
        // Only the flat kernel CS with DPL 2 or 3 gets here.
        prop_assert!(sel == u64::from(abi.flat_kernel_cs()) && fixed_dpl >= 2);
        prop_assert_eq!(
            again,
            Err(Reject::GateSelector {
                selector: stored_sel as u16,
                abi
            })
        );
    } else {
        prop_assert_eq!(again, Ok((s & !rpl_bits) | krpl << 16));
    }
    Ok(())
}

/// The case from issue 14: a pv32 DPL-2 call gate to the flat kernel CS
/// 0xe019 is stored with selector 0xe01a, which Xen then refuses.
#[test]
fn pv32_flat_cs_gate_with_dpl_2_or_3_is_refused_on_revalidation() {
    let d = 0xcc00_e019_0000u64;
    let s = check_descriptor(Abi::Pv32, d).unwrap();
    assert_eq!(s, 0x8c00_e01a_0000);
    assert_eq!(
        check_descriptor(Abi::Pv32, s),
        Err(Reject::GateSelector {
            selector: 0xe01a,
            abi: Abi::Pv32
        })
    );
    let d3 = 0xec00_e019_0000u64;
    let s3 = check_descriptor(Abi::Pv32, d3).unwrap();
    assert_eq!(s3, 0x8c00_e01b_0000);
    assert!(check_descriptor(Abi::Pv32, s3).is_err());
    // DPL 0 and 1 store 0xe019 itself, which stays valid.
    for d in [0x8c00_e019_0000u64, 0xac00_e019_0000] {
        let s = check_descriptor(Abi::Pv32, d).unwrap();
        assert_eq!(s, 0x8c00_e019_0000);
        assert_eq!(check_descriptor(Abi::Pv32, s), Ok(s));
    }
    for dpl in [0u64, 1, 2, 3] {
        check_descriptor_property(Abi::Pv32, 0x8c00_e019_0000 | dpl << 45).unwrap();
    }
}

/// pv64 stores every gate's selector with RPL 3, so a gate to the flat
/// kernel CS 0xe033 revalidates unchanged whatever its DPL.
#[test]
fn pv64_flat_cs_gates_revalidate_unchanged_for_every_dpl() {
    for dpl in [0u64, 1, 2, 3] {
        let d = 0x8c00_e033_0000 | dpl << 45;
        let s = check_descriptor(Abi::Pv64, d).unwrap();
        assert_eq!(s, 0x8c00_e033_0000);
        assert_eq!(check_descriptor(Abi::Pv64, s), Ok(s));
        check_descriptor_property(Abi::Pv64, d).unwrap();
    }
}

/// pv32 revalidation resets a guest-selector gate's RPL (its DPL) to 1.
#[test]
fn pv32_gate_revalidation_resets_rpl_to_1() {
    let s = check_descriptor(Abi::Pv32, 0xec00_0010_0000).unwrap();
    assert_eq!(s, 0x8c00_0013_0000);
    assert_eq!(check_descriptor(Abi::Pv32, s), Ok(0x8c00_0011_0000));
}
