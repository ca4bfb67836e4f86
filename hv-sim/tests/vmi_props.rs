//! Property tests for hv-sim's VMI personality, for both guest kinds: after
//! every call of a sequence the model's invariants hold
//! (`VmiHypervisor::check_invariants`: no effective descriptor gives the
//! guest a privilege it must not have, the effective state agrees with the
//! guest's view outside lazy batches), a refused call changes nothing (guest
//! memory, the guest's view, the effective state, the pending batch), and
//! no call panics the simulator.
//!
//! Two generators: hostile arguments (extreme table bases, limits, indices,
//! selectors), and descriptor-shaped ones (small tables at fixed addresses,
//! descriptors and gates with chosen present/S/type/DPL bits, selectors
//! near the end of the GDT where the hypervisor's reserved entries sit),
//! which reach the interesting states far more often.
//!
//! Call numbers and ROM addresses are literals (VMI API 3.0, `asm/vmi.h`;
//! hv-sim's ROM at 0xC8000 with its jump points at +0x80 and +0x88), not
//! taken from either crate.

#[path = "common/seeds.rs"]
mod seeds;

use hv_sim::vmi::{EffectiveState, GuestKind, GuestMemory, GuestView, RamMemory, VmiHypervisor};
use proptest::prelude::*;

const RAM: u64 = 0xC100_0000;
/// VMI_Init and GetRelocationInfo jump points of hv-sim's default ROM.
const INIT: u64 = 0xC8080;
const GET_RELOC: u64 = 0xC8088;

// VMI API 3.0 call numbers (Linux asm/vmi.h).
const SET_GDT: u32 = 3;
const SET_LDT: u32 = 4;
const SET_IDT: u32 = 5;
const SET_TR: u32 = 6;
const GET_GDT: u32 = 7;
const GET_LDT: u32 = 8;
const GET_IDT: u32 = 9;
const GET_TR: u32 = 10;
const WRITE_GDT_ENTRY: u32 = 11;
const WRITE_LDT_ENTRY: u32 = 12;
const WRITE_IDT_ENTRY: u32 = 13;
const UPDATE_KERNEL_STACK: u32 = 14;
const SET_LAZY_MODE: u32 = 73;

const CALLS: [u32; 13] = [
    SET_GDT,
    SET_LDT,
    SET_IDT,
    SET_TR,
    GET_GDT,
    GET_LDT,
    GET_IDT,
    GET_TR,
    WRITE_GDT_ENTRY,
    WRITE_LDT_ENTRY,
    WRITE_IDT_ENTRY,
    UPDATE_KERNEL_STACK,
    SET_LAZY_MODE,
];

type Hv = VmiHypervisor<RamMemory>;

const RAM_SIZE: usize = 0x10000;

fn machine(kind: GuestKind) -> Hv {
    let hv = VmiHypervisor::new(kind, RamMemory::new(RAM, RAM_SIZE));
    assert_eq!(hv.call_entry(INIT, [0; 4]), 0);
    hv
}

/// Everything a call may change: guest RAM, the guest's view, the
/// effective state and the pending lazy batch.
fn snapshot(hv: &Hv) -> (Vec<u8>, GuestView, EffectiveState, Vec<String>) {
    let mut ram = vec![0; RAM_SIZE];
    assert!(hv.memory().read(RAM, &mut ram));
    (ram, hv.guest(), hv.effective(), hv.pending())
}

