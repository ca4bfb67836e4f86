//! The VMI privilege escapes and half-applied failures of issue 10, each a
//! regression test. Every one of them failed on the personality before the
//! fix (a call returned 0 and left a descriptor the guest could use to run
//! above its ring, or a refused call left part of an entry in guest
//! memory); now the call is refused with -EINVAL/-EFAULT and a reason that
//! names the slot or vector, nothing is written, and the model's invariants
//! hold after every call.
//!
//! Each test also checks the effective tables with its own small walker
//! ([`assert_no_escape`]), independent of `check_invariants`: no slot a
//! selector can name is a present code/data segment below the guest
//! kernel's ring or a gate, and no present effective IDT gate names the
//! hypervisor's reserved entries or a code segment below the guest's ring.
//!
//! Call numbers are VMI API 3.0's literals (Linux `asm/vmi.h`); descriptors
//! are raw values.

#[path = "common/vmi.rs"]
mod vmi_helpers;

use hv_sim::vmi::GuestKind;
use vmi_helpers::*;

const EFAULT: i64 = -14;
const EINVAL: i64 = -22;

/// [`KERNEL_CODE64`] (what the attack plants) at DPL 3 (what a 64-bit guest kernel's code looks like once
/// compressed).
const CODE64_DPL3: u64 = 0x00af_fb00_0000_ffff;
/// 32-bit flat ring-0 code segment.
const KERNEL_CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// The lower half the issue used: S = 0, type 2 (LDT), P clear. On a
/// 64-bit guest it counts as the first half of a 16-byte entry.
const NOT_PRESENT_LDT_LOW: u64 = 0x0000_0200_0000_0000;

/// Make a call, then check the model's invariants and the independent
/// walker.
fn call(hv: &Hv, nr: u32, args: [u64; 4]) -> i64 {
    let r = hv.vmi_call(nr, args) as i64;
    if let Err(e) = hv.check_invariants() {
        panic!(
            "invariant broken after call {nr}{args:x?} = {r}: {e}\n{}",
            hv.trace()
        );
    }
    assert_no_escape(hv);
    r
}

/// SetGDT/SetIDT through a DTR operand.
fn load(hv: &Hv, nr: u32, base: u64, limit: u64) -> i64 {
    write_dtr(hv, base, limit);
    call(hv, nr, [DTR, 0, 0, 0])
}

/// SetGDT of `n` zeroed-or-planted entries at [`GDT`].
fn set_gdt(hv: &Hv, n: u64) -> i64 {
    load(hv, SET_GDT, GDT, n * 8 - 1)
}

/// SetIDT of `n` gates at [`IDT`].
fn set_idt(hv: &Hv, n: u64) -> i64 {
    let gs = hv.kind().gate_size();
    load(hv, SET_IDT, IDT, n * gs - 1)
}

/// A 32-bit interrupt gate (DPL 0).
fn gate32(sel: u64, offset: u64) -> u64 {
    (offset & 0xFFFF) | (sel << 16) | (0x8E << 40) | ((offset & 0xFFFF_0000) << 32)
}

/// A 64-bit call gate's lower half, DPL 3, to `sel`.
fn call_gate_dpl3(sel: u64) -> u64 {
    0x1000 | (sel << 16) | (0xEC << 40)
}

