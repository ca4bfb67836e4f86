//! The VMI model's invariants ([`super::VmiHypervisor::check_invariants`]):
//! what must hold of the effective state (the tables the CPU would use)
//! after every call, whatever the guest passed, and where the effective
//! state must agree with the guest's view.
//!
//! # Safety of the effective state ([`check_effective`])
//! Checked on the applied state and on the state a pending lazy batch will
//! produce when it is flushed. In short: no live descriptor lets the guest
//! run above its ring, every effective gate's target is one the guest may
//! use or one the CPU refuses, and no 16-byte entry is half validated.
//!
//! * **GDT**, every slot on its own (any selector can name any slot, the
//!   upper half of a 16-byte descriptor included), then every present
//!   16-byte descriptor with its upper half:
//!   * a present code/data segment has DPL >= the guest kernel's ring, has
//!     its accessed bit set (the CPU never writes the table), and, for a
//!     32-bit guest, no L bit;
//!   * a present system descriptor is an LDT or a TSS (no call, task,
//!     interrupt or trap gates), or of type 0 (reserved: unusable, the CPU
//!     refuses it; what an upper half looks like on its own);
//!   * for a 64-bit guest, a present LDT/TSS descriptor's second slot lies
//!     in the guest's part of the table and has a zero type field (bits
//!     40–44), and the base is canonical;
//!   * at most 8192 guest entries, and the hypervisor's reserved entries
//!     follow them, unchanged.
//! * **LDT**: at most 8192 entries, present ones code/data only with the
//!   same rules; a valid guest base; the LDTR names a guest GDT slot.
//! * **IDT**: at most 256 gates; present entries are interrupt or trap
//!   gates (and task gates for a 32-bit guest); a 64-bit gate's upper half
//!   has no reserved bits and its offset is canonical; the code selector is
//!   not null and carries the guest kernel's RPL (task gates keep theirs).
//!   Resolved in the effective GDT/LDT, the selector does **not** name one
//!   of the hypervisor's reserved GDT entries, nor a present code segment
//!   of DPL below the guest's ring: delivering an interrupt through such a
//!   gate would run the guest's handler above its ring. (Any other target,
//!   not present or not a code segment, makes delivery fault, as on bare
//!   metal.)
//! * **TR**: a loaded TR names a guest GDT slot (both slots of a 64-bit
//!   TSS descriptor), with a TSS limit of at least 0x67 and a valid guest
//!   base.
//! * **sp0**: a valid guest address (canonical, or below 4 GiB for a
//!   32-bit guest).
//!
//! # Agreement with the guest's view ([`check_view`])
//! Outside a lazy batch (nothing deferred) the personality promises that
//! the effective state is the one the guest's calls describe: the effective
//! GDT holds as many guest entries as the GDTR the guest set (plus the
//! reserved ones) and does not live at the guest's address, the effective
//! IDT as many gates as its IDTR, LDTR/TR are the guest's selectors, the
//! LDT is the one SetLDT named, sp0 is UpdateKernelStack's. Lazy mode 0
//! means nothing is deferred.

use super::error::Violation;
use super::machine::{EffectiveState, GuestView, HV_RESERVED_GDT};
use super::policy::{GuestKind, is_double};

const P: u64 = 1 << 47;
const S: u64 = 1 << 44;
const L: u64 = 1 << 53;
const CODE: u64 = 1 << 43;
const ACCESSED: u64 = 1 << 40;

fn dpl(d: u64) -> u64 {
    (d >> 45) & 3
}

fn typ(d: u64) -> u64 {
    (d >> 40) & 0xF
}

use pvops::table::is_canonical as canonical;

/// A valid guest linear address for `kind`.
fn guest_addr(kind: GuestKind, a: u64) -> bool {
    match kind {
        GuestKind::Vmi64 => canonical(a),
        GuestKind::Vmi32 => a <= u32::MAX as u64,
    }
}

/// Number of guest entries in the effective GDT (the reserved ones
/// excluded).
pub fn guest_gdt_len(e: &EffectiveState) -> usize {
    e.gdt.len().saturating_sub(HV_RESERVED_GDT.len())
}

/// Does `sel` (TI = 0) name one of the hypervisor's reserved entries of a
/// GDT whose guest part has `guest_len` entries?
pub fn names_reserved(sel: u64, guest_len: usize) -> bool {
    let index = (sel >> 3) as usize;
    sel & 4 == 0 && (guest_len..guest_len + HV_RESERVED_GDT.len()).contains(&index)
}

fn segment(kind: GuestKind, table: &str, i: usize, d: u64) -> Result<(), String> {
    let what = format_args!("effective {table}[{i}]");
    let krpl = kind.krpl();
    if dpl(d) < krpl {
        return Err(format!(
            "{what} = {d:#018x}: present code/data segment with DPL {} < the guest kernel's ring {krpl}",
            dpl(d)
        ));
    }
    if d & ACCESSED == 0 {
        return Err(format!(
            "{what} = {d:#018x}: present code/data segment without the accessed bit (the CPU would write the table)"
        ));
    }
    if kind == GuestKind::Vmi32 && d & L != 0 {
        return Err(format!(
            "{what} = {d:#018x}: 64-bit (L) segment in a 32-bit guest's table"
        ));
    }
    Ok(())
}

