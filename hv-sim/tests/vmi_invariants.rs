//! `VmiHypervisor::check_invariants` and the bugs it found (issue 10), each
//! with a regression test: the call that used to install a dangerous
//! effective descriptor is now refused, and the invariants hold.
//!
//! Call numbers are VMI API 3.0's literals (Linux `asm/vmi.h`); descriptors
//! are written out as raw values.

#[path = "common/vmi.rs"]
mod vmi_helpers;

use hv_sim::vmi::machine::HV_RESERVED_GDT;
use hv_sim::vmi::{CheckedState, GuestKind, InvariantError};
use vmi_helpers::*;

/// Make a call; the invariants must hold after it, whatever it returned.
fn call(hv: &Hv, nr: u32, args: [u64; 4]) -> i64 {
    let r = hv.vmi_call(nr, args) as i64;
    if let Err(e) = hv.check_invariants() {
        panic!(
            "invariant broken after call {nr}{args:x?} = {r}: {e}\n{}",
            hv.trace()
        );
    }
    r
}

/// SetGDT/SetIDT through a DTR operand.
fn load(hv: &Hv, nr: u32, base: u64, limit: u64) -> i64 {
    write_dtr(hv, base, limit);
    call(hv, nr, [DTR, 0, 0, 0])
}

#[test]
fn a_fresh_machine_and_a_normal_boot_satisfy_the_invariants() {
    let hv = machine(GuestKind::Vmi64);
    hv.check_invariants().unwrap();
    hv.memory().write_u64(GDT + 16, KERNEL_CODE64);
    hv.memory().write_u64(GDT + 24, KERNEL_DATA);
    assert_eq!(load(&hv, SET_GDT, GDT, 16 * 8 - 1), 0, "{}", reason(&hv));
    hv.check_invariants().unwrap();
    let (lo, hi) = tss64(TSS, true);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, hi]), 0);
    assert_eq!(call(&hv, SET_TR, [8 << 3, 0, 0, 0]), 0, "{}", reason(&hv));
    for v in 0..32 {
        let (lo, hi) = gate64(0x10, 0xffff_ffff_8100_0000 + v * 16);
        hv.memory().write_u64(IDT + v * 16, lo);
        hv.memory().write_u64(IDT + v * 16 + 8, hi);
    }
    assert_eq!(load(&hv, SET_IDT, IDT, 32 * 16 - 1), 0, "{}", reason(&hv));
    hv.check_invariants().unwrap();
}

/// Issue 10: an IDT gate whose selector names the entry right after the
/// guest's GDT, where the hypervisor's ring-0 code segment sits. The RPL
/// fix-up does not help: delivery loads CS from the descriptor, so CPL
/// would become its DPL, 0. Found by `vmi_props` with the invariant check:
/// WriteIDTEntry(IDT, 0, gate with selector 0x20), SetIDT (1 gate),
/// SetGDT (4 entries).
#[test]
fn gate_into_the_reserved_ring0_segment_is_refused_whichever_table_comes_first() {
    // IDT first, then a GDT that puts the reserved entry under the gate.
    let hv = machine(GuestKind::Vmi64);
    let (lo, hi) = gate64(4 << 3, 0xffff_ffff_8100_0000);
    hv.memory().write_u64(IDT, lo);
    hv.memory().write_u64(IDT + 8, hi);
    assert_eq!(load(&hv, SET_IDT, IDT, 16 - 1), 0, "{}", reason(&hv));
    assert_eq!(load(&hv, SET_GDT, GDT, 4 * 8 - 1), -22);
    assert!(
        reason(&hv).contains("IDT[0]")
            && reason(&hv)
                .contains("names GDT[4], one of the hypervisor's reserved ring-0 entries"),
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.guest().gdtr, None);
    hv.check_invariants().unwrap();
    // A GDT long enough that selector 0x20 is the guest's own entry: fine.
    assert_eq!(load(&hv, SET_GDT, GDT, 8 * 8 - 1), 0, "{}", reason(&hv));
    hv.check_invariants().unwrap();
    // The reserved entries now follow entry 7: a gate to 0x40 or 0x48 is
    // refused, by WriteIDTEntry and by SetIDT.
    for sel in [8 << 3, 9 << 3] {
        let (lo, hi) = gate64(sel, 0xffff_ffff_8100_0000);
        assert_eq!(call(&hv, WRITE_IDT_ENTRY, [IDT, 0, lo, hi]), -22);
        assert!(reason(&hv).contains("reserved ring-0"), "{}", reason(&hv));
        hv.memory().write_u64(IDT, lo);
        hv.memory().write_u64(IDT + 8, hi);
        assert_eq!(load(&hv, SET_IDT, IDT, 16 - 1), -22);
        hv.check_invariants().unwrap();
    }
    // Past the reserved entries the selector names nothing: #GP on
    // delivery, accepted as before.
    let (lo, hi) = gate64(10 << 3, 0xffff_ffff_8100_0000);
    assert_eq!(call(&hv, WRITE_IDT_ENTRY, [IDT, 0, lo, hi]), 0);
    hv.check_invariants().unwrap();
}

