//! Gate descriptors: interrupt, trap, call and task gates, in their 8-byte
//! (32-bit mode) and 16-byte (long mode) forms.
//!
//! 8-byte gate: offset 15:0 (bits 0-15), selector (16-31), byte 4 (32-39:
//! call-gate parameter count in bits 32-36), type (40-43), S = 0 (44), DPL
//! (45-46), P (47), offset 31:16 (48-63).
//!
//! 16-byte gate: the same low half with byte 4 holding the IST index in bits
//! 32-34 (interrupt and trap gates), then offset 63:32 (64-95) and 32
//! reserved bits (96-127).
//!
//! Unlike the `x86` crate 0.52 (which applies IST only to interrupt gates), an
//! IST index is accepted on both interrupt and trap gates, as the SDM allows.

use core::fmt;

use static_assertions::const_assert_eq;

use crate::descriptor::SystemType;
use crate::error::{PvError, Result};
use crate::selector::{Ring, Selector, ring_from_bits};

/// Kind of gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GateKind {
    /// Interrupt gate: clears IF on entry.
    Interrupt,
    /// Trap gate: leaves IF alone.
    Trap,
    /// Call gate (far call / far jump through a selector).
    Call,
    /// Task gate (32-bit only): switches task through a TSS selector.
    Task,
}

impl GateKind {
    /// The 32/64-bit system type for this kind.
    pub const fn system_type(self) -> SystemType {
        match self {
            GateKind::Interrupt => SystemType::InterruptGate,
            GateKind::Trap => SystemType::TrapGate,
            GateKind::Call => SystemType::CallGate,
            GateKind::Task => SystemType::TaskGate,
        }
    }

    /// Kind of a 32-bit-mode system type (16-bit gates decode as `None`).
    pub const fn from_system_type(t: SystemType) -> Option<GateKind> {
        match t {
            SystemType::InterruptGate => Some(GateKind::Interrupt),
            SystemType::TrapGate => Some(GateKind::Trap),
            SystemType::CallGate => Some(GateKind::Call),
            SystemType::TaskGate => Some(GateKind::Task),
            _ => None,
        }
    }
}

/// Every field of an 8-byte gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate32Fields {
    /// Entry point offset.
    pub offset: u32,
    /// Target code segment selector (TSS selector for a task gate).
    pub selector: Selector,
    /// Byte 4: parameter count (bits 0-4) for call gates, else reserved.
    pub byte4: u8,
    /// The 4-bit type.
    pub typ: u8,
    /// The S bit (must be 0 for a gate; kept for lossless decoding).
    pub s: bool,
    /// DPL.
    pub dpl: Ring,
    /// P.
    pub present: bool,
}

/// An 8-byte gate (32-bit protected mode IDT entry, or call/task gate in a
/// GDT/LDT).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Gate32(pub u64);

const_assert_eq!(core::mem::size_of::<Gate32>(), 8);

impl Gate32 {
    /// A not-present, all-zero gate.
    pub const MISSING: Gate32 = Gate32(0);

    /// Encode from fields.
    pub const fn from_fields(f: Gate32Fields) -> Result<Gate32> {
        if f.typ > 0xf {
            return Err(PvError::FieldOutOfRange {
                field: "type",
                value: f.typ as u64,
                max: 0xf,
            });
        }
        let off = f.offset as u64;
        Ok(Gate32(
            (off & 0xffff)
                | ((f.selector.0 as u64) << 16)
                | ((f.byte4 as u64) << 32)
                | ((f.typ as u64) << 40)
                | ((f.s as u64) << 44)
                | ((f.dpl as u64) << 45)
                | ((f.present as u64) << 47)
                | ((off >> 16) << 48),
        ))
    }

    /// Decode every field.
    pub const fn fields(self) -> Gate32Fields {
        Gate32Fields {
            offset: self.offset(),
            selector: self.selector(),
            byte4: (self.0 >> 32) as u8,
            typ: ((self.0 >> 40) & 0xf) as u8,
            s: self.0 & (1 << 44) != 0,
            dpl: self.dpl(),
            present: self.present(),
        }
    }

