//! Segment descriptors: the 8-byte code/data/system descriptor and the
//! 16-byte long-mode system descriptor (TSS, LDT).
//!
//! Layout of an 8-byte descriptor (Intel SDM vol. 3, 3.4.5):
//!
//! | bits  | field                                   |
//! |-------|-----------------------------------------|
//! | 0-15  | limit 15:0                              |
//! | 16-39 | base 23:0                               |
//! | 40-43 | type                                    |
//! | 44    | S (1 = code/data, 0 = system)           |
//! | 45-46 | DPL                                     |
//! | 47    | P (present)                             |
//! | 48-51 | limit 19:16                             |
//! | 52    | AVL                                     |
//! | 53    | L (64-bit code)                         |
//! | 54    | D/B                                     |
//! | 55    | G (limit in 4 KiB units)                |
//! | 56-63 | base 31:24                              |
//!
//! [`DescriptorFields`] names every one of those 64 bits, so
//! `Descriptor::from_fields(d.fields()) == Ok(d)` for every `u64` (a property
//! test checks it).
//!
//! The `x86` crate has a `DescriptorBuilder`, but in 0.52 it decides between
//! 32- and 64-bit encodings with run-time type checks that panic on a
//! mismatch, and it has no 16-byte system descriptor table type; we encode
//! by hand here and keep every constructor fallible instead.

use core::fmt;

use bitflags::bitflags;
use static_assertions::const_assert_eq;

use crate::error::{PvError, Result};
use crate::selector::{Ring, ring_from_bits};

bitflags! {
    /// The 4-bit type field of a code or data descriptor (S = 1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SegmentType: u8 {
        /// Set by the CPU when the segment is loaded.
        const ACCESSED = 1 << 0;
        /// Data: writable. Code: readable.
        const WRITABLE_OR_READABLE = 1 << 1;
        /// Data: expand-down. Code: conforming.
        const EXPAND_DOWN_OR_CONFORMING = 1 << 2;
        /// Code segment (else data).
        const CODE = 1 << 3;
    }
}

/// The 4-bit type field of a system descriptor (S = 0), legacy names.
///
/// In long mode the 16-bit types (1, 3, 4, 6, 7) and the task gate (5) are
/// invalid; `Tss`, `TssBusy`, `CallGate`, `InterruptGate`, `TrapGate` mean
/// their 64-bit forms and `Ldt` is a 16-byte descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SystemType {
    /// 0: reserved. (Also the type field of the upper half of a 16-byte
    /// descriptor.)
    Reserved0 = 0,
    /// 1: 16-bit TSS (available).
    Tss16 = 1,
    /// 2: LDT.
    Ldt = 2,
    /// 3: 16-bit TSS (busy).
    Tss16Busy = 3,
    /// 4: 16-bit call gate.
    CallGate16 = 4,
    /// 5: task gate.
    TaskGate = 5,
    /// 6: 16-bit interrupt gate.
    InterruptGate16 = 6,
    /// 7: 16-bit trap gate.
    TrapGate16 = 7,
    /// 8: reserved.
    Reserved8 = 8,
    /// 9: 32/64-bit TSS (available).
    Tss = 9,
    /// 0xA: reserved.
    ReservedA = 0xA,
    /// 0xB: 32/64-bit TSS (busy).
    TssBusy = 0xB,
    /// 0xC: 32/64-bit call gate.
    CallGate = 0xC,
    /// 0xD: reserved.
    ReservedD = 0xD,
    /// 0xE: 32/64-bit interrupt gate.
    InterruptGate = 0xE,
    /// 0xF: 32/64-bit trap gate.
    TrapGate = 0xF,
}

