//! Fuzz target: hv-sim's VMI personality, both guest kinds.
//!
//! A case is a fresh personality over 32 KiB of RAM (at 0xC100_0000, below
//! 4 GiB so both kinds can address it), usually initialised, and up to 48
//! steps: the guest writing its own tables (descriptors, gates, DTR
//! operands), any VMI call (the 13 implemented ones mostly, any number
//! sometimes) with table-shaped or hostile arguments, entered directly, or
//! through the ROM: the relocation query and then the stub it names (or an
//! arbitrary entry address), and changed relocation answers.
//!
//! After every call: no panic; `VmiHypervisor::check_invariants`; and a
//! refused call (`-errno`) changed nothing: not guest memory, the guest's
//! view, the effective state or the pending lazy batch (the personality
//! applies every call all or nothing).

use super::{CaseStats, Source, descriptor, int, selector};
use crate::vmi::abi::call;
use crate::vmi::{
    EffectiveState, GuestKind, GuestMemory, GuestView, RamMemory, Reloc, VmiHypervisor,
};

const RAM: u64 = 0xC100_0000;
const RAM_SIZE: usize = 0x8000;
const GDT: u64 = RAM + 0x1000;
const IDT: u64 = RAM + 0x2000;
const LDT: u64 = RAM + 0x3000;
const DTR: u64 = RAM + 0x4000;
const OUT: u64 = RAM + 0x4100;
const TSS: u64 = RAM + 0x5000;
const STACK: u64 = RAM + 0x7000;

type Hv = VmiHypervisor<RamMemory>;

/// An address: one of the tables', the edges of RAM, or anything.
fn addr(s: &mut Source) -> u64 {
    match s.below(8) {
        0 => s.pick(&[GDT, IDT, LDT, DTR, OUT, TSS, STACK]),
        1 => s.pick(&[
            RAM,
            RAM - 8,
            RAM - 16,
            RAM + RAM_SIZE as u64 - 8,
            RAM + RAM_SIZE as u64,
        ]),
        2..=4 => RAM + s.below(RAM_SIZE as u64),
        _ => int(s),
    }
}

/// A table index: small mostly, near the hypervisor's reserved entries
/// sometimes, anything rarely.
fn index(s: &mut Source) -> u64 {
    match s.below(8) {
        0..=4 => s.below(20),
        5 | 6 => s.below(72),
        _ => int(s),
    }
}

/// A gate: low half with a type, DPL, P and a selector near the start or
/// end of a small GDT; a high half.
fn gate(s: &mut Source) -> (u64, u64) {
    let off = s.word();
    let any = s.below(16);
    let typ = s.pick(&[0xe, 0xf, 0xe, 0xf, 0x5, 0xc, 0x6, 0x7, any]);
    let dpl = s.below(4);
    let p = u64::from(s.chance(7, 8));
    let sel = if s.chance(1, 2) {
        (s.below(72) << 3) | s.below(4)
    } else {
        selector(s)
    };
    let low =
        (off & 0xFFFF) | sel << 16 | typ << 40 | dpl << 45 | p << 47 | ((off & 0xFFFF_0000) << 32);
    let high = match s.below(4) {
        0 | 1 => 0,
        2 => 0xffff_ffff,
        _ => s.word(),
    };
    (low, high)
}

