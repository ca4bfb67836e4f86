//! Named exception vectors ([`Exception`]) and handler function types for
//! IDT gates.
//!
//! A gate's offset is a handler's address. Rather than `f as usize as u64`
//! (which Rust 1.95 warns about: `function_casts_as_integer`), pass the
//! function itself:
//! * [`Gate64::interrupt_handler`](crate::Gate64::interrupt_handler) /
//!   [`trap_handler`](crate::Gate64::trap_handler) (and the
//!   [`Gate32`](crate::Gate32) forms) take an `unsafe extern "C" fn()`: an
//!   entry stub written in assembly (`extern "C" { fn isr14(); }`) or a
//!   naked function. Safe `extern "C" fn()` items coerce to it.
//! * [`DescriptorOps::set_handler`](crate::DescriptorOps::set_handler)
//!   writes such a gate through a backend.
//! * With the `x86-interrupt` cargo feature (**nightly only**: it enables
//!   `#![feature(abi_x86_interrupt)]`), `Gate64::x86_interrupt` takes an
//!   `extern "x86-interrupt" fn` (`HandlerFunc`, `HandlerFuncWithErrCode`,
//!   ...): the compiler then writes the entry and exit code (`iretq`,
//!   error-code pop) itself, and `Gate64::x86_exception` checks that the
//!   handler takes an error code exactly when the exception pushes one.
//!
//! An `extern "C" fn` body is *not* an interrupt handler by itself: the CPU
//! enters it without a return address and with an error code on the stack
//! for some vectors, so a plain Rust function used as a gate target crashes
//! on its `ret`. That is why the address must be a real entry stub, and why
//! writing the gate stays `unsafe`.
//!
//! ```
//! use pvops::{Exception, Gate64, Ring, presets};
//!
//! extern "C" fn stub() {} // stands in for an assembly entry stub
//!
//! // One fn pointer for both uses: Rust does not promise that two
//! // coercions of the same function give the same address.
//! let stub: unsafe extern "C" fn() = stub;
//! let gate = Gate64::interrupt_handler(presets::KERNEL_CS, stub, Ring::Ring0);
//! assert_eq!(gate.offset(), stub as *const () as usize as u64);
//! assert_eq!(u8::from(Exception::PageFault), 14);
//! assert_eq!(Exception::from_vector(13), Some(Exception::GeneralProtection));
//! assert!(Exception::PageFault.has_error_code());
//! assert_eq!(Exception::PageFault.to_string(), "#PF (page fault, vector 14)");
//! ```

use core::fmt;

/// The architecturally defined exception vectors 0..=31 that have a name
/// (SDM vol. 3, table 6-1, and AMD APM vol. 2, 8.2; Linux's
/// `arch/x86/include/asm/trapnr.h` uses the same numbers). Vectors 15 and
/// 22..=27 and 31 are reserved and have no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Exception {
    /// `#DE`, 0: divide error.
    DivideError = 0,
    /// `#DB`, 1: debug.
    Debug = 1,
    /// `NMI`, 2: non-maskable interrupt.
    NonMaskableInterrupt = 2,
    /// `#BP`, 3: breakpoint (`int3`).
    Breakpoint = 3,
    /// `#OF`, 4: overflow (`into`).
    Overflow = 4,
    /// `#BR`, 5: BOUND range exceeded.
    BoundRange = 5,
    /// `#UD`, 6: invalid opcode.
    InvalidOpcode = 6,
    /// `#NM`, 7: device not available (no math coprocessor).
    DeviceNotAvailable = 7,
    /// `#DF`, 8: double fault (error code, always 0).
    DoubleFault = 8,
    /// 9: coprocessor segment overrun (386-era; reserved since).
    CoprocessorSegmentOverrun = 9,
    /// `#TS`, 10: invalid TSS (error code).
    InvalidTss = 10,
    /// `#NP`, 11: segment not present (error code).
    SegmentNotPresent = 11,
    /// `#SS`, 12: stack-segment fault (error code).
    StackSegmentFault = 12,
    /// `#GP`, 13: general protection (error code).
    GeneralProtection = 13,
    /// `#PF`, 14: page fault (error code).
    PageFault = 14,
    /// `#MF`, 16: x87 floating-point error.
    X87FloatingPoint = 16,
    /// `#AC`, 17: alignment check (error code, always 0).
    AlignmentCheck = 17,
    /// `#MC`, 18: machine check.
    MachineCheck = 18,
    /// `#XM`, 19: SIMD floating-point exception (Linux `X86_TRAP_XF`).
    SimdFloatingPoint = 19,
    /// `#VE`, 20: virtualization exception (Intel).
    Virtualization = 20,
    /// `#CP`, 21: control protection (CET; error code).
    ControlProtection = 21,
    /// `#HV`, 28: hypervisor injection (AMD SEV-SNP).
    HypervisorInjection = 28,
    /// `#VC`, 29: VMM communication (AMD SEV-ES; error code).
    VmmCommunication = 29,
    /// `#SX`, 30: security exception (AMD; error code).
    Security = 30,
}