    /// A present gate of `kind` (32-bit form).
    pub const fn new(kind: GateKind, selector: Selector, offset: u32, dpl: Ring) -> Gate32 {
        let off = offset as u64;
        Gate32(
            (off & 0xffff)
                | ((selector.0 as u64) << 16)
                | ((kind.system_type() as u64) << 40)
                | ((dpl as u64) << 45)
                | (1 << 47)
                | ((off >> 16) << 48),
        )
    }

    /// A 32-bit interrupt gate.
    pub const fn interrupt(selector: Selector, offset: u32, dpl: Ring) -> Gate32 {
        Gate32::new(GateKind::Interrupt, selector, offset, dpl)
    }

    /// A 32-bit trap gate.
    pub const fn trap(selector: Selector, offset: u32, dpl: Ring) -> Gate32 {
        Gate32::new(GateKind::Trap, selector, offset, dpl)
    }

    /// A task gate naming a TSS selector.
    pub const fn task(tss: Selector, dpl: Ring) -> Gate32 {
        Gate32::new(GateKind::Task, tss, 0, dpl)
    }

    /// A 32-bit call gate with `params` (0..=31) dwords copied between stacks.
    pub const fn call(selector: Selector, offset: u32, dpl: Ring, params: u8) -> Result<Gate32> {
        if params > 31 {
            return Err(PvError::FieldOutOfRange {
                field: "call gate parameter count",
                value: params as u64,
                max: 31,
            });
        }
        Ok(Gate32(
            Gate32::new(GateKind::Call, selector, offset, dpl).0 | ((params as u64) << 32),
        ))
    }

    /// A 32-bit interrupt gate whose offset is `handler`'s address (see
    /// [`Gate64::interrupt_handler`]); errors if the address does not fit
    /// 32 bits (a 64-bit host).
    pub fn interrupt_handler(
        selector: Selector,
        handler: unsafe extern "C" fn(),
        dpl: Ring,
    ) -> Result<Gate32> {
        match handler_addr32(handler) {
            Ok(a) => Ok(Gate32::interrupt(selector, a, dpl)),
            Err(e) => Err(e),
        }
    }

    /// A 32-bit trap gate whose offset is `handler`'s address; errors if the
    /// address does not fit 32 bits.
    pub fn trap_handler(
        selector: Selector,
        handler: unsafe extern "C" fn(),
        dpl: Ring,
    ) -> Result<Gate32> {
        match handler_addr32(handler) {
            Ok(a) => Ok(Gate32::trap(selector, a, dpl)),
            Err(e) => Err(e),
        }
    }

    /// Entry offset.
    pub const fn offset(self) -> u32 {
        ((self.0 & 0xffff) | ((self.0 >> 32) & 0xffff_0000)) as u32
    }

    /// Target selector.
    pub const fn selector(self) -> Selector {
        Selector((self.0 >> 16) as u16)
    }

    /// Call-gate parameter count.
    pub const fn param_count(self) -> u8 {
        ((self.0 >> 32) & 0x1f) as u8
    }

    /// Kind, or `None` for a non-gate type or S = 1.
    pub const fn kind(self) -> Option<GateKind> {
        if self.0 & (1 << 44) != 0 {
            return None;
        }
        GateKind::from_system_type(SystemType::from_bits((self.0 >> 40) as u8))
    }

    /// DPL.
    pub const fn dpl(self) -> Ring {
        ring_from_bits((self.0 >> 45) as u8)
    }

    /// P.
    pub const fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }
}

impl fmt::Debug for Gate32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate32({:#018x})", self.0)
    }
}

/// Every field of a 16-byte gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate64Fields {
    /// Entry point offset.
    pub offset: u64,
    /// Target code segment selector.
    pub selector: Selector,
    /// Byte 4: IST index in bits 0-2 (interrupt/trap gates), rest reserved.
    pub byte4: u8,
    /// The 4-bit type.
    pub typ: u8,
    /// The S bit (0 for a gate).
    pub s: bool,
    /// DPL.
    pub dpl: Ring,
    /// P.
    pub present: bool,
    /// Bits 96-127 (reserved; bits 104-108 must be 0 in a call gate).
    pub high_reserved: u32,
}