/// Call `nr` through the entry its relocation answer names, then check the
/// invariants, and that a refused call changed nothing (no half-applied
/// failure); Err = the violation, with the trace.
fn call_and_check(hv: &Hv, nr: u32, args: [u64; 4]) -> Result<(), TestCaseError> {
    let before = snapshot(hv);
    let (eip, _) = hv.reloc_query(GET_RELOC, nr);
    let r = hv.call_entry(eip, args) as i64;
    if let Err(e) = hv.check_invariants() {
        return Err(TestCaseError::fail(format!(
            "invariant broken after call {nr}{args:x?}: {e}\n{}",
            hv.trace()
        )));
    }
    if (-4095..0).contains(&r) {
        let after = snapshot(hv);
        let what = if before.0 != after.0 {
            "guest memory"
        } else if before.1 != after.1 {
            "the guest's view"
        } else if before.2 != after.2 {
            "the effective state"
        } else if before.3 != after.3 {
            "the pending lazy batch"
        } else {
            return Ok(());
        };
        return Err(TestCaseError::fail(format!(
            "call {nr}{args:x?} refused with {r} but changed {what}\n{}",
            hv.trace()
        )));
    }
    Ok(())
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(0xffff_ffff_ffff_f000),
        Just(0x0000_7fff_ffff_f000),
        Just(0xffff_8000_0000_0000),
        Just(0xffff_ffff),
        Just(0xffff_f000),
        Just(RAM),
        // Tables straddling the start or end of guest memory: the first
        // or last 8 bytes of a 16-byte entry outside it.
        Just(RAM - 8),
        Just(RAM - 16),
        Just(RAM + 0xfff8),
        (0u64..0x10000).prop_map(|o| RAM + o),
        any::<u64>(),
    ]
}

fn run(kind: GuestKind, ops: &[(usize, [u64; 4], u64, u64)]) -> Result<(), TestCaseError> {
    let hv = machine(kind);
    for &(which, args, dtr_base, dtr_limit) in ops {
        // Plant a table-pointer operand at the start of RAM so SetGDT/SetIDT
        // read hostile bases and limits, and point arg 0 at it half the time.
        hv.memory()
            .write_u64(RAM, (dtr_limit & 0xffff) | (dtr_base << 16));
        hv.memory().write_u64(RAM + 8, dtr_base >> 48);
        let nr = CALLS[which % CALLS.len()];
        let mut a = args;
        if which % 2 == 0 {
            a[0] = RAM;
        }
        call_and_check(&hv, nr, a)?;
    }
    Ok(())
}

// ---- Descriptor-shaped sequences ----

const GDT: u64 = RAM + 0x1000;
const IDT: u64 = RAM + 0x2000;
const LDT: u64 = RAM + 0x3000;
const DTR: u64 = RAM + 0x4000;
const OUT: u64 = RAM + 0x4100;
const TSS: u64 = RAM + 0x5000;

/// An 8-byte descriptor: P, S, type, DPL and L chosen, base/limit bits
/// random, or fully random, or zero.
fn descriptor() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (any::<u64>(), any::<bool>(), any::<bool>(), 0u64..16, 0u64..4, any::<bool>()).prop_map(
            |(bits, p, s, typ, dpl, l)| {
                let keep = !((0xFF << 40) | (1 << 53));
                (bits & keep)
                    | (u64::from(p) << 47)
                    | (u64::from(s) << 44)
                    | (typ << 40)
                    | (dpl << 45)
                    | (u64::from(l) << 53)
            }
        ),
        1 => Just(0u64),
        1 => any::<u64>(),
    ]
}

/// A gate's low 8 bytes (type interrupt/trap mostly, selector near the
/// start or the end of a small GDT) and a high half.
fn gate() -> impl Strategy<Value = (u64, u64)> {
    (
        any::<u64>(),
        any::<bool>(),
        prop_oneof![4 => 0xEu64..0x10, 1 => Just(0x5u64), 1 => Just(0xCu64)],
        0u64..4,
        0u64..72,
        0u64..4,
        prop_oneof![3 => Just(0u64), 1 => Just(0xffff_ffffu64), 1 => any::<u64>()],
    )
        .prop_map(|(off, p, typ, dpl, index, rpl, high)| {
            let low = (off & 0xFFFF)
                | (((index << 3) | rpl) << 16)
                | (typ << 40)
                | (dpl << 45)
                | (u64::from(p) << 47)
                | ((off & 0xFFFF_0000) << 32);
            (low, high)
        })
}