/// The independent check: walk the effective GDT slot by slot (any
/// selector can name any slot), the LDT, and the IDT.
fn assert_no_escape(hv: &Hv) {
    let k = hv.kind();
    let krpl = k.krpl();
    let e = hv.effective();
    let guest = e.gdt.len().saturating_sub(2);
    let present = |d: u64| d & (1 << 47) != 0;
    let code_data = |d: u64| d & (1 << 44) != 0;
    let dpl = |d: u64| (d >> 45) & 3;
    let typ = |d: u64| (d >> 40) & 0xF;
    for (i, &d) in e.gdt[..guest].iter().enumerate() {
        if !present(d) {
            continue;
        }
        if code_data(d) {
            assert!(
                dpl(d) >= krpl,
                "effective GDT[{i}] = {d:#018x}: DPL {} segment below the guest's ring {krpl}\n{}",
                dpl(d),
                hv.trace()
            );
        } else {
            assert!(
                matches!(typ(d), 0 | 2 | 9 | 0xB),
                "effective GDT[{i}] = {d:#018x}: system descriptor type {:#x} (a gate)\n{}",
                typ(d),
                hv.trace()
            );
        }
    }
    for (i, &d) in e.ldt.iter().enumerate() {
        if present(d) {
            assert!(
                code_data(d) && dpl(d) >= krpl,
                "effective LDT[{i}] = {d:#018x}"
            );
        }
    }
    if e.gdt.is_empty() {
        return;
    }
    for (v, &(lo, _)) in e.idt.iter().enumerate() {
        let st = (lo >> 40) & 0x1F;
        if !present(lo) || st == 0x5 {
            continue;
        }
        let sel = (lo >> 16) & 0xFFFF;
        let target = if sel & 4 != 0 {
            e.ldt.get((sel >> 3) as usize).copied()
        } else {
            e.gdt.get((sel >> 3) as usize).copied()
        };
        assert!(
            sel & 4 != 0 || (sel >> 3) as usize >= e.gdt.len() || ((sel >> 3) as usize) < guest,
            "effective IDT[{v}] selector {sel:#x} names one of the hypervisor's reserved entries\n{}",
            hv.trace()
        );
        // Anything but a present code segment faults on delivery.
        let Some(t) = target.filter(|&t| present(t) && code_data(t) && t & (1 << 43) != 0) else {
            continue;
        };
        assert!(
            dpl(t) >= krpl,
            "effective IDT[{v}] selector {sel:#x} names {t:#018x}: DPL {} below the guest's ring {krpl}\n{}",
            dpl(t),
            hv.trace()
        );
    }
}

// ---- WriteGDTEntry: the high half of a 16-byte entry ----

/// Issue 10's first reproducer: SetGDT(4 zero slots), then
/// WriteGDTEntry(base, 1, a not-present LDT lower half, a DPL-0 64-bit
/// code segment as "upper half"). The upper half lands in effective slot 2,
/// where selector 0x10 loads it.
#[test]
fn write_gdt_entry_upper_half_cannot_plant_a_ring0_code_segment() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(set_gdt(&hv, 4), 0, "{}", reason(&hv));
    let r = call(
        &hv,
        WRITE_GDT_ENTRY,
        [GDT, 1, NOT_PRESENT_LDT_LOW, KERNEL_CODE64],
    );
    assert_eq!(r, EINVAL, "refused, not installed");
    let why = reason(&hv);
    assert!(why.contains("GDT[2]"), "names the slot: {why}");
    assert_eq!(hv.effective().gdt[..4], [0; 4]);
    assert_eq!(hv.memory().read_u64(GDT + 16), 0, "nothing written");
    assert_eq!(hv.memory().read_u64(GDT + 8), 0, "nothing written");
}

/// The same with a DPL-3 call gate aimed at the hypervisor's ring-0 code
/// slot (GDT[4], right after the guest's 4 entries) as the upper half.
#[test]
fn write_gdt_entry_upper_half_cannot_plant_a_call_gate() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(set_gdt(&hv, 4), 0, "{}", reason(&hv));
    let r = call(
        &hv,
        WRITE_GDT_ENTRY,
        [GDT, 1, NOT_PRESENT_LDT_LOW, call_gate_dpl3(4 << 3)],
    );
    assert_eq!(r, EINVAL);
    assert!(reason(&hv).contains("GDT[2]"), "{}", reason(&hv));
    assert_eq!(hv.effective().gdt[2], 0);
}

/// The same pair placed in the table and loaded by SetGDT: slot 2 is a
/// slot of its own (the lower half is not present), fixed up like any
/// other segment.
#[test]
fn set_gdt_with_the_same_pair_compresses_the_planted_segment() {
    let hv = machine(GuestKind::Vmi64);
    hv.memory().write_u64(GDT + 8, NOT_PRESENT_LDT_LOW);
    hv.memory().write_u64(GDT + 16, KERNEL_CODE64);
    assert_eq!(set_gdt(&hv, 4), 0, "{}", reason(&hv));
    assert_eq!(hv.effective().gdt[2], CODE64_DPL3);
    hv.memory().write_u64(GDT + 16, call_gate_dpl3(4 << 3));
    assert_eq!(set_gdt(&hv, 4), EINVAL);
    assert!(reason(&hv).contains("GDT[2]"), "{}", reason(&hv));
}

