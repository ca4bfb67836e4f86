//! Encode/decode round trips for every descriptor kind (proptest).
//!
//! Each kind is checked both ways: raw bits → fields → raw bits is the
//! identity for every bit pattern, and fields → raw → fields is the identity
//! for every in-range field set.

// The workspace's one seed helper (fixed seeds plus one printed random seed).
#[path = "../../hv-sim/tests/common/seeds.rs"]
mod seeds;

use proptest::prelude::*;
use pvops::selector::ring_from_bits;
use pvops::*;

/// Table pages below this hold a whole 64 KiB GDT at a valid linear
/// address: 2^40 bytes on x86_64; on i686, the table must end below 4 GiB.
const MAX_TABLE_PAGE: u64 = if cfg!(target_arch = "x86_64") {
    0x1000_0000
} else {
    (1 << 20) - 16
};

fn ring() -> impl Strategy<Value = Ring> {
    (0u8..4).prop_map(ring_from_bits)
}

prop_compose! {
    fn descriptor_fields()(base in any::<u32>(), limit in 0u32..=0xf_ffff, typ in 0u8..16,
        s in any::<bool>(), dpl in ring(), p in any::<bool>(), avl in any::<bool>(),
        l in any::<bool>(), db in any::<bool>(), g in any::<bool>()) -> DescriptorFields {
        DescriptorFields { base, limit, typ, code_or_data: s, dpl, present: p, avl,
            long_mode: l, default_big: db, granularity: g }
    }
}

prop_compose! {
    fn system_fields()(base in any::<u64>(), limit in 0u32..=0xf_ffff, typ in 0u8..16,
        dpl in ring(), p in any::<bool>(), avl in any::<bool>(), g in any::<bool>(),
        low_reserved in 0u8..8, high_reserved in any::<u32>()) -> SystemDescriptorFields {
        SystemDescriptorFields { base, limit, typ, dpl, present: p, avl, granularity: g,
            low_reserved, high_reserved }
    }
}

prop_compose! {
    fn gate32_fields()(offset in any::<u32>(), sel in any::<u16>(), byte4 in any::<u8>(),
        typ in 0u8..16, s in any::<bool>(), dpl in ring(), p in any::<bool>()) -> Gate32Fields {
        Gate32Fields { offset, selector: Selector(sel), byte4, typ, s, dpl, present: p }
    }
}

prop_compose! {
    fn gate64_fields()(offset in any::<u64>(), sel in any::<u16>(), byte4 in any::<u8>(),
        typ in 0u8..16, s in any::<bool>(), dpl in ring(), p in any::<bool>(),
        high_reserved in any::<u32>()) -> Gate64Fields {
        Gate64Fields { offset, selector: Selector(sel), byte4, typ, s, dpl, present: p, high_reserved }
    }
}