impl Exception {
    /// Every named exception, by vector.
    pub const ALL: [Exception; 24] = [
        Exception::DivideError,
        Exception::Debug,
        Exception::NonMaskableInterrupt,
        Exception::Breakpoint,
        Exception::Overflow,
        Exception::BoundRange,
        Exception::InvalidOpcode,
        Exception::DeviceNotAvailable,
        Exception::DoubleFault,
        Exception::CoprocessorSegmentOverrun,
        Exception::InvalidTss,
        Exception::SegmentNotPresent,
        Exception::StackSegmentFault,
        Exception::GeneralProtection,
        Exception::PageFault,
        Exception::X87FloatingPoint,
        Exception::AlignmentCheck,
        Exception::MachineCheck,
        Exception::SimdFloatingPoint,
        Exception::Virtualization,
        Exception::ControlProtection,
        Exception::HypervisorInjection,
        Exception::VmmCommunication,
        Exception::Security,
    ];

    /// The vector number.
    pub const fn vector(self) -> u8 {
        self as u8
    }

    /// The exception for `vector`, or `None` (reserved, or 32 and up:
    /// external interrupts and software vectors).
    pub const fn from_vector(vector: u8) -> Option<Exception> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u8 == vector {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The mnemonic: `#DE`, `NMI`, `#PF`, ... (vector 9 has none: `CSO`).
    pub const fn mnemonic(self) -> &'static str {
        use Exception::*;
        match self {
            DivideError => "#DE",
            Debug => "#DB",
            NonMaskableInterrupt => "NMI",
            Breakpoint => "#BP",
            Overflow => "#OF",
            BoundRange => "#BR",
            InvalidOpcode => "#UD",
            DeviceNotAvailable => "#NM",
            DoubleFault => "#DF",
            CoprocessorSegmentOverrun => "CSO",
            InvalidTss => "#TS",
            SegmentNotPresent => "#NP",
            StackSegmentFault => "#SS",
            GeneralProtection => "#GP",
            PageFault => "#PF",
            X87FloatingPoint => "#MF",
            AlignmentCheck => "#AC",
            MachineCheck => "#MC",
            SimdFloatingPoint => "#XM",
            Virtualization => "#VE",
            ControlProtection => "#CP",
            HypervisorInjection => "#HV",
            VmmCommunication => "#VC",
            Security => "#SX",
        }
    }