/// A valid not-present 16-byte descriptor (upper half type 0) written
/// whole is still accepted (pvops-vmi clears TSS/LDT slots this way).
#[test]
fn write_gdt_entry_not_present_pair_with_a_clean_upper_half_is_accepted() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(set_gdt(&hv, 4), 0);
    let (lo, hi) = tss64(TSS, true);
    let lo = lo & !(1 << 47);
    assert_eq!(
        call(&hv, WRITE_GDT_ENTRY, [GDT, 1, lo, hi]),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.effective().gdt[1..3], [lo, hi]);
}

// ---- IDT gates and the hypervisor's reserved ring-0 segment ----

/// Issue 10's second reproducer: SetGDT(2 entries), then
/// WriteIDTEntry(14) with selector 0x10, which names the hypervisor's
/// ring-0 code segment appended after the guest's two entries.
#[test]
fn write_idt_entry_cannot_target_the_reserved_ring0_segment() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(set_gdt(&hv, 2), 0);
    assert_eq!(set_idt(&hv, 32), 0, "{}", reason(&hv));
    let (lo, hi) = gate64(0x10, 0xffff_ffff_8100_0000);
    assert_eq!(call(&hv, WRITE_IDT_ENTRY, [IDT, 14, lo, hi]), EINVAL);
    let why = reason(&hv);
    assert!(why.contains("IDT[14]"), "{why}");
    assert_eq!(hv.effective().idt[14], (0, 0));
    assert_eq!(hv.memory().read_u64(IDT + 14 * 16), 0, "nothing written");
}

