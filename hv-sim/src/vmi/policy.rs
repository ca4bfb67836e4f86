//! The VMI personality's descriptor policy: which GDT/LDT/IDT entries a
//! VMI-style guest may install, and how the hypervisor rewrites the ones it
//! accepts in its *effective* tables (the guest's own tables are never
//! rewritten; see [`super`]).
//!
//! Code and data segments go through the Xen personality's rule
//! ([`crate::xen::descriptor_policy::check_descriptor_with`], Xen's
//! `check_descriptor`): not-present descriptors pass untouched; a DPL below
//! the guest kernel's ring is raised to it (ring compression); a 32-bit
//! guest may not install 64-bit (L) segments, and its flat segments reaching
//! into the hypervisor's range (above the ROM's `virtual_top`) are extended
//! to 4 GiB, as Xen does above its compat range. On top of that, like
//! lguest, the accessed bit of every present code/data segment is set, so
//! the CPU never writes the table.
//!
//! Unlike Xen, whose PV ABI takes the LDT by address and keeps the TSS to
//! itself, the VMI ABI loads both through GDT descriptors (SetLDT, SetTR),
//! so LDT and TSS descriptors are accepted in the GDT; call gates and the
//! other system types are refused. IDT gates must be interrupt or trap gates
//! (a 32-bit guest may also use a task gate, as i386 Linux does for #DF);
//! their code selector gets the guest kernel's RPL.

use core::fmt;

use crate::xen::descriptor_policy::{Abi, Reject as XenReject, check_descriptor_with};

/// Which kind of VMI-style guest the personality runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestKind {
    /// 64-bit guest: the kernel runs in ring 3 (long mode has no segment
    /// limits, so only paging's user/supervisor split can protect the
    /// hypervisor, as for Xen's 64-bit PV guests). 64-bit register
    /// convention, 10-byte DTR, 16-byte gates and system descriptors.
    Vmi64,
    /// 32-bit guest (the original VMI): the kernel runs in ring 1. Two-word
    /// descriptors, 6-byte DTR, 8-byte gates.
    Vmi32,
}

impl GuestKind {
    /// The guest kernel's ring: 3 for 64-bit, 1 for 32-bit.
    pub const fn krpl(self) -> u64 {
        match self {
            GuestKind::Vmi64 => 3,
            GuestKind::Vmi32 => 1,
        }
    }

    /// Size of the DTR operand of SetGDT/GetGDT (10 or 6 bytes).
    pub const fn dtr_len(self) -> usize {
        match self {
            GuestKind::Vmi64 => 10,
            GuestKind::Vmi32 => 6,
        }
    }

    /// Size of an IDT gate (16 or 8 bytes).
    pub const fn gate_size(self) -> u64 {
        match self {
            GuestKind::Vmi64 => 16,
            GuestKind::Vmi32 => 8,
        }
    }

    /// Short name.
    pub const fn name(self) -> &'static str {
        match self {
            GuestKind::Vmi64 => "vmi64",
            GuestKind::Vmi32 => "vmi32",
        }
    }
}

/// Why the personality refuses a descriptor; `Display` names the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// A 32-bit guest installing a 64-bit code segment.
    LongModeSegmentOn32,
    /// A present system descriptor in the GDT of a type other than LDT or
    /// TSS.
    GdtSystemType {
        /// 4-bit type.
        typ: u8,
    },
    /// A present system descriptor in an LDT.
    LdtSystemType {
        /// 4-bit type.
        typ: u8,
    },
    /// The upper half of a 16-byte descriptor has a non-zero type field.
    UpperHalf {
        /// The upper 8 bytes.
        high: u64,
    },
    /// A TSS/LDT base or gate offset that is not canonical.
    NonCanonical {
        /// The address.
        addr: u64,
    },
    /// A present IDT entry that is not an interrupt or trap gate.
    GateType {
        /// 4-bit type (S bit in bit 4).
        typ: u8,
    },
    /// An IDT gate whose code selector is null.
    GateNullSelector,
    /// A 64-bit gate with reserved bits set in its upper half.
    GateReserved {
        /// The upper 8 bytes.
        high: u64,
    },
}