impl SystemType {
    /// Decode the low 4 bits.
    pub const fn from_bits(bits: u8) -> SystemType {
        use SystemType::*;
        match bits & 0xf {
            0 => Reserved0,
            1 => Tss16,
            2 => Ldt,
            3 => Tss16Busy,
            4 => CallGate16,
            5 => TaskGate,
            6 => InterruptGate16,
            7 => TrapGate16,
            8 => Reserved8,
            9 => Tss,
            0xA => ReservedA,
            0xB => TssBusy,
            0xC => CallGate,
            0xD => ReservedD,
            0xE => InterruptGate,
            _ => TrapGate,
        }
    }

    /// Plain-words name.
    pub const fn describe(self) -> &'static str {
        use SystemType::*;
        match self {
            Reserved0 => "reserved (type 0)",
            Tss16 => "16-bit TSS (available)",
            Ldt => "LDT",
            Tss16Busy => "16-bit TSS (busy)",
            CallGate16 => "16-bit call gate",
            TaskGate => "task gate",
            InterruptGate16 => "16-bit interrupt gate",
            TrapGate16 => "16-bit trap gate",
            Reserved8 => "reserved (type 8)",
            Tss => "TSS (available)",
            ReservedA => "reserved (type 0xA)",
            TssBusy => "TSS (busy)",
            CallGate => "call gate",
            ReservedD => "reserved (type 0xD)",
            InterruptGate => "interrupt gate",
            TrapGate => "trap gate",
        }
    }
}

/// Every field of an 8-byte descriptor, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorFields {
    /// Segment base (32 bits).
    pub base: u32,
    /// Raw 20-bit limit (in bytes, or 4 KiB units when `granularity`).
    pub limit: u32,
    /// The 4-bit type field.
    pub typ: u8,
    /// S: 1 = code/data, 0 = system.
    pub code_or_data: bool,
    /// Descriptor privilege level.
    pub dpl: Ring,
    /// P.
    pub present: bool,
    /// AVL (available to software).
    pub avl: bool,
    /// L: 64-bit code segment.
    pub long_mode: bool,
    /// D/B: default operand size 32 / big stack.
    pub default_big: bool,
    /// G: limit counted in 4 KiB pages.
    pub granularity: bool,
}

/// An 8-byte segment descriptor (code, data, or 32-bit-mode system
/// descriptor), stored exactly as the CPU reads it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(pub u64);

const_assert_eq!(core::mem::size_of::<Descriptor>(), 8);

impl Descriptor {
    /// The null descriptor.
    pub const NULL: Descriptor = Descriptor(0);

    /// Encode from fields; fails if `limit` exceeds 20 bits or `typ` 4 bits.
    pub const fn from_fields(f: DescriptorFields) -> Result<Descriptor> {
        if f.limit > 0xf_ffff {
            return Err(PvError::FieldOutOfRange {
                field: "limit",
                value: f.limit as u64,
                max: 0xf_ffff,
            });
        }
        if f.typ > 0xf {
            return Err(PvError::FieldOutOfRange {
                field: "type",
                value: f.typ as u64,
                max: 0xf,
            });
        }
        let base = f.base as u64;
        let limit = f.limit as u64;
        let v = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((f.typ as u64) << 40)
            | ((f.code_or_data as u64) << 44)
            | ((f.dpl as u64) << 45)
            | ((f.present as u64) << 47)
            | (((limit >> 16) & 0xf) << 48)
            | ((f.avl as u64) << 52)
            | ((f.long_mode as u64) << 53)
            | ((f.default_big as u64) << 54)
            | ((f.granularity as u64) << 55)
            | (((base >> 24) & 0xff) << 56);
        Ok(Descriptor(v))
    }

    /// Decode every field.
    pub const fn fields(self) -> DescriptorFields {
        DescriptorFields {
            base: self.base(),
            limit: self.raw_limit(),
            typ: self.typ(),
            code_or_data: self.is_code_or_data(),
            dpl: self.dpl(),
            present: self.present(),
            avl: self.0 & (1 << 52) != 0,
            long_mode: self.long_mode(),
            default_big: self.default_big(),
            granularity: self.granularity(),
        }
    }