fn gdt(kind: GuestKind, e: &EffectiveState) -> Result<(), String> {
    if e.gdt.is_empty() {
        return Ok(());
    }
    if e.gdt.len() < HV_RESERVED_GDT.len() {
        return Err(format!(
            "effective GDT has {} entries, fewer than the {} reserved ones",
            e.gdt.len(),
            HV_RESERVED_GDT.len()
        ));
    }
    let n = guest_gdt_len(e);
    if e.gdt[n..] != HV_RESERVED_GDT {
        return Err(format!(
            "effective GDT[{n}..] = {:x?}: not the hypervisor's reserved entries {HV_RESERVED_GDT:x?}",
            &e.gdt[n..]
        ));
    }
    if n > 8192 {
        return Err(format!(
            "effective GDT has {n} guest entries, more than 8192"
        ));
    }
    // Every slot on its own.
    for (i, &d) in e.gdt[..n].iter().enumerate() {
        if d & P == 0 {
            continue;
        }
        if d & S != 0 {
            segment(kind, "GDT", i, d)?;
        } else if !matches!(typ(d), 0x0 | 0x2 | 0x9 | 0xB) {
            return Err(format!(
                "effective GDT[{i}] = {d:#018x}: present system descriptor of type {:#x}; only LDT and TSS descriptors may be installed",
                typ(d)
            ));
        }
    }
    // Every present 16-byte descriptor with its upper half.
    for (i, &d) in e.gdt[..n].iter().enumerate() {
        if d & P == 0 || !is_double(kind, d) {
            continue;
        }
        let Some(&h) = e.gdt[..n].get(i + 1) else {
            return Err(format!(
                "effective GDT[{i}] = {d:#018x}: 16-byte descriptor whose upper half would be GDT[{}], not a guest entry",
                i + 1
            ));
        };
        if (h >> 40) & 0x1F != 0 {
            return Err(format!(
                "effective GDT[{i}] = {d:#018x}: its upper half GDT[{}] = {h:#018x} has a non-zero type field",
                i + 1
            ));
        }
        let base = ((d >> 16) & 0xFF_FFFF) | ((d >> 32) & 0xFF00_0000) | (h << 32);
        if !canonical(base) {
            return Err(format!(
                "effective GDT[{i}]: 16-byte descriptor with non-canonical base {base:#x}"
            ));
        }
    }
    Ok(())
}

fn ldt(kind: GuestKind, e: &EffectiveState) -> Result<(), String> {
    if e.ldt.len() > 8192 {
        return Err(format!(
            "effective LDT has {} entries, more than 8192",
            e.ldt.len()
        ));
    }
    if !e.ldt.is_empty() && !guest_addr(kind, e.ldt_base) {
        return Err(format!(
            "effective LDT base {:#x} is not a valid {} address",
            e.ldt_base,
            kind.name()
        ));
    }
    if !e.ldtr.is_null()
        && (e.ldtr.ti() != pvops::TableIndicator::Gdt
            || e.ldtr.index() as usize >= guest_gdt_len(e))
    {
        return Err(format!(
            "effective LDTR {} does not name one of the guest's {} GDT entries",
            e.ldtr,
            guest_gdt_len(e)
        ));
    }
    for (i, &d) in e.ldt.iter().enumerate() {
        if d & P == 0 {
            continue;
        }
        if d & S == 0 {
            return Err(format!(
                "effective LDT[{i}] = {d:#018x}: present system descriptor in an LDT"
            ));
        }
        segment(kind, "LDT", i, d)?;
    }
    Ok(())
}

fn idt(kind: GuestKind, e: &EffectiveState) -> Result<(), String> {
    let n = guest_gdt_len(e);
    if e.idt.len() > 256 {
        return Err(format!(
            "effective IDT has {} gates, more than 256",
            e.idt.len()
        ));
    }
    for (v, &(lo, hi)) in e.idt.iter().enumerate() {
        if lo & P == 0 {
            continue;
        }
        let what = format_args!("effective IDT[{v}] = {hi:#018x}:{lo:#018x}");
        let st = (lo >> 40) & 0x1F;
        let ok = match kind {
            GuestKind::Vmi64 => matches!(st, 0xE | 0xF),
            GuestKind::Vmi32 => matches!(st, 0xE | 0xF | 0x5),
        };
        if !ok {
            return Err(format!(
                "{what}: present entry of type {st:#x} (S<<4|type) is not an interrupt or trap gate"
            ));
        }
        let sel = (lo >> 16) & 0xFFFF;
        if sel & !3 == 0 {
            return Err(format!("{what}: null selector"));
        }
        if kind == GuestKind::Vmi64 {
            if hi >> 32 != 0 {
                return Err(format!("{what}: reserved bits set in the upper half"));
            }
            let off = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | (hi << 32);
            if !canonical(off) {
                return Err(format!("{what}: non-canonical offset {off:#x}"));
            }
        }
        if !e.gdt.is_empty() && names_reserved(sel, n) {
            return Err(format!(
                "{what}: selector {sel:#x} names GDT[{}], the hypervisor's reserved ring-0 entry {}: an interrupt through this gate would run the guest in ring 0",
                sel >> 3,
                (sel >> 3) as usize - n
            ));
        }
        if st == 0x5 {
            continue;
        }
        let index = (sel >> 3) as usize;
        let target = if sel & 4 != 0 {
            e.ldt.get(index)
        } else {
            e.gdt[..n].get(index)
        };
        if let Some(&t) = target
            && t & (P | S | CODE) == P | S | CODE
            && dpl(t) < kind.krpl()
        {
            return Err(format!(
                "{what}: selector {sel:#x} names a code segment {t:#018x} of DPL {}: an interrupt through this gate would run the guest above its ring {}",
                dpl(t),
                kind.krpl()
            ));
        }
        if sel & 3 != kind.krpl() {
            return Err(format!(
                "{what}: selector {sel:#x} does not carry the guest kernel's RPL {}",
                kind.krpl()
            ));
        }
    }
    Ok(())
}