fn system_name(typ: u8) -> &'static str {
    match typ & 0xF {
        0x1 => "16-bit TSS",
        0x2 => "LDT",
        0x3 => "busy 16-bit TSS",
        0x4 => "16-bit call gate",
        0x5 => "task gate",
        0x6 => "16-bit interrupt gate",
        0x7 => "16-bit trap gate",
        0x9 => "TSS",
        0xB => "busy TSS",
        0xC => "call gate",
        0xE => "interrupt gate",
        0xF => "trap gate",
        _ => "reserved type",
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reject::LongModeSegmentOn32 => f.write_str(
                "L bit set in a code/data descriptor: a 32-bit VMI guest may not install 64-bit segments",
            ),
            Reject::GdtSystemType { typ } => write!(
                f,
                "present system descriptor of type {typ:#x} ({}) in the GDT: only LDT (2) and TSS (9, 0xb) descriptors are accepted",
                system_name(typ)
            ),
            Reject::LdtSystemType { typ } => write!(
                f,
                "present system descriptor of type {typ:#x} ({}) in an LDT: an LDT holds code and data segments only",
                system_name(typ)
            ),
            Reject::UpperHalf { high } => write!(
                f,
                "upper half {high:#018x} of a 16-byte descriptor has a non-zero type field (bits 40-44 must be 0)"
            ),
            Reject::NonCanonical { addr } => {
                write!(f, "address {addr:#x} is not canonical")
            }
            Reject::GateType { typ } => write!(
                f,
                "IDT entry of type {typ:#x} (S<<4|type): only interrupt (0xe) and trap (0xf) gates are accepted (and task gates from a 32-bit guest)"
            ),
            Reject::GateNullSelector => f.write_str("IDT gate with a null code selector"),
            Reject::GateReserved { high } => write!(
                f,
                "64-bit gate upper half {high:#018x} has reserved bits 32-63 set"
            ),
        }
    }
}

impl core::error::Error for Reject {}

const P: u64 = 1 << 47;
const S: u64 = 1 << 44;
const ACCESSED: u64 = 1 << 40;

fn typ(d: u64) -> u8 {
    ((d >> 40) & 0xF) as u8
}

use pvops::table::is_canonical as canonical;

/// Is `low` the first half of a 16-byte descriptor for `kind`? (64-bit:
/// S = 0 and type LDT, TSS or call gate, as the CPU decides in long mode.)
pub fn is_double(kind: GuestKind, low: u64) -> bool {
    kind == GuestKind::Vmi64 && low & S == 0 && matches!(typ(low), 0x2 | 0x9 | 0xB | 0xC)
}

/// Code/data rule (shared by GDT and LDT): the effective 8 bytes.
pub fn check_segment(kind: GuestKind, d: u64) -> Result<u64, Reject> {
    if d & P == 0 {
        return Ok(d);
    }
    let abi = match kind {
        GuestKind::Vmi64 => Abi::Pv64,
        GuestKind::Vmi32 => Abi::Pv32,
    };
    match check_descriptor_with(abi, super::rom::VIRTUAL_TOP, d) {
        Ok(e) => Ok(e | ACCESSED),
        Err(XenReject::LongModeSegmentOnPv32) => Err(Reject::LongModeSegmentOn32),
        // Only reached for system descriptors, which callers handle first.
        Err(_) => Err(Reject::GdtSystemType { typ: typ(d) }),
    }
}

/// One GDT entry: `high` is the upper half when [`is_double`] says the
/// entry takes two slots. Returns the effective low (and high) half.
pub fn check_gdt_entry(
    kind: GuestKind,
    low: u64,
    high: Option<u64>,
) -> Result<(u64, Option<u64>), Reject> {
    if low & P == 0 {
        // A not-present 16-byte descriptor: the CPU never reads its upper
        // half through it, but that slot can still be named by a selector
        // of its own, so it must not be usable as a descriptor (type field
        // zero: a reserved system type the CPU refuses).
        if let Some(h) = high
            && (h >> 40) & 0x1F != 0
        {
            return Err(Reject::UpperHalf { high: h });
        }
        return Ok((low, high));
    }
    if low & S != 0 {
        return Ok((check_segment(kind, low)?, None));
    }
    let t = typ(low);
    match t {
        0x2 | 0x9 | 0xB => {}
        _ => return Err(Reject::GdtSystemType { typ: t }),
    }
    if let Some(h) = high {
        if (h >> 40) & 0x1F != 0 {
            return Err(Reject::UpperHalf { high: h });
        }
        let base = ((low >> 16) & 0xFF_FFFF) | ((low >> 32) & 0xFF00_0000) | (h << 32);
        if !canonical(base) {
            return Err(Reject::NonCanonical { addr: base });
        }
    }
    Ok((low, high))
}

/// One LDT entry: code/data only.
pub fn check_ldt_entry(kind: GuestKind, d: u64) -> Result<u64, Reject> {
    if d & P != 0 && d & S == 0 {
        return Err(Reject::LdtSystemType { typ: typ(d) });
    }
    check_segment(kind, d)
}