    /// The name in plain words (`page fault`).
    pub const fn name(self) -> &'static str {
        use Exception::*;
        match self {
            DivideError => "divide error",
            Debug => "debug",
            NonMaskableInterrupt => "non-maskable interrupt",
            Breakpoint => "breakpoint",
            Overflow => "overflow",
            BoundRange => "BOUND range exceeded",
            InvalidOpcode => "invalid opcode",
            DeviceNotAvailable => "device not available",
            DoubleFault => "double fault",
            CoprocessorSegmentOverrun => "coprocessor segment overrun",
            InvalidTss => "invalid TSS",
            SegmentNotPresent => "segment not present",
            StackSegmentFault => "stack-segment fault",
            GeneralProtection => "general protection",
            PageFault => "page fault",
            X87FloatingPoint => "x87 floating-point error",
            AlignmentCheck => "alignment check",
            MachineCheck => "machine check",
            SimdFloatingPoint => "SIMD floating-point exception",
            Virtualization => "virtualization exception",
            ControlProtection => "control protection",
            HypervisorInjection => "hypervisor injection",
            VmmCommunication => "VMM communication",
            Security => "security exception",
        }
    }

    /// Does the CPU push an error code for this exception? (An
    /// `x86-interrupt` handler for it then takes the code as its second
    /// argument.)
    pub const fn has_error_code(self) -> bool {
        use Exception::*;
        matches!(
            self,
            DoubleFault
                | InvalidTss
                | SegmentNotPresent
                | StackSegmentFault
                | GeneralProtection
                | PageFault
                | AlignmentCheck
                | ControlProtection
                | VmmCommunication
                | Security
        )
    }
}

impl From<Exception> for u8 {
    fn from(e: Exception) -> u8 {
        e as u8
    }
}

impl fmt::Display for Exception {
    /// `#PF (page fault, vector 14)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, vector {})",
            self.mnemonic(),
            self.name(),
            *self as u8
        )
    }
}

/// The address of a handler, without an integer cast of the function
/// pointer (Rust 1.95's `function_casts_as_integer`): through a raw pointer.
pub(crate) fn handler_addr(f: unsafe extern "C" fn()) -> u64 {
    f as *const () as usize as u64
}

/// The stack frame the CPU pushes on an interrupt or exception in 64-bit
/// mode (SDM vol. 3, 6.14.2), the first argument of an `x86-interrupt`
/// handler.
#[cfg(feature = "x86-interrupt")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct InterruptStackFrame {
    /// Where execution resumes (the faulting instruction for a fault).
    pub rip: u64,
    /// The interrupted code segment (zero-extended).
    pub cs: u64,
    /// The interrupted RFLAGS.
    pub rflags: u64,
    /// The interrupted stack pointer.
    pub rsp: u64,
    /// The interrupted stack segment (zero-extended).
    pub ss: u64,
}

/// An `x86-interrupt` handler without an error code.
#[cfg(feature = "x86-interrupt")]
pub type HandlerFunc = extern "x86-interrupt" fn(InterruptStackFrame);
/// An `x86-interrupt` handler for an exception with an error code.
#[cfg(feature = "x86-interrupt")]
pub type HandlerFuncWithErrCode = extern "x86-interrupt" fn(InterruptStackFrame, u64);
/// An `x86-interrupt` handler that never returns (`#DF`, `#MC`).
#[cfg(feature = "x86-interrupt")]
pub type DivergingHandlerFunc = extern "x86-interrupt" fn(InterruptStackFrame) -> !;
/// A never-returning `x86-interrupt` handler with an error code (`#DF`).
#[cfg(feature = "x86-interrupt")]
pub type DivergingHandlerFuncWithErrCode = extern "x86-interrupt" fn(InterruptStackFrame, u64) -> !;

/// An `x86-interrupt` function type a gate can point at (sealed: the four
/// handler types above).
#[cfg(feature = "x86-interrupt")]
pub trait X86InterruptHandler: Copy + sealed::Sealed {
    /// Whether the function takes the CPU's error code.
    const TAKES_ERROR_CODE: bool;
    /// The entry address.
    fn addr(self) -> u64;
}

#[cfg(feature = "x86-interrupt")]
mod sealed {
    pub trait Sealed {}
}