/// The safety invariants of an effective state (see the module
/// documentation). Err = the first violation, described.
pub fn check_effective(kind: GuestKind, e: &EffectiveState) -> Result<(), Violation> {
    effective(kind, e).map_err(Violation::from)
}

fn effective(kind: GuestKind, e: &EffectiveState) -> Result<(), String> {
    gdt(kind, e)?;
    ldt(kind, e)?;
    idt(kind, e)?;
    if !e.tr.is_null() {
        if e.tss_limit < 0x67 {
            return Err(format!(
                "effective TR {} with TSS limit {:#x} < 0x67",
                e.tr, e.tss_limit
            ));
        }
        if !guest_addr(kind, e.tss_base) {
            return Err(format!(
                "effective TR {}: TSS base {:#x} is not a valid {} address",
                e.tr,
                e.tss_base,
                kind.name()
            ));
        }
        let slots = if kind == GuestKind::Vmi64 { 2 } else { 1 };
        if e.tr.ti() != pvops::TableIndicator::Gdt
            || e.tr.index() as usize + slots > guest_gdt_len(e)
        {
            return Err(format!(
                "effective TR {} does not name one of the guest's {} GDT entries",
                e.tr,
                guest_gdt_len(e)
            ));
        }
    }
    if !guest_addr(kind, e.sp0) {
        return Err(format!(
            "effective sp0 {:#x} is not a valid {} address",
            e.sp0,
            kind.name()
        ));
    }
    Ok(())
}

/// The effective state agrees with the guest's view (call only when no
/// update is deferred).
pub fn check_view(kind: GuestKind, g: &GuestView, e: &EffectiveState) -> Result<(), Violation> {
    view(kind, g, e).map_err(Violation::from)
}

fn view(kind: GuestKind, g: &GuestView, e: &EffectiveState) -> Result<(), String> {
    match g.gdtr {
        Some(p) => {
            let n = (p.limit as usize + 1) / 8;
            if e.gdt.len() != n + HV_RESERVED_GDT.len() {
                return Err(format!(
                    "guest GDTR {:#x}/{:#x} ({n} entries) but the effective GDT has {} entries ({} reserved)",
                    p.base,
                    p.limit,
                    e.gdt.len(),
                    HV_RESERVED_GDT.len()
                ));
            }
            if e.gdt_base == p.base {
                return Err(format!(
                    "the effective GDT is at the guest's address {:#x}",
                    p.base
                ));
            }
        }
        None if !e.gdt.is_empty() => {
            return Err(format!(
                "no guest GDT but an effective GDT of {} entries",
                e.gdt.len()
            ));
        }
        None => {}
    }
    match g.idtr {
        Some(p) => {
            let n = (p.limit as u64 + 1) / kind.gate_size();
            if e.idt.len() as u64 != n {
                return Err(format!(
                    "guest IDTR {:#x}/{:#x} ({n} gates) but the effective IDT has {}",
                    p.base,
                    p.limit,
                    e.idt.len()
                ));
            }
        }
        None if !e.idt.is_empty() => {
            return Err(format!(
                "no guest IDT but an effective IDT of {} gates",
                e.idt.len()
            ));
        }
        None => {}
    }
    if e.ldtr != g.ldtr {
        return Err(format!(
            "effective LDTR {} but the guest's {}",
            e.ldtr, g.ldtr
        ));
    }
    let eff_ldt = (!e.ldt.is_empty()).then_some((e.ldt_base, e.ldt.len() as u32));
    if eff_ldt != g.ldt.filter(|&(_, n)| n > 0) {
        return Err(format!(
            "effective LDT {eff_ldt:x?} (base, entries) but the guest set {:x?}",
            g.ldt
        ));
    }
    if e.tr != g.tr {
        return Err(format!("effective TR {} but the guest's {}", e.tr, g.tr));
    }
    let sp0 = g.kernel_stack.map_or(0, |(_, sp0)| sp0);
    if e.sp0 != sp0 {
        return Err(format!(
            "effective sp0 {:#x} but UpdateKernelStack set {sp0:#x}",
            e.sp0
        ));
    }
    Ok(())
}