/// A 16-byte TSS/LDT descriptor for the TSS/LDT areas (present or not).
fn system_pair() -> impl Strategy<Value = (u64, u64)> {
    (
        prop_oneof![Just(0x2u64), Just(0x9u64), Just(0xBu64)],
        any::<bool>(),
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(|(typ, p, high)| {
            let base = if typ == 0x2 { LDT } else { TSS };
            let limit = if typ == 0x2 { 8 * 8 - 1 } else { 0x67 };
            let low = limit
                | ((base & 0xFF_FFFF) << 16)
                | (typ << 40)
                | (u64::from(p) << 47)
                | ((base & 0xFF00_0000) << 32);
            (low, high)
        })
}

#[derive(Clone, Debug)]
enum Op {
    /// The guest writes its own table natively (no call).
    Poke { table: u64, index: u64, value: u64 },
    /// SetGDT / SetIDT with a table of `entries` at the fixed address.
    Load { idt: bool, entries: u64 },
    /// SetLDT / SetTR with a small selector.
    Select { tr: bool, selector: u64 },
    /// WriteGDTEntry / WriteLDTEntry of a descriptor.
    WriteDesc {
        ldt: bool,
        index: u64,
        low: u64,
        high: u64,
    },
    /// WriteIDTEntry of a gate.
    WriteGate { vector: u64, low: u64, high: u64 },
    /// GetGDT / GetIDT / GetLDT / GetTR.
    Get { which: u32 },
    /// UpdateKernelStack.
    Stack { selector: u64, sp0: u64 },
    /// SetLazyMode.
    Lazy { mode: u64 },
}

/// A table index: mostly among the first entries (where small tables and
/// each other's descriptors are), sometimes anywhere up to 72.
fn index() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..20, 1 => 0u64..72]
}

fn op() -> impl Strategy<Value = Op> {
    let table = prop_oneof![Just(GDT), Just(IDT), Just(LDT)];
    prop_oneof![
        3 => (table, index(), descriptor()).prop_map(|(table, index, value)| Op::Poke { table, index, value }),
        1 => (index(), system_pair()).prop_map(|(index, (low, high))| Op::WriteDesc { ldt: false, index, low, high }),
        2 => (any::<bool>(), prop_oneof![Just(1u64), Just(4), Just(8), Just(16), Just(64), Just(256)])
            .prop_map(|(idt, entries)| Op::Load { idt, entries }),
        1 => (any::<bool>(), 0u64..0x240).prop_map(|(tr, selector)| Op::Select { tr, selector }),
        3 => (any::<bool>(), index(), descriptor(), prop_oneof![3 => Just(0u64), 1 => descriptor()])
            .prop_map(|(ldt, index, low, high)| Op::WriteDesc { ldt, index, low, high }),
        3 => (index(), gate()).prop_map(|(vector, (low, high))| Op::WriteGate { vector, low, high }),
        1 => prop_oneof![Just(GET_GDT), Just(GET_IDT), Just(GET_LDT), Just(GET_TR)].prop_map(|which| Op::Get { which }),
        1 => (0u64..0x240, prop_oneof![Just(RAM + 0x8000), Just(1u64 << 47), any::<u64>()])
            .prop_map(|(selector, sp0)| Op::Stack { selector, sp0 }),
        1 => prop_oneof![3 => 0u64..3, 1 => Just(3u64)].prop_map(|mode| Op::Lazy { mode }),
    ]
}

/// A descriptor as the call's argument registers: whole for a 64-bit guest
/// (the high half in rcx), two 32-bit words for a 32-bit guest.
fn words(kind: GuestKind, low: u64, high: u64) -> (u64, u64) {
    match kind {
        GuestKind::Vmi64 => (low, high),
        GuestKind::Vmi32 => (low & 0xffff_ffff, low >> 32),
    }
}

fn write_dtr(hv: &Hv, kind: GuestKind, limit: u64, base: u64) {
    hv.memory().write_u64(DTR, (limit & 0xffff) | (base << 16));
    let rest = match kind {
        GuestKind::Vmi64 => base >> 48,
        GuestKind::Vmi32 => 0,
    };
    hv.memory().write_u64(DTR + 8, rest);
}

