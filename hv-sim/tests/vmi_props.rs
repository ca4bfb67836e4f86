//! Property tests for hv-sim's VMI personality: no sequence of calls with
//! hostile arguments (extreme table bases, limits, indices, selectors)
//! panics the simulator, for both guest kinds, and every call answers.

#[path = "common/seeds.rs"]
mod seeds;

use hv_sim::vmi::{GuestKind, RamMemory, VmiHypervisor};
use proptest::prelude::*;
use pvops_vmi::{VmiPlatform, call};

const RAM: u64 = 0xC100_0000;

fn machine(kind: GuestKind) -> VmiHypervisor<RamMemory> {
    let hv = VmiHypervisor::new(kind, RamMemory::new(RAM, 0x10000));
    let rom = pvops_vmi::rom::probe(&hv).expect("hv-sim's ROM probes");
    // SAFETY: hv-sim's ROM; calls only touch the simulated RAM.
    unsafe { hv.call(rom.init_entry(), [0; 4]) };
    hv
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
        Just(RAM + 0xfff8),
        (0u64..0x10000).prop_map(|o| RAM + o),
        any::<u64>(),
    ]
}

const CALLS: [u32; 13] = [
    call::SET_GDT,
    call::SET_LDT,
    call::SET_IDT,
    call::SET_TR,
    call::GET_GDT,
    call::GET_LDT,
    call::GET_IDT,
    call::GET_TR,
    call::WRITE_GDT_ENTRY,
    call::WRITE_LDT_ENTRY,
    call::WRITE_IDT_ENTRY,
    call::UPDATE_KERNEL_STACK,
    call::SET_LAZY_MODE,
];

fn run(kind: GuestKind, ops: &[(usize, [u64; 4], u64, u64)]) {
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
        // SAFETY: hv-sim's ROM over simulated RAM: any argument is data.
        unsafe {
            let (eip, _) = hv.get_reloc(0xC8088, nr);
            let _ = hv.call(eip, a);
        }
    }
}

seeds::seeded_proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_call_sequence_panics_vmi64(ops in prop::collection::vec(
        (any::<usize>(), [interesting_u64(), interesting_u64(), interesting_u64(), interesting_u64()],
         interesting_u64(), interesting_u64()), 1..24)) {
        run(GuestKind::Vmi64, &ops);
    }

    #[test]
    fn no_call_sequence_panics_vmi32(ops in prop::collection::vec(
        (any::<usize>(), [interesting_u64(), interesting_u64(), interesting_u64(), interesting_u64()],
         interesting_u64(), interesting_u64()), 1..24)) {
        run(GuestKind::Vmi32, &ops);
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
    // SAFETY: as above.
    let r = unsafe {
        let (eip, _) = hv.get_reloc(0xC8088, call::SET_GDT);
        hv.call(eip, [RAM, 0, 0, 0]) as i64
    };
    assert!(r < 0, "refused with an errno, got {r}");
}