/// A 16-byte TSS or LDT descriptor for the TSS/LDT areas.
fn system_pair(s: &mut Source) -> (u64, u64) {
    let typ = s.pick(&[0x2u64, 0x9, 0xB, 0x1, 0x3]);
    let p = u64::from(s.chance(7, 8));
    let dpl = if s.chance(3, 4) { 0 } else { s.below(4) };
    let base = if typ == 2 { LDT } else { TSS };
    let limit = if typ == 0x2 { 8 * 8 - 1 } else { 0x67 };
    let low = limit
        | ((base & 0xFF_FFFF) << 16)
        | typ << 40
        | dpl << 45
        | p << 47
        | ((base & 0xFF00_0000) << 32);
    let high = if s.chance(3, 4) { base >> 32 } else { s.word() };
    (low, high)
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

type Snap = (Vec<u8>, GuestView, EffectiveState, Vec<String>);

fn snapshot(hv: &Hv) -> Snap {
    let mut ram = vec![0; RAM_SIZE];
    // The whole RAM is readable by construction.
    let _ = hv.memory().read(RAM, &mut ram);
    (ram, hv.guest(), hv.effective(), hv.pending())
}

/// The call and its arguments for one step.
fn call_args(hv: &Hv, kind: GuestKind, s: &mut Source) -> (u32, [u64; 4]) {
    let gs = kind.gate_size();
    match s.below(14) {
        0 => {
            let entries = s.pick(&[1u64, 2, 4, 8, 16, 64, 256, 0x2000]);
            let base = if s.chance(7, 8) { GDT } else { addr(s) };
            let limit = if s.chance(7, 8) {
                entries * 8 - 1
            } else {
                int(s)
            };
            write_dtr(hv, kind, limit, base);
            (call::SET_GDT, [DTR, 0, 0, 0])
        }
        1 => {
            let entries = s.pick(&[1u64, 2, 15, 32, 256, 257]);
            let base = if s.chance(7, 8) { IDT } else { addr(s) };
            let limit = if s.chance(7, 8) {
                entries * gs - 1
            } else {
                int(s)
            };
            write_dtr(hv, kind, limit, base);
            (call::SET_IDT, [DTR, 0, 0, 0])
        }
        2 => (
            call::SET_LDT,
            [
                if s.chance(3, 4) {
                    s.below(0x240)
                } else {
                    selector(s)
                },
                0,
                0,
                0,
            ],
        ),
        3 => (
            call::SET_TR,
            [
                if s.chance(3, 4) {
                    s.below(0x240)
                } else {
                    selector(s)
                },
                0,
                0,
                0,
            ],
        ),
        4 => {
            let nr = s.pick(&[call::GET_GDT, call::GET_IDT, call::GET_LDT, call::GET_TR]);
            (nr, [if s.chance(7, 8) { OUT } else { addr(s) }, 0, 0, 0])
        }
        5 | 6 => {
            let ldt = s.chance(1, 3);
            let (low, high) = if !ldt && s.chance(1, 4) {
                system_pair(s)
            } else {
                let high = if s.chance(3, 4) { 0 } else { descriptor(s) };
                (descriptor(s), high)
            };
            let (a, b) = words(kind, low, high);
            let (nr, base) = if ldt {
                (call::WRITE_LDT_ENTRY, LDT)
            } else {
                (call::WRITE_GDT_ENTRY, GDT)
            };
            let base = if s.chance(7, 8) { base } else { addr(s) };
            (nr, [base, index(s), a, b])
        }
        7 | 8 => {
            let (low, high) = gate(s);
            let (a, b) = words(kind, low, high);
            let base = if s.chance(7, 8) { IDT } else { addr(s) };
            (call::WRITE_IDT_ENTRY, [base, index(s), a, b])
        }
        9 => {
            let sel = if s.chance(1, 2) {
                s.below(0x240)
            } else {
                selector(s)
            };
            let sp = match s.below(4) {
                0 | 1 => STACK,
                2 => 1 << 47,
                _ => int(s),
            };
            (call::UPDATE_KERNEL_STACK, [sel, sp, 0, 0])
        }
        10 => (
            call::SET_LAZY_MODE,
            [if s.chance(7, 8) { s.below(4) } else { int(s) }, 0, 0, 0],
        ),
        11 => (
            s.below(80) as u32,
            [addr(s), index(s), descriptor(s), descriptor(s)],
        ),
        12 => (s.word() as u32, [int(s), int(s), int(s), int(s)]),
        _ => (
            s.pick(&crate::vmi::abi::call::IMPLEMENTED),
            [addr(s), int(s), descriptor(s), int(s)],
        ),
    }
}

/// One case (see the module documentation).
pub(crate) fn case(kind: GuestKind, s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let hv = VmiHypervisor::new(kind, RamMemory::new(RAM, RAM_SIZE));
    const INIT: u64 = crate::vmi::DEFAULT_ROM_BASE + 0x80;
    const GET_RELOC: u64 = crate::vmi::DEFAULT_ROM_BASE + 0x88;
    if s.chance(15, 16) {
        st.calls += 1;
        hv.call_entry(INIT, [0; 4]);
    }
    let steps = s.range(1, 48);
    for step in 0..steps {
        match s.below(10) {
            // The guest writes its own tables.
            0 | 1 => {
                let table = s.pick(&[GDT, IDT, LDT, TSS]);
                let v = if s.chance(1, 3) {
                    let (lo, hi) = gate(s);
                    if s.chance(1, 2) { lo } else { hi }
                } else {
                    descriptor(s)
                };
                hv.memory().write_u64(table + (index(s) % 64) * 8, v);
                continue;
            }
            // Change a relocation answer.
            2 if s.chance(1, 4) => {
                let nr = if s.chance(3, 4) {
                    s.pick(&call::IMPLEMENTED)
                } else {
                    s.below(80) as u32
                };
                hv.set_answer(nr, s.pick(&Reloc::ALL));
                continue;
            }
            _ => {}
        }
        let (nr, args) = call_args(&hv, kind, s);
        let before = snapshot(&hv);
        let via = s.below(4);
        st.calls += 1;
        let r = match via {
            // Through the relocation answer's stub, as the backend calls.
            0 | 1 => {
                let (eip, _) = hv.reloc_query(GET_RELOC, nr);
                st.calls += 1;
                hv.call_entry(eip, args) as i64
            }
            // An arbitrary entry address.
            2 if s.chance(1, 8) => {
                let e = if s.chance(1, 2) {
                    crate::vmi::DEFAULT_ROM_BASE + s.below(0x1000)
                } else {
                    int(s)
                };
                hv.call_entry(e, args) as i64
            }
            _ => hv.vmi_call(nr, args) as i64,
        };
        st.outcome(u64::from(nr.min(128)), r);
        st.checks += 1;
        let what = format!("step {step}: call {nr} {args:x?} = {r}");
        if let Err(e) = hv.check_invariants() {
            return Err(format!("{what}: invariant broken: {e}"));
        }
        if (-4095..0).contains(&r) {
            st.checks += 1;
            let after = snapshot(&hv);
            let changed = if before.0 != after.0 {
                Some("guest memory")
            } else if before.1 != after.1 {
                Some("the guest's view")
            } else if before.2 != after.2 {
                Some("the effective state")
            } else if before.3 != after.3 {
                Some("the pending lazy batch")
            } else {
                None
            };
            if let Some(c) = changed {
                return Err(format!("{what}: refused but changed {c}"));
            }
        }
    }
    // Leaving lazy mode applies the batch: the invariants hold after it.
    st.calls += 1;
    st.checks += 1;
    hv.vmi_call(call::SET_LAZY_MODE, [0; 4]);
    hv.check_invariants()
        .map_err(|e| format!("after the final SetLazyMode(0): invariant broken: {e}"))
}