/// One IDT gate (`high` is 0 for a 32-bit guest): the effective gate.
pub fn check_gate(kind: GuestKind, low: u64, high: u64) -> Result<(u64, u64), Reject> {
    if low & P == 0 {
        return Ok((low, high));
    }
    let st = ((low >> 40) & 0x1F) as u8;
    let ok = match kind {
        GuestKind::Vmi64 => matches!(st, 0xE | 0xF),
        GuestKind::Vmi32 => matches!(st, 0xE | 0xF | 0x5),
    };
    if !ok {
        return Err(Reject::GateType { typ: st });
    }
    let sel = (low >> 16) & 0xFFFF;
    if sel & !3 == 0 {
        return Err(Reject::GateNullSelector);
    }
    if kind == GuestKind::Vmi64 {
        if high >> 32 != 0 {
            return Err(Reject::GateReserved { high });
        }
        let off = (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000) | (high << 32);
        if !canonical(off) {
            return Err(Reject::NonCanonical { addr: off });
        }
    }
    // Task gates name a TSS; their selector keeps its RPL.
    if st == 0x5 {
        return Ok((low, high));
    }
    let new_sel = (sel & !3) | kind.krpl();
    Ok(((low & !(0xFFFF << 16)) | (new_sel << 16), high))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvops::{Gate64, Ring, Selector, SystemDescriptor, presets};

    #[test]
    fn segments_compressed_and_accessed() {
        let k = presets::KERNEL_CODE64.0;
        assert_eq!(check_segment(GuestKind::Vmi64, k), Ok(k | (3 << 45)));
        let d = presets::I386_KERNEL_DATA.0; // accessed clear, DPL 0
        assert_eq!(
            check_segment(GuestKind::Vmi32, d),
            Ok(d | (1 << 45) | ACCESSED)
        );
        // DPL 3 stays 3.
        let u = presets::USER_DATA.0;
        assert_eq!(check_segment(GuestKind::Vmi32, u), Ok(u));
        assert_eq!(
            check_segment(GuestKind::Vmi32, k),
            Err(Reject::LongModeSegmentOn32)
        );
        // Not present: untouched.
        assert_eq!(check_segment(GuestKind::Vmi64, k & !P), Ok(k & !P));
    }

    #[test]
    fn system_descriptors() {
        let tss = SystemDescriptor::tss(0xffff_8000_0000_1000, 0x67).unwrap();
        assert!(is_double(GuestKind::Vmi64, tss.low));
        assert!(!is_double(GuestKind::Vmi32, tss.low));
        assert_eq!(
            check_gdt_entry(GuestKind::Vmi64, tss.low, Some(tss.high)),
            Ok((tss.low, Some(tss.high)))
        );
        assert!(matches!(
            check_gdt_entry(GuestKind::Vmi64, tss.low, Some(tss.high | (9 << 40))),
            Err(Reject::UpperHalf { .. })
        ));
        assert!(matches!(
            check_gdt_entry(GuestKind::Vmi64, tss.low, Some(0x1234_5678)),
            Err(Reject::NonCanonical { .. })
        ));
        let gate = P | (0xC << 40);
        assert_eq!(
            check_gdt_entry(GuestKind::Vmi64, gate, Some(0)),
            Err(Reject::GdtSystemType { typ: 0xC })
        );
        assert_eq!(
            check_ldt_entry(GuestKind::Vmi64, tss.low),
            Err(Reject::LdtSystemType { typ: 9 })
        );
        assert!(check_ldt_entry(GuestKind::Vmi64, presets::USER_DATA.0).is_ok());
    }

    #[test]
    fn gates() {
        let g = Gate64::interrupt(Selector(0x10), 0xffff_ffff_8100_0000, Ring::Ring0);
        let (lo, hi) = check_gate(GuestKind::Vmi64, g.low, g.high).unwrap();
        assert_eq!(Gate64 { low: lo, high: hi }.selector(), Selector(0x13));
        assert_eq!(hi, g.high);
        let call = Gate64::call(Selector(0x10), 0, Ring::Ring0);
        assert_eq!(
            check_gate(GuestKind::Vmi64, call.low, call.high),
            Err(Reject::GateType { typ: 0xC })
        );
        let null = Gate64::interrupt(Selector(0), 0x1000, Ring::Ring0);
        assert_eq!(
            check_gate(GuestKind::Vmi64, null.low, null.high),
            Err(Reject::GateNullSelector)
        );
        assert!(matches!(
            check_gate(GuestKind::Vmi64, g.low, g.high | (1 << 40)),
            Err(Reject::GateReserved { .. })
        ));
        let task = pvops::Gate32::task(Selector(0xf8), Ring::Ring0);
        assert!(check_gate(GuestKind::Vmi32, task.0, 0).is_ok());
        assert!(check_gate(GuestKind::Vmi64, task.0, 0).is_err());
    }
}