    /// A flat (base 0, 4 GiB) code or data segment.
    ///
    /// `flags` are the Linux `GDT_ENTRY_INIT` flag word: bits 0-7 the access
    /// byte (type | S | DPL | P), bits 12-15 AVL, L, D/B, G.
    pub const fn from_linux_flags(flags: u16, base: u32, limit: u32) -> Descriptor {
        let base = base as u64;
        let limit = limit as u64;
        let flags = flags as u64;
        Descriptor(
            ((base & 0xff00_0000) << 32)
                | ((base & 0x00ff_ffff) << 16)
                | (limit & 0x0000_ffff)
                | ((limit & 0x000f_0000) << 32)
                | ((flags & 0x0000_f0ff) << 40),
        )
    }

    /// A flat readable, non-conforming code segment: 64-bit (L=1, D=0) when
    /// `long_mode`, else 32-bit (D=1). Base 0, limit 0xfffff pages, present,
    /// accessed bit clear.
    pub const fn code(dpl: Ring, long_mode: bool) -> Descriptor {
        let f = DescriptorFields {
            base: 0,
            limit: 0xf_ffff,
            typ: SegmentType::CODE.bits() | SegmentType::WRITABLE_OR_READABLE.bits(),
            code_or_data: true,
            dpl,
            present: true,
            avl: false,
            long_mode,
            default_big: !long_mode,
            granularity: true,
        };
        match Descriptor::from_fields(f) {
            Ok(d) => d,
            Err(_) => Descriptor::NULL, // unreachable: all fields in range
        }
    }

    /// A flat, writable 32-bit data segment (base 0, 4 GiB), present,
    /// accessed bit clear.
    pub const fn data(dpl: Ring) -> Descriptor {
        let f = DescriptorFields {
            base: 0,
            limit: 0xf_ffff,
            typ: SegmentType::WRITABLE_OR_READABLE.bits(),
            code_or_data: true,
            dpl,
            present: true,
            avl: false,
            long_mode: false,
            default_big: true,
            granularity: true,
        };
        match Descriptor::from_fields(f) {
            Ok(d) => d,
            Err(_) => Descriptor::NULL,
        }
    }

    /// A data segment with explicit base and byte-granular or page-granular
    /// limit (`limit_bytes` is the last valid offset, as in the SDM's
    /// "effective limit"). Errors if the limit cannot be expressed.
    pub const fn data_segment(base: u32, limit_bytes: u32, dpl: Ring) -> Result<Descriptor> {
        let (limit, granularity) = if limit_bytes <= 0xf_ffff {
            (limit_bytes, false)
        } else if limit_bytes & 0xfff == 0xfff {
            (limit_bytes >> 12, true)
        } else {
            return Err(PvError::FieldOutOfRange {
                field: "limit (above 1 MiB it must end on a 4 KiB page: low 12 bits all ones)",
                value: limit_bytes as u64,
                max: 0xf_ffff,
            });
        };
        Descriptor::from_fields(DescriptorFields {
            base,
            limit,
            typ: SegmentType::WRITABLE_OR_READABLE.bits(),
            code_or_data: true,
            dpl,
            present: true,
            avl: false,
            long_mode: false,
            default_big: true,
            granularity,
        })
    }

    /// An 8-byte (32-bit mode) system descriptor: TSS or LDT.
    pub const fn system32(typ: SystemType, base: u32, limit: u32, dpl: Ring) -> Result<Descriptor> {
        Descriptor::from_fields(DescriptorFields {
            base,
            limit,
            typ: typ as u8,
            code_or_data: false,
            dpl,
            present: true,
            avl: false,
            long_mode: false,
            default_big: false,
            granularity: false,
        })
    }

    /// Base address (32 bits).
    pub const fn base(self) -> u32 {
        (((self.0 >> 16) & 0xff_ffff) | ((self.0 >> 32) & 0xff00_0000)) as u32
    }