/// A 16-byte long-mode gate (IDT entry or call gate).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C, align(16))]
pub struct Gate64 {
    /// Low 8 bytes.
    pub low: u64,
    /// High 8 bytes: offset 63:32 and reserved.
    pub high: u64,
}

const_assert_eq!(core::mem::size_of::<Gate64>(), 16);

impl Gate64 {
    /// A not-present, all-zero gate.
    pub const MISSING: Gate64 = Gate64 { low: 0, high: 0 };

    /// Encode from fields.
    pub const fn from_fields(f: Gate64Fields) -> Result<Gate64> {
        let low = match Gate32::from_fields(Gate32Fields {
            offset: f.offset as u32,
            selector: f.selector,
            byte4: f.byte4,
            typ: f.typ,
            s: f.s,
            dpl: f.dpl,
            present: f.present,
        }) {
            Ok(g) => g.0,
            Err(e) => return Err(e),
        };
        Ok(Gate64 {
            low,
            high: (f.offset >> 32) | ((f.high_reserved as u64) << 32),
        })
    }

    /// Decode every field.
    pub const fn fields(self) -> Gate64Fields {
        let l = Gate32(self.low).fields();
        Gate64Fields {
            offset: self.offset(),
            selector: l.selector,
            byte4: l.byte4,
            typ: l.typ,
            s: l.s,
            dpl: l.dpl,
            present: l.present,
            high_reserved: (self.high >> 32) as u32,
        }
    }

    /// A present 64-bit gate. Task gates do not exist in long mode.
    pub const fn new(kind: GateKind, selector: Selector, offset: u64, dpl: Ring) -> Result<Gate64> {
        if let GateKind::Task = kind {
            return Err(PvError::Unsupported {
                backend: "long mode",
                op: "task gate",
            });
        }
        Ok(Gate64 {
            low: Gate32::new(kind, selector, offset as u32, dpl).0,
            high: offset >> 32,
        })
    }

    /// A 64-bit interrupt gate (IST 0).
    pub const fn interrupt(selector: Selector, offset: u64, dpl: Ring) -> Gate64 {
        Gate64 {
            low: Gate32::interrupt(selector, offset as u32, dpl).0,
            high: offset >> 32,
        }
    }

    /// A 64-bit trap gate (IST 0).
    pub const fn trap(selector: Selector, offset: u64, dpl: Ring) -> Gate64 {
        Gate64 {
            low: Gate32::trap(selector, offset as u32, dpl).0,
            high: offset >> 32,
        }
    }

    /// A 64-bit call gate (no parameter copying in long mode).
    pub const fn call(selector: Selector, offset: u64, dpl: Ring) -> Gate64 {
        Gate64 {
            low: Gate32::new(GateKind::Call, selector, offset as u32, dpl).0,
            high: offset >> 32,
        }
    }

    /// A 64-bit interrupt gate (IST 0) whose offset is `handler`'s address:
    /// an entry stub in assembly or a naked function (see
    /// [`exception`](crate::exception) for why a plain Rust function is
    /// not one). Safe `extern "C" fn()` items coerce to the parameter.
    ///
    /// ```
    /// use pvops::{Gate64, GateKind, Ring, presets};
    ///
    /// // An entry stub in assembly (a real one saves registers, calls Rust
    /// // and pops the error code before `iretq`).
    /// # #[cfg(target_arch = "x86_64")]
    /// core::arch::global_asm!(".globl doc_isr14", "doc_isr14:", "iretq");
    /// # #[cfg(not(target_arch = "x86_64"))]
    /// # core::arch::global_asm!(".globl doc_isr14", "doc_isr14:", "iretd");
    /// unsafe extern "C" {
    ///     fn doc_isr14();
    /// }
    ///
    /// # fn main() {
    /// let stub: unsafe extern "C" fn() = doc_isr14;
    /// let g = Gate64::interrupt_handler(presets::KERNEL_CS, stub, Ring::Ring0);
    /// assert_eq!(g.kind(), Some(GateKind::Interrupt));
    /// assert_eq!(g.offset(), stub as *const () as usize as u64);
    /// # }
    /// ```
    pub fn interrupt_handler(
        selector: Selector,
        handler: unsafe extern "C" fn(),
        dpl: Ring,
    ) -> Gate64 {
        Gate64::interrupt(selector, crate::exception::handler_addr(handler), dpl)
    }