/// The gate written before any GDT is loaded, then SetIDT, then a GDT of
/// two entries: the gate would name the reserved segment once the GDT
/// changes; the GDT change is refused.
#[test]
fn gates_are_rechecked_when_the_gdt_changes() {
    let hv = machine(GuestKind::Vmi64);
    let (lo, hi) = gate64(0x13, 0xffff_ffff_8100_0000);
    hv.memory().write_u64(IDT + 14 * 16, lo);
    hv.memory().write_u64(IDT + 14 * 16 + 8, hi);
    assert_eq!(set_idt(&hv, 32), 0, "{}", reason(&hv));
    assert_eq!(set_gdt(&hv, 2), EINVAL);
    assert!(reason(&hv).contains("IDT[14]"), "{}", reason(&hv));
    // Through a lazy batch: the check is against the GDT in effect when
    // the batch is flushed.
    assert_eq!(call(&hv, SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    assert_eq!(set_gdt(&hv, 2), EINVAL);
    assert_eq!(call(&hv, SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    // With the guest's own code segment there, fine.
    hv.memory().write_u64(GDT + 16, CODE64_DPL3);
    assert_eq!(set_gdt(&hv, 4), 0, "{}", reason(&hv));
}

/// A live gate targets GDT[2]; rewriting that slot with a ring-0 code
/// segment installs it compressed to the guest's ring, so the gate still
/// runs its handler there. Rewriting it with a data segment is accepted:
/// delivery through the gate then faults, as on bare metal (Linux loads
/// its IDT before the GDT its gates name), and runs nothing above the
/// guest's ring.
#[test]
fn a_gdt_entry_a_live_gate_targets_is_rechecked() {
    let hv = machine(GuestKind::Vmi64);
    hv.memory().write_u64(GDT + 16, CODE64_DPL3);
    assert_eq!(set_gdt(&hv, 8), 0);
    assert_eq!(set_idt(&hv, 32), 0);
    let (lo, hi) = gate64(0x10, 0xffff_ffff_8100_0000);
    assert_eq!(
        call(&hv, WRITE_IDT_ENTRY, [IDT, 14, lo, hi]),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 2, KERNEL_CODE64, 0]), 0);
    assert_eq!(hv.effective().gdt[2], CODE64_DPL3);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 2, KERNEL_DATA, 0]), 0);
    // Through a lazy batch too.
    assert_eq!(call(&hv, SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 2, KERNEL_CODE64, 0]), 0);
    assert_eq!(call(&hv, SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    assert_eq!(hv.effective().gdt[2], CODE64_DPL3);
}

/// 32-bit guest: the same gate check (its reserved entries follow the
/// guest's too).
#[test]
fn vmi32_gate_into_the_reserved_segment_is_refused() {
    let hv = machine(GuestKind::Vmi32);
    hv.memory().write_u64(GDT + 8, KERNEL_CODE32);
    assert_eq!(set_gdt(&hv, 2), 0);
    assert_eq!(set_idt(&hv, 32), 0);
    let g = gate32(0x10, 0xc100_0000);
    let r = call(&hv, WRITE_IDT_ENTRY, [IDT, 14, g & 0xffff_ffff, g >> 32]);
    assert_eq!(r, EINVAL);
    let g = gate32(0x08, 0xc100_0000);
    let r = call(&hv, WRITE_IDT_ENTRY, [IDT, 14, g & 0xffff_ffff, g >> 32]);
    assert_eq!(r, 0, "{}", reason(&hv));
}

// ---- Nothing half-applied ----

/// A 16-byte WriteGDTEntry whose lower half is outside guest memory and
/// upper half inside: -EFAULT, and the upper half is not written.
#[test]
fn write_gdt_entry_efault_writes_nothing() {
    let hv = machine(GuestKind::Vmi64);
    let (lo, hi) = tss64(TSS, true);
    hv.memory().write_u64(RAM, 0x1111);
    // Lower half at RAM - 8 (not guest memory), upper half at RAM.
    let r = call(&hv, WRITE_GDT_ENTRY, [RAM - 16, 1, lo, hi]);
    assert_eq!(r, EFAULT);
    assert_eq!(hv.memory().read_u64(RAM), 0x1111, "upper half not written");
}

/// A 64-bit WriteIDTEntry whose first 8 bytes are outside guest memory and
/// last 8 inside: -EFAULT, nothing written.
#[test]
fn write_idt_entry_efault_writes_nothing() {
    let hv = machine(GuestKind::Vmi64);
    hv.memory().write_u64(RAM, 0x2222);
    let (lo, hi) = gate64(0x13, 0xffff_ffff_8100_0000);
    let r = call(&hv, WRITE_IDT_ENTRY, [RAM - 8, 0, lo, hi]);
    assert_eq!(r, EFAULT);
    assert_eq!(hv.memory().read_u64(RAM), 0x2222, "upper half not written");
}

/// A 16-byte WriteGDTEntry running off the end of guest memory: -EFAULT,
/// the lower half not written either.
#[test]
fn write_gdt_entry_past_the_end_writes_nothing() {
    let hv = machine(GuestKind::Vmi64);
    let end = RAM + RAM_SIZE as u64;
    hv.memory().write_u64(end - 8, 0x3333);
    let (lo, hi) = tss64(TSS, true);
    let r = call(&hv, WRITE_GDT_ENTRY, [end - 8, 0, lo, hi]);
    assert_eq!(r, EFAULT);
    assert_eq!(
        hv.memory().read_u64(end - 8),
        0x3333,
        "lower half not written"
    );
}

/// An 8-byte write at i+1 of a live TSS at GDT[i] would change its upper
/// half (base bits 32-63) after it was validated: refused, nothing written.
#[test]
fn an_eight_byte_write_cannot_change_a_live_tss_upper_half() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(set_gdt(&hv, 16), 0);
    let (lo, hi) = tss64(TSS, true);
    assert_eq!(
        call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, hi]),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(call(&hv, SET_TR, [8 << 3, 0, 0, 0]), 0, "{}", reason(&hv));
    for v in [0, 0x0000_0000_ffff_ffff, CODE64_DPL3] {
        assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 9, v, 0]), EINVAL);
        assert!(reason(&hv).contains("GDT[9]"), "{}", reason(&hv));
        assert_eq!(hv.memory().read_u64(GDT + 9 * 8), hi);
        assert_eq!(hv.effective().gdt[9], hi);
    }
}