    /// Raw 20-bit limit field.
    pub const fn raw_limit(self) -> u32 {
        ((self.0 & 0xffff) | ((self.0 >> 32) & 0xf_0000)) as u32
    }

    /// Limit in bytes, scaled by G (the last valid offset).
    pub const fn effective_limit(self) -> u32 {
        let raw = self.raw_limit();
        if self.granularity() {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }

    /// The 4-bit type field.
    pub const fn typ(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }

    /// The S bit and type as one 5-bit number (`S << 4 | type`), the form
    /// `lar` and error messages use.
    pub const fn s_type(self) -> u8 {
        ((self.0 >> 40) & 0x1f) as u8
    }

    /// S = 1: code or data.
    pub const fn is_code_or_data(self) -> bool {
        self.0 & (1 << 44) != 0
    }

    /// Code segment (S = 1 and type bit 3).
    pub const fn is_code(self) -> bool {
        self.is_code_or_data() && self.typ() & 8 != 0
    }

    /// Type flags of a code/data descriptor (meaningless for system ones).
    pub const fn segment_type(self) -> SegmentType {
        SegmentType::from_bits_truncate(self.typ())
    }

    /// Type of a system descriptor (meaningless for code/data ones).
    pub const fn system_type(self) -> SystemType {
        SystemType::from_bits(self.typ())
    }

    /// Descriptor privilege level.
    pub const fn dpl(self) -> Ring {
        ring_from_bits((self.0 >> 45) as u8)
    }

    /// P.
    pub const fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }

    /// L.
    pub const fn long_mode(self) -> bool {
        self.0 & (1 << 53) != 0
    }

    /// D/B.
    pub const fn default_big(self) -> bool {
        self.0 & (1 << 54) != 0
    }