    /// A 64-bit trap gate (IST 0) whose offset is `handler`'s address (see
    /// [`interrupt_handler`](Gate64::interrupt_handler)).
    pub fn trap_handler(selector: Selector, handler: unsafe extern "C" fn(), dpl: Ring) -> Gate64 {
        Gate64::trap(selector, crate::exception::handler_addr(handler), dpl)
    }

    /// A 64-bit interrupt gate (IST 0) for an `extern "x86-interrupt"`
    /// handler. Needs the `x86-interrupt` feature (nightly only).
    ///
    /// The function type is a [`X86InterruptHandler`](crate::exception::X86InterruptHandler)
    /// (a fn item must be cast to it: `handler as HandlerFunc`). Use
    /// [`x86_exception`](Gate64::x86_exception) to check that the handler
    /// takes an error code exactly when the vector pushes one.
    #[cfg(feature = "x86-interrupt")]
    pub fn x86_interrupt<H: crate::exception::X86InterruptHandler>(
        selector: Selector,
        handler: H,
        dpl: Ring,
    ) -> Gate64 {
        Gate64::interrupt(selector, handler.addr(), dpl)
    }

    /// [`x86_interrupt`](Gate64::x86_interrupt) for exception `e`, refusing
    /// a handler whose error-code parameter does not match what the CPU
    /// pushes for `e` ([`PvError::HandlerMismatch`]): a mismatch would make
    /// the handler's `iretq` pop the wrong frame.
    #[cfg(feature = "x86-interrupt")]
    pub fn x86_exception<H: crate::exception::X86InterruptHandler>(
        e: crate::exception::Exception,
        selector: Selector,
        handler: H,
        dpl: Ring,
    ) -> Result<Gate64> {
        if H::TAKES_ERROR_CODE != e.has_error_code() {
            return Err(PvError::HandlerMismatch {
                vector: e.vector(),
                pushes_error_code: e.has_error_code(),
            });
        }
        Ok(Gate64::x86_interrupt(selector, handler, dpl))
    }

    /// Same gate switching to interrupt stack `ist` (1..=7; 0 = no switch).
    /// Errors on a call gate or an index above 7.
    pub const fn with_ist(self, ist: u8) -> Result<Gate64> {
        if ist > 7 {
            return Err(PvError::BadIst { ist });
        }
        match self.kind() {
            Some(GateKind::Interrupt) | Some(GateKind::Trap) => Ok(Gate64 {
                low: (self.low & !(7 << 32)) | ((ist as u64) << 32),
                high: self.high,
            }),
            _ => Err(PvError::IstOnNonInterruptGate),
        }
    }

    /// Entry offset.
    pub const fn offset(self) -> u64 {
        Gate32(self.low).offset() as u64 | (self.high << 32)
    }

    /// Target selector.
    pub const fn selector(self) -> Selector {
        Gate32(self.low).selector()
    }

    /// IST index (0 = none).
    pub const fn ist(self) -> u8 {
        ((self.low >> 32) & 7) as u8
    }

    /// Kind (task gates are invalid in long mode and decode as `None`).
    pub const fn kind(self) -> Option<GateKind> {
        match Gate32(self.low).kind() {
            Some(GateKind::Task) => None,
            k => k,
        }
    }

    /// DPL.
    pub const fn dpl(self) -> Ring {
        Gate32(self.low).dpl()
    }

    /// P.
    pub const fn present(self) -> bool {
        Gate32(self.low).present()
    }
}

impl fmt::Debug for Gate64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate64({:#018x}, {:#018x})", self.low, self.high)
    }
}

impl fmt::Display for Gate64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind() {
            Some(GateKind::Interrupt) => "interrupt gate",
            Some(GateKind::Trap) => "trap gate",
            Some(GateKind::Call) => "call gate",
            _ => "invalid gate",
        };
        write!(
            f,
            "{} DPL{} 64-bit {kind}, selector {}, offset {:#x}, IST {}",
            if self.present() {
                "present"
            } else {
                "not-present"
            },
            self.dpl() as u8,
            self.selector(),
            self.offset(),
            self.ist()
        )
    }
}