#[test]
fn gate_into_the_reserved_segment_is_refused_for_a_32_bit_guest_and_in_lazy_mode() {
    let hv = machine(GuestKind::Vmi32);
    // SetLazyMode(2): SetGDT and WriteIDTEntry are both deferred; the gate
    // is checked against the GDT the guest has set, as the batch will be
    // applied together.
    assert_eq!(call(&hv, SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    hv.memory().write_u64(DTR, (16 * 8 - 1) | (GDT << 16));
    assert_eq!(call(&hv, SET_GDT, [DTR, 0, 0, 0]), 0);
    hv.memory().write_u64(DTR, (256 * 8 - 1) | (IDT << 16));
    assert_eq!(call(&hv, SET_IDT, [DTR, 0, 0, 0]), 0, "{}", reason(&hv));
    // 32-bit interrupt gate, selector 16 << 3 = the reserved ring-0 code.
    let g: u64 = (16 << 3 << 16) | (0x8E << 40) | 0x1000;
    assert_eq!(
        call(&hv, WRITE_IDT_ENTRY, [IDT, 0x80, g & 0xffff_ffff, g >> 32]),
        -22
    );
    hv.check_invariants().unwrap();
    assert_eq!(call(&hv, SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    hv.check_invariants().unwrap();
    let e = hv.effective();
    assert_eq!(&e.gdt[16..], &HV_RESERVED_GDT);
    assert_eq!(e.idt[0x80].0 & (1 << 47), 0, "nothing installed");
}

/// Issue 10: WriteGDTEntry of a 64-bit guest with a *not-present* TSS/LDT
/// low half took the upper half unchecked into effective slot index + 1,
/// where a selector can name it on its own: a DPL-0 code segment there
/// was installed as is.
#[test]
fn unchecked_upper_half_of_a_not_present_16_byte_descriptor_is_refused() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(load(&hv, SET_GDT, GDT, 16 * 8 - 1), 0, "{}", reason(&hv));
    let (lo, _) = tss64(TSS, false);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, KERNEL_CODE64]), -22);
    assert!(
        reason(&hv).contains("has a non-zero type field"),
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.effective().gdt[9], 0);
    hv.check_invariants().unwrap();
    // A proper upper half (base bits 63:32, type field 0) is still taken.
    let (lo, hi) = tss64(0xffff_8880_0000_5000, false);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, hi]), 0);
    assert_eq!(hv.effective().gdt[9], hi);
    hv.check_invariants().unwrap();
}

/// The checker itself: a hypervisor whose effective state breaks a rule
/// is reported, with the rule.
#[test]
fn the_checker_reports_what_is_wrong() {
    // The view rule: an effective GDT the guest did not set. Reached by
    // placing the effective tables where the guest's GDT is, which the
    // personality otherwise never does.
    let hv = machine(GuestKind::Vmi64);
    hv.set_effective_bases(GDT, IDT + 0x100);
    hv.memory().write_u64(DTR, (4 * 8 - 1) | (GDT << 16));
    hv.memory().write_u64(DTR + 8, GDT >> 48);
    assert_eq!(hv.vmi_call(SET_GDT, [DTR, 0, 0, 0]), 0);
    match hv.check_invariants().unwrap_err() {
        InvariantError::Disagrees {
            state: CheckedState::Applied,
            violation,
        } => assert!(
            violation.rule.contains("at the guest's address"),
            "{violation}"
        ),
        e => panic!("not a view disagreement: {e}"),
    }
}