#[cfg(feature = "x86-interrupt")]
macro_rules! x86_interrupt_handler {
    ($($ty:ty => $err:expr),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl X86InterruptHandler for $ty {
            const TAKES_ERROR_CODE: bool = $err;
            fn addr(self) -> u64 {
                self as *const () as usize as u64
            }
        }
    )*};
}

#[cfg(feature = "x86-interrupt")]
x86_interrupt_handler! {
    HandlerFunc => false,
    HandlerFuncWithErrCode => true,
    DivergingHandlerFunc => false,
    DivergingHandlerFuncWithErrCode => true,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn vectors_round_trip_and_agree_with_messages() {
        for v in 0..=255u8 {
            match Exception::from_vector(v) {
                Some(e) => {
                    assert_eq!(e.vector(), v);
                    assert!(v < 32);
                    // The error messages' short names agree where they have one.
                    let short = crate::error::vector_name(v);
                    if short != "vector" {
                        assert_eq!(short, e.mnemonic(), "vector {v}");
                    }
                }
                None => assert!(matches!(v, 15 | 22..=27 | 31 | 32..), "vector {v}"),
            }
        }
        // Literals from the SDM's table 6-1 / Linux trapnr.h.
        assert_eq!(Exception::DivideError as u8, 0);
        assert_eq!(Exception::DoubleFault as u8, 8);
        assert_eq!(Exception::GeneralProtection as u8, 13);
        assert_eq!(Exception::SimdFloatingPoint as u8, 19);
        assert_eq!(Exception::ControlProtection as u8, 21);
        assert_eq!(Exception::VmmCommunication as u8, 29);
    }

    #[test]
    fn error_codes_and_display() {
        let with: std::vec::Vec<u8> = Exception::ALL
            .iter()
            .filter(|e| e.has_error_code())
            .map(|e| e.vector())
            .collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(
            Exception::DoubleFault.to_string(),
            "#DF (double fault, vector 8)"
        );
        assert_eq!(
            Exception::NonMaskableInterrupt.to_string(),
            "NMI (non-maskable interrupt, vector 2)"
        );
    }

    #[test]
    fn handler_address_is_the_function() {
        extern "C" fn h() {}
        let p: unsafe extern "C" fn() = h;
        // The same pointer: two coercions of `h` need not be equal (Miri
        // gives them different addresses).
        assert_eq!(handler_addr(p), p as *const () as usize as u64);
        assert_ne!(handler_addr(p), 0);
    }
}

#[cfg(all(test, feature = "x86-interrupt"))]
mod x86_interrupt_tests {
    use super::*;
    use crate::{Gate64, GateKind, PvError, Ring, presets};

    extern "x86-interrupt" fn breakpoint(_frame: InterruptStackFrame) {}
    extern "x86-interrupt" fn page_fault(_frame: InterruptStackFrame, _code: u64) {}

    #[test]
    fn gates_for_x86_interrupt_handlers() {
        let bp = breakpoint as HandlerFunc;
        let g = Gate64::x86_interrupt(presets::KERNEL_CS, bp, Ring::Ring3);
        assert_eq!(g.offset(), bp as *const () as usize as u64);
        assert_eq!(g.kind(), Some(GateKind::Interrupt));
        let pf = page_fault as HandlerFuncWithErrCode;
        let g = Gate64::x86_exception(Exception::PageFault, presets::KERNEL_CS, pf, Ring::Ring0);
        assert_eq!(g.unwrap().offset(), pf as *const () as usize as u64);
        // #PF pushes an error code; #BP does not.
        assert_eq!(
            Gate64::x86_exception(Exception::PageFault, presets::KERNEL_CS, bp, Ring::Ring0),
            Err(PvError::HandlerMismatch {
                vector: 14,
                pushes_error_code: true
            })
        );
        assert!(
            Gate64::x86_exception(Exception::Breakpoint, presets::KERNEL_CS, pf, Ring::Ring0)
                .is_err()
        );
    }
}