seeds::seeded_proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn descriptor_bits_round_trip(raw in any::<u64>()) {
        let d = Descriptor(raw);
        prop_assert_eq!(Descriptor::from_fields(d.fields()), Ok(d));
        let (lo, hi) = d.words();
        prop_assert_eq!(Descriptor::from_words(lo, hi), d);
    }

    #[test]
    fn descriptor_fields_round_trip(f in descriptor_fields()) {
        let d = Descriptor::from_fields(f).unwrap();
        prop_assert_eq!(d.fields(), f);
        prop_assert_eq!(d.base(), f.base);
        prop_assert_eq!(d.dpl(), f.dpl);
        let expect_limit = if f.granularity { (f.limit << 12) | 0xfff } else { f.limit };
        prop_assert_eq!(d.effective_limit(), expect_limit);
    }

    #[test]
    fn descriptor_out_of_range_fields_are_errors(f in descriptor_fields(), big in 0x10_0000u32.., t in 16u8..) {
        let big_limit = DescriptorFields { limit: big, ..f };
        let big_type = DescriptorFields { typ: t, ..f };
        let r1 = Descriptor::from_fields(big_limit);
        let r2 = Descriptor::from_fields(big_type);
        let ok1 = matches!(r1, Err(PvError::FieldOutOfRange { field: "limit", .. }));
        let ok2 = matches!(r2, Err(PvError::FieldOutOfRange { field: "type", .. }));
        prop_assert!(ok1, "{:?}", r1);
        prop_assert!(ok2, "{:?}", r2);
    }

    #[test]
    fn system_descriptor_bits_round_trip(low in any::<u64>(), high in any::<u64>()) {
        let d = SystemDescriptor { low, high };
        prop_assert_eq!(SystemDescriptor::from_fields(d.fields()), Ok(d));
    }

    #[test]
    fn system_descriptor_fields_round_trip(f in system_fields()) {
        let d = SystemDescriptor::from_fields(f).unwrap();
        prop_assert_eq!(d.fields(), f);
        prop_assert_eq!(d.base(), f.base);
    }

    #[test]
    fn tss_and_ldt_constructors(base in any::<u64>(), entries in 1u32..=8192) {
        let t = SystemDescriptor::tss(base, pvops::Tss64::LIMIT).unwrap();
        prop_assert_eq!(t.base(), base);
        prop_assert_eq!(t.system_type(), SystemType::Tss);
        prop_assert_eq!(t.effective_limit(), 0x67);
        prop_assert_eq!((t.high >> 40) & 0x1f, 0, "upper half type must be 0");
        let l = SystemDescriptor::ldt(base, entries).unwrap();
        prop_assert_eq!(l.system_type(), SystemType::Ldt);
        prop_assert_eq!(l.effective_limit(), entries * 8 - 1);
    }

    #[test]
    fn gate32_bits_round_trip(raw in any::<u64>()) {
        prop_assert_eq!(Gate32::from_fields(Gate32(raw).fields()), Ok(Gate32(raw)));
    }

    #[test]
    fn gate32_fields_round_trip(f in gate32_fields()) {
        prop_assert_eq!(Gate32::from_fields(f).unwrap().fields(), f);
    }

    #[test]
    fn gate64_bits_round_trip(low in any::<u64>(), high in any::<u64>()) {
        let g = Gate64 { low, high };
        prop_assert_eq!(Gate64::from_fields(g.fields()), Ok(g));
    }

    #[test]
    fn gate64_fields_round_trip(f in gate64_fields()) {
        prop_assert_eq!(Gate64::from_fields(f).unwrap().fields(), f);
    }

    #[test]
    fn gate64_constructors(sel in any::<u16>(), off in any::<u64>(), dpl in ring(), ist in 0u8..8) {
        for (kind, g) in [
            (GateKind::Interrupt, Gate64::interrupt(Selector(sel), off, dpl)),
            (GateKind::Trap, Gate64::trap(Selector(sel), off, dpl)),
        ] {
            prop_assert_eq!(g.kind(), Some(kind));
            prop_assert_eq!(g.offset(), off);
            prop_assert_eq!(g.selector(), Selector(sel));
            prop_assert_eq!(g.dpl(), dpl);
            prop_assert!(g.present());
            let gi = g.with_ist(ist).unwrap();
            prop_assert_eq!(gi.ist(), ist);
            prop_assert_eq!(gi.offset(), off);
            prop_assert_eq!(Gate64::new(kind, Selector(sel), off, dpl), Ok(g));
        }
        let c = Gate64::call(Selector(sel), off, dpl);
        prop_assert_eq!(c.kind(), Some(GateKind::Call));
        prop_assert_eq!(c.with_ist(1), Err(PvError::IstOnNonInterruptGate));
    }

    #[test]
    fn gate32_constructors(sel in any::<u16>(), off in any::<u32>(), dpl in ring(), params in 0u8..32) {
        let c = Gate32::call(Selector(sel), off, dpl, params).unwrap();
        prop_assert_eq!((c.kind(), c.offset(), c.selector(), c.param_count(), c.dpl()),
            (Some(GateKind::Call), off, Selector(sel), params, dpl));
        let i = Gate32::interrupt(Selector(sel), off, dpl);
        prop_assert_eq!((i.kind(), i.offset()), (Some(GateKind::Interrupt), off));
        let t = Gate32::trap(Selector(sel), off, dpl);
        prop_assert_eq!(t.kind(), Some(GateKind::Trap));
    }

    #[test]
    fn selector_round_trip(raw in any::<u16>()) {
        let s = Selector(raw);
        prop_assert_eq!(Selector::new(s.index(), s.ti(), s.rpl()), s);
    }

    #[test]
    fn table_pointer_operands_round_trip(limit in any::<u16>(), base in any::<u64>()) {
        let p = DescriptorTablePointer { limit, base };
        prop_assert_eq!(DescriptorTablePointer::from(DtPtr64::from_bytes(p.to_packed64().to_bytes())), p);
        let p32 = DescriptorTablePointer { limit, base: base & 0xffff_ffff };
        prop_assert_eq!(DescriptorTablePointer::from(DtPtr32::from_bytes(p32.to_packed32().to_bytes())), p32);
    }

    #[test]
    fn gdt_pointer_round_trip(entries in 1u32..=8192, page in 0u64..MAX_TABLE_PAGE) {
        let g = Gdt::new(page * 4096, entries).unwrap();
        prop_assert_eq!(Gdt::from_pointer(g.pointer()), Ok(g));
        prop_assert_eq!(g.pointer().entries(8), entries);
    }
}