/// Found with the checker (a targeted sequence; `vmi_props` reaches it
/// too): an 8-byte WriteGDTEntry into the upper half of a present 16-byte
/// TSS descriptor of the loaded GDT left the effective TSS descriptor with
/// a data segment for its upper half (base bits 63:32 and a non-zero type
/// field). Such a write is now refused; rewriting the whole descriptor, or
/// clearing its lower half first, is not.
#[test]
fn eight_byte_write_into_the_upper_half_of_a_live_16_byte_descriptor_is_refused() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(load(&hv, SET_GDT, GDT, 16 * 8 - 1), 0, "{}", reason(&hv));
    let (lo, hi) = tss64(TSS, true);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, hi]), 0);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 9, KERNEL_DATA, 0]), -22);
    assert!(
        reason(&hv)
            .contains("GDT[9] is the upper half of the present 16-byte descriptor at GDT[8]"),
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.effective().gdt[9], hi);
    assert_eq!(
        hv.memory().read_u64(GDT + 9 * 8),
        hi,
        "guest table untouched"
    );
    hv.check_invariants().unwrap();
    // Also while the TSS write itself is still deferred in a lazy batch.
    assert_eq!(call(&hv, SET_LAZY_MODE, [2, 0, 0, 0]), 0);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 10, lo, hi]), 0);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 11, KERNEL_DATA, 0]), -22);
    hv.check_invariants().unwrap();
    assert_eq!(call(&hv, SET_LAZY_MODE, [0, 0, 0, 0]), 0);
    hv.check_invariants().unwrap();
    // Clearing the lower half first frees the slot.
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, 0, 0]), 0);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 9, KERNEL_DATA, 0]), 0);
    hv.check_invariants().unwrap();
    assert_eq!(hv.effective().gdt[9] >> 45 & 3, 3, "DPL compressed to 3");
}

/// Found by reading the code while writing the checker: with a TSS loaded,
/// SetGDT of a new table marked "busy" (bit 41) whatever descriptor sat at
/// TR's index, e.g. turning a read-only data segment writable in the
/// effective table. Only an available TSS is marked busy now.
#[test]
fn set_gdt_marks_only_a_tss_busy() {
    let hv = machine(GuestKind::Vmi64);
    assert_eq!(load(&hv, SET_GDT, GDT, 16 * 8 - 1), 0, "{}", reason(&hv));
    let (lo, hi) = tss64(TSS, true);
    assert_eq!(call(&hv, WRITE_GDT_ENTRY, [GDT, 8, lo, hi]), 0);
    assert_eq!(call(&hv, SET_TR, [8 << 3, 0, 0, 0]), 0, "{}", reason(&hv));
    assert_eq!(hv.effective().gdt[8] >> 40 & 0x1F, 0xB, "busy TSS");
    // A new GDT with a read-only data segment (type 1: accessed, not
    // writable; DPL 3) at TR's index.
    let ro_data: u64 = 0x00cf_f100_0000_ffff;
    hv.memory().write_u64(GDT + 0x400 + 8 * 8, ro_data);
    assert_eq!(
        load(&hv, SET_GDT, GDT + 0x400, 16 * 8 - 1),
        0,
        "{}",
        reason(&hv)
    );
    assert_eq!(hv.effective().gdt[8], ro_data, "still read-only");
    hv.check_invariants().unwrap();
    // Back to a table with the TSS at TR's index: marked busy again.
    assert_eq!(load(&hv, SET_GDT, GDT, 16 * 8 - 1), 0, "{}", reason(&hv));
    assert_eq!(hv.effective().gdt[8] >> 40 & 0x1F, 0xB);
    hv.check_invariants().unwrap();
}