fn handler_addr32(handler: unsafe extern "C" fn()) -> Result<u32> {
    let addr = crate::exception::handler_addr(handler);
    if addr > u32::MAX as u64 {
        return Err(PvError::FieldOutOfRange {
            field: "32-bit gate offset (handler address)",
            value: addr,
            max: u32::MAX as u64,
        });
    }
    Ok(addr as u32)
}

/// A call gate in a GDT (or LDT) is a system descriptor: in long mode its 16
/// bytes take two slots, like a TSS descriptor.
impl From<Gate64> for crate::descriptor::GdtEntry {
    fn from(g: Gate64) -> Self {
        crate::descriptor::GdtEntry::Double(crate::descriptor::SystemDescriptor {
            low: g.low,
            high: g.high,
        })
    }
}

/// A 32-bit call or task gate in a GDT: one slot.
impl From<Gate32> for crate::descriptor::GdtEntry {
    fn from(g: Gate32) -> Self {
        crate::descriptor::GdtEntry::Single(crate::descriptor::Descriptor(g.0))
    }
}

/// A 32-bit gate as the 8-byte descriptor an LDT holds.
impl From<Gate32> for crate::descriptor::Descriptor {
    fn from(g: Gate32) -> Self {
        crate::descriptor::Descriptor(g.0)
    }
}

/// The IDT gate type of the CPU mode pvops is compiled for.
#[cfg(target_arch = "x86_64")]
pub type IdtGate = Gate64;
/// The IDT gate type of the CPU mode pvops is compiled for.
#[cfg(not(target_arch = "x86_64"))]
pub type IdtGate = Gate32;

/// Size in bytes of one IDT entry in the native mode.
pub const IDT_ENTRY_SIZE: usize = core::mem::size_of::<IdtGate>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_gates() {
        // An x86_64 Linux interrupt gate: selector __KERNEL_CS, type 0xE, P.
        let g = Gate64::interrupt(Selector(0x10), 0xffff_ffff_8100_1234, Ring::Ring0);
        assert_eq!(g.low, 0x8100_8e00_0010_1234);
        assert_eq!(g.high, 0xffff_ffff);
        assert_eq!(g.offset(), 0xffff_ffff_8100_1234);
        assert_eq!(g.kind(), Some(GateKind::Interrupt));
        let g = g.with_ist(3).unwrap();
        assert_eq!(g.ist(), 3);
        // int3 is a DPL3 trap-style gate so user space can `int3`.
        let bp = Gate64::trap(Selector(0x10), 0x1000, Ring::Ring3);
        assert_eq!((bp.low >> 40) & 0xff, 0xef);
        assert_eq!(bp.with_ist(2).unwrap().ist(), 2);
    }

    #[test]
    fn ist_rules() {
        let g = Gate64::interrupt(Selector(0x10), 0, Ring::Ring0);
        assert_eq!(g.with_ist(8), Err(PvError::BadIst { ist: 8 }));
        let c = Gate64::call(Selector(0x10), 0, Ring::Ring3);
        assert_eq!(c.with_ist(1), Err(PvError::IstOnNonInterruptGate));
        assert!(Gate64::new(GateKind::Task, Selector(0x40), 0, Ring::Ring0).is_err());
    }

    #[test]
    fn gate32_forms() {
        let g = Gate32::interrupt(Selector(0x60), 0xc100_2000, Ring::Ring0);
        assert_eq!(g.0, 0xc100_8e00_0060_2000);
        let t = Gate32::task(Selector(0xf8), Ring::Ring0);
        assert_eq!(t.kind(), Some(GateKind::Task));
        let c = Gate32::call(Selector(0x60), 0x1000, Ring::Ring3, 2).unwrap();
        assert_eq!(c.param_count(), 2);
        assert_eq!(c.kind(), Some(GateKind::Call));
        assert!(Gate32::call(Selector(0x60), 0, Ring::Ring3, 32).is_err());
    }
}