    /// G.
    pub const fn granularity(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// Same descriptor with another DPL.
    pub const fn with_dpl(self, dpl: Ring) -> Descriptor {
        Descriptor((self.0 & !(3 << 45)) | ((dpl as u64) << 45))
    }

    /// Same descriptor with the accessed bit set (code/data) — what
    /// lguest-style hypervisors do so the CPU never writes a read-only GDT.
    pub const fn with_accessed(self) -> Descriptor {
        Descriptor(self.0 | (1 << 40))
    }

    /// The low and high 32-bit words (`a`, `b` in Xen's and VMI's terms).
    pub const fn words(self) -> (u32, u32) {
        (self.0 as u32, (self.0 >> 32) as u32)
    }

    /// Reassemble from low and high 32-bit words.
    pub const fn from_words(lo: u32, hi: u32) -> Descriptor {
        Descriptor(lo as u64 | ((hi as u64) << 32))
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

impl fmt::Display for Descriptor {
    /// Plain words: `present DPL0 64-bit code, base 0x0, limit 0xffffffff, readable, accessed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = *self;
        write!(
            f,
            "{} DPL{} ",
            if d.present() {
                "present"
            } else {
                "not-present"
            },
            d.dpl() as u8
        )?;
        if d.is_code_or_data() {
            let t = d.segment_type();
            if d.is_code() {
                let width = if d.long_mode() && d.default_big() {
                    "invalid (L and D both set)"
                } else if d.long_mode() {
                    "64-bit"
                } else if d.default_big() {
                    "32-bit"
                } else {
                    "16-bit"
                };
                write!(f, "{width} code")?;
            } else {
                write!(
                    f,
                    "{} data",
                    if d.default_big() { "32-bit" } else { "16-bit" }
                )?;
            }
            write!(
                f,
                ", base {:#x}, limit {:#x}{}",
                d.base(),
                d.effective_limit(),
                if d.granularity() {
                    " (4 KiB granular)"
                } else {
                    ""
                }
            )?;
            let rw = t.contains(SegmentType::WRITABLE_OR_READABLE);
            let ec = t.contains(SegmentType::EXPAND_DOWN_OR_CONFORMING);
            if d.is_code() {
                f.write_str(if rw { ", readable" } else { ", execute-only" })?;
                if ec {
                    f.write_str(", conforming")?;
                }
            } else {
                f.write_str(if rw { ", writable" } else { ", read-only" })?;
                if ec {
                    f.write_str(", expand-down")?;
                }
            }
            if t.contains(SegmentType::ACCESSED) {
                f.write_str(", accessed")?;
            }
        } else {
            let st = d.system_type();
            match st {
                SystemType::CallGate
                | SystemType::CallGate16
                | SystemType::InterruptGate
                | SystemType::InterruptGate16
                | SystemType::TrapGate
                | SystemType::TrapGate16
                | SystemType::TaskGate => {
                    let g = crate::gate::Gate32(d.0);
                    write!(
                        f,
                        "{}, selector {}, offset {:#x}",
                        st.describe(),
                        g.selector(),
                        g.offset()
                    )?;
                    if st == SystemType::CallGate || st == SystemType::CallGate16 {
                        write!(f, ", {} parameters", g.param_count())?;
                    }
                }
                _ => write!(
                    f,
                    "{}, base {:#x}, limit {:#x}",
                    st.describe(),
                    d.base(),
                    d.effective_limit()
                )?,
            }
        }
        if d.0 & (1 << 52) != 0 {
            f.write_str(", AVL")?;
        }
        Ok(())
    }
}

/// Every field of a 16-byte long-mode system descriptor, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemDescriptorFields {
    /// 64-bit base.
    pub base: u64,
    /// Raw 20-bit limit.
    pub limit: u32,
    /// 4-bit type (2 = LDT, 9 = TSS available, 0xB = TSS busy).
    pub typ: u8,
    /// DPL.
    pub dpl: Ring,
    /// P.
    pub present: bool,
    /// AVL.
    pub avl: bool,
    /// G.
    pub granularity: bool,
    /// The S, L and D/B bits of the low half (bit 0 = S, 1 = L, 2 = D/B);
    /// zero in a well-formed descriptor, kept so decoding is lossless.
    pub low_reserved: u8,
    /// Bits 96-127 (must be zero; bits 104-108 are the upper half's "type"
    /// field, which must be 0 so the upper half is never mistaken for a
    /// legacy descriptor).
    pub high_reserved: u32,
}

/// A 16-byte long-mode system descriptor (TSS or LDT): occupies two GDT
/// slots, low half first.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C, align(8))]
pub struct SystemDescriptor {
    /// Low 8 bytes (legacy layout with base 31:0).
    pub low: u64,
    /// High 8 bytes: base 63:32 then reserved.
    pub high: u64,
}

const_assert_eq!(core::mem::size_of::<SystemDescriptor>(), 16);

impl SystemDescriptor {
    /// Encode from fields.
    pub const fn from_fields(f: SystemDescriptorFields) -> Result<SystemDescriptor> {
        if f.low_reserved > 7 {
            return Err(PvError::FieldOutOfRange {
                field: "low_reserved",
                value: f.low_reserved as u64,
                max: 7,
            });
        }
        let low = match Descriptor::from_fields(DescriptorFields {
            base: f.base as u32,
            limit: f.limit,
            typ: f.typ,
            code_or_data: f.low_reserved & 1 != 0,
            dpl: f.dpl,
            present: f.present,
            avl: f.avl,
            long_mode: f.low_reserved & 2 != 0,
            default_big: f.low_reserved & 4 != 0,
            granularity: f.granularity,
        }) {
            Ok(d) => d,
            Err(e) => return Err(e),
        };
        Ok(SystemDescriptor {
            low: low.0,
            high: (f.base >> 32) | ((f.high_reserved as u64) << 32),
        })
    }