fn run_shaped(kind: GuestKind, ops: &[Op]) -> Result<(), TestCaseError> {
    let hv = machine(kind);
    let gs = match kind {
        GuestKind::Vmi64 => 16,
        GuestKind::Vmi32 => 8,
    };
    for op in ops {
        let (nr, args) = match *op {
            Op::Poke {
                table,
                index,
                value,
            } => {
                hv.memory().write_u64(table + index * 8, value);
                continue;
            }
            Op::Load {
                idt: false,
                entries,
            } => {
                write_dtr(&hv, kind, entries * 8 - 1, GDT);
                (SET_GDT, [DTR, 0, 0, 0])
            }
            Op::Load { idt: true, entries } => {
                write_dtr(&hv, kind, entries * gs - 1, IDT);
                (SET_IDT, [DTR, 0, 0, 0])
            }
            Op::Select { tr, selector } => (if tr { SET_TR } else { SET_LDT }, [selector, 0, 0, 0]),
            Op::WriteDesc {
                ldt,
                index,
                low,
                high,
            } => {
                let (nr, base) = if ldt {
                    (WRITE_LDT_ENTRY, LDT)
                } else {
                    (WRITE_GDT_ENTRY, GDT)
                };
                let (a, b) = words(kind, low, high);
                (nr, [base, index, a, b])
            }
            Op::WriteGate { vector, low, high } => {
                let (a, b) = words(kind, low, high);
                (WRITE_IDT_ENTRY, [IDT, vector, a, b])
            }
            Op::Get { which } => (which, [OUT, 0, 0, 0]),
            Op::Stack { selector, sp0 } => (UPDATE_KERNEL_STACK, [selector, sp0, 0, 0]),
            Op::Lazy { mode } => (SET_LAZY_MODE, [mode, 0, 0, 0]),
        };
        call_and_check(&hv, nr, args)?;
    }
    // Leaving lazy mode applies the batch: the invariants hold after it too.
    call_and_check(&hv, SET_LAZY_MODE, [0; 4])
}

seeds::seeded_proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_after_every_hostile_call_vmi64(ops in prop::collection::vec(
        (any::<usize>(), [interesting_u64(), interesting_u64(), interesting_u64(), interesting_u64()],
         interesting_u64(), interesting_u64()), 1..24)) {
        run(GuestKind::Vmi64, &ops)?;
    }

    #[test]
    fn invariants_hold_after_every_hostile_call_vmi32(ops in prop::collection::vec(
        (any::<usize>(), [interesting_u64(), interesting_u64(), interesting_u64(), interesting_u64()],
         interesting_u64(), interesting_u64()), 1..24)) {
        run(GuestKind::Vmi32, &ops)?;
    }

    #[test]
    fn invariants_hold_after_every_descriptor_call_vmi64(ops in prop::collection::vec(op(), 1..40)) {
        run_shaped(GuestKind::Vmi64, &ops)?;
    }

    #[test]
    fn invariants_hold_after_every_descriptor_call_vmi32(ops in prop::collection::vec(op(), 1..40)) {
        run_shaped(GuestKind::Vmi32, &ops)?;
    }
}

/// The case the review found: SetGDT with a base near the top of the
/// address space and a full 64 KiB limit used to overflow `base + limit`.
#[test]
fn set_gdt_at_the_top_of_the_address_space_is_refused_not_a_panic() {
    let hv = machine(GuestKind::Vmi64);
    hv.memory()
        .write_u64(RAM, 0xffff | (0xffff_ffff_ffff_f000u64 << 16));
    hv.memory()
        .write_u64(RAM + 8, 0xffff_ffff_ffff_f000u64 >> 48);
    let (eip, _) = hv.reloc_query(GET_RELOC, SET_GDT);
    let r = hv.call_entry(eip, [RAM, 0, 0, 0]) as i64;
    assert!(r < 0, "refused with an errno, got {r}");
    hv.check_invariants().unwrap();
}
