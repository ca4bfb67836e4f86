//! Property tests: no sequence of hypercalls (well-formed or random) leaves
//! a live GDT/LDT code/data descriptor below the guest kernel's ring, makes
//! a live descriptor page writable, breaks the type counts, or panics the
//! simulator (non-strict mode).

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

proptest! {
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

    #[test]
    fn check_descriptor_never_lowers_privilege(d in desc(), pv32 in any::<bool>()) {
        let abi = if pv32 { Abi::Pv32 } else { Abi::Pv64 };
        if let Ok(s) = check_descriptor(abi, d) {
            let present = s & 1 << 47 != 0;
            if present && s & 1 << 44 != 0 {
                prop_assert!((s >> 45) & 3 >= u64::from(abi.krpl()));
                if pv32 { prop_assert!(s & 1 << 53 == 0); }
            }
            if present && s & 1 << 44 == 0 {
                let t = (s >> 40) & 0xF;
                prop_assert!(t == 0 || t == 0xC, "type {t:#x}");
                if t == 0xC {
                    prop_assert_eq!((s >> 45) & 3, 0);
                    prop_assert!((s >> 16) & 3 >= u64::from(abi.krpl()));
                }
            }
            // Xen accepts what it stored. It is stored unchanged again except
            // for pv32 call gates: their DPL field is 0 after the rewrite, so
            // a second pass puts krpl (1) in the selector RPL, not the
            // original DPL.
            let again = check_descriptor(abi, s);
            let gate = present && s & 1 << 44 == 0 && (s >> 40) & 0xF == 0xC;
            if pv32 && gate {
                prop_assert_eq!(again, Ok((s & !(3 << 16)) | 1 << 16));
            } else {
                prop_assert_eq!(again, Ok(s));
            }
        }
    }
}