    /// Decode every field.
    pub const fn fields(self) -> SystemDescriptorFields {
        let l = Descriptor(self.low);
        SystemDescriptorFields {
            base: self.base(),
            limit: l.raw_limit(),
            typ: l.typ(),
            dpl: l.dpl(),
            present: l.present(),
            avl: self.low & (1 << 52) != 0,
            granularity: l.granularity(),
            low_reserved: (l.is_code_or_data() as u8)
                | ((l.long_mode() as u8) << 1)
                | ((l.default_big() as u8) << 2),
            high_reserved: (self.high >> 32) as u32,
        }
    }

    /// A present 64-bit TSS descriptor (available). `limit` is the last
    /// valid byte offset: [`Tss64::LIMIT`](crate::Tss64::LIMIT) (0x67, the
    /// least a usable TSS has) without an I/O bitmap. For a
    /// [`TssStorage`](crate::TssStorage), its `descriptor()` does this.
    pub const fn tss(base: u64, limit: u32) -> Result<SystemDescriptor> {
        SystemDescriptor::system(SystemType::Tss, base, limit)
    }

    /// A present LDT descriptor for `entries` 8-byte entries (1..=8192).
    pub const fn ldt(base: u64, entries: u32) -> Result<SystemDescriptor> {
        if entries == 0 || entries > 8192 {
            return Err(PvError::TableTooLarge {
                table: crate::TableKind::Ldt,
                entries,
                max: 8192,
            });
        }
        SystemDescriptor::system(SystemType::Ldt, base, entries * 8 - 1)
    }

    const fn system(typ: SystemType, base: u64, limit: u32) -> Result<SystemDescriptor> {
        let (limit, granularity) = if limit <= 0xf_ffff {
            (limit, false)
        } else {
            (limit >> 12, true)
        };
        SystemDescriptor::from_fields(SystemDescriptorFields {
            base,
            limit,
            typ: typ as u8,
            dpl: Ring::Ring0,
            present: true,
            avl: false,
            granularity,
            low_reserved: 0,
            high_reserved: 0,
        })
    }

    /// 64-bit base.
    pub const fn base(self) -> u64 {
        Descriptor(self.low).base() as u64 | (self.high << 32)
    }

    /// Type.
    pub const fn system_type(self) -> SystemType {
        SystemType::from_bits(Descriptor(self.low).typ())
    }

    /// The low half as an 8-byte descriptor.
    pub const fn low_half(self) -> Descriptor {
        Descriptor(self.low)
    }

    /// Limit in bytes, scaled by G.
    pub const fn effective_limit(self) -> u32 {
        Descriptor(self.low).effective_limit()
    }

    /// Same descriptor with the busy bit (type bit 1) cleared, as for an
    /// available TSS.
    pub const fn without_busy(self) -> SystemDescriptor {
        SystemDescriptor {
            low: self.low & !(2 << 40),
            high: self.high,
        }
    }
}

impl fmt::Debug for SystemDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SystemDescriptor({:#018x}, {:#018x})",
            self.low, self.high
        )
    }
}

impl fmt::Display for SystemDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = Descriptor(self.low);
        write!(
            f,
            "{} DPL{} 64-bit {}, base {:#x}, limit {:#x}",
            if l.present() {
                "present"
            } else {
                "not-present"
            },
            l.dpl() as u8,
            self.system_type().describe(),
            self.base(),
            self.effective_limit()
        )
    }
}

/// An entry written into the GDT: one 8-byte slot, or (long mode) a 16-byte
/// system descriptor taking two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GdtEntry {
    /// One slot.
    Single(Descriptor),
    /// Two slots (long-mode TSS/LDT).
    Double(SystemDescriptor),
}

impl GdtEntry {
    /// Slots taken (1 or 2).
    pub const fn slots(&self) -> u32 {
        match self {
            GdtEntry::Single(_) => 1,
            GdtEntry::Double(_) => 2,
        }
    }
}

impl From<Descriptor> for GdtEntry {
    fn from(d: Descriptor) -> Self {
        GdtEntry::Single(d)
    }
}

impl From<SystemDescriptor> for GdtEntry {
    fn from(d: SystemDescriptor) -> Self {
        GdtEntry::Double(d)
    }
}
