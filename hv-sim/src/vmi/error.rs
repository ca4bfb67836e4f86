//! The VMI model's error types (hv-sim's API: a VMI call answers the guest
//! with its own return value, never with these).
//!
//! `Display` and `Error` are written by hand rather than derived with
//! thiserror, so that the in-process models (hv-sim without default
//! features) do not need it.

use core::fmt;

/// Why a ROM or bytes cannot be placed ([`super::VmiHypervisor::with_rom`],
/// [`place_rom`](super::VmiHypervisor::place_rom),
/// [`place_bytes`](super::VmiHypervisor::place_bytes)); nothing is written
/// then.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RomError {
    /// The ROM does not lie inside the option-ROM scan window
    /// (`start..end`), where the guest's probe looks.
    OutsideWindow {
        /// Where the ROM was to go.
        base: u64,
        /// Its size in bytes.
        size: usize,
        /// The window's start.
        start: u64,
        /// The window's end.
        end: u64,
    },
    /// The ROM's base is not on the probe's 2 KiB step.
    Misaligned {
        /// Where the ROM was to go.
        base: u64,
    },
    /// The bytes do not fit in the modelled low memory (`start..end`).
    OutsideLowMemory {
        /// Where they were to go.
        addr: u64,
        /// How many.
        len: usize,
        /// The modelled memory's start.
        start: u64,
        /// Its end.
        end: u64,
    },
}

impl fmt::Display for RomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RomError::OutsideWindow {
                base,
                size,
                start,
                end,
            } => write!(
                f,
                "ROM at {base:#x} ({size:#x} bytes) is not inside the option-ROM window {start:#x}..{end:#x}"
            ),
            RomError::Misaligned { base } => {
                write!(f, "ROM at {base:#x} is not on a 2 KiB boundary")
            }
            RomError::OutsideLowMemory {
                addr,
                len,
                start,
                end,
            } => write!(
                f,
                "{len:#x} bytes at {addr:#x} do not fit in the modelled low memory {start:#x}..{end:#x}"
            ),
        }
    }
}

impl std::error::Error for RomError {}

/// Why an address is not a call stub of the active ROM
/// ([`super::VmiHypervisor::decode_entry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// No ROM is installed.
    NoRom,
    /// The address is outside the ROM (`base..end`).
    OutsideRom {
        /// The address.
        entry: u64,
        /// The ROM's base.
        base: u64,
        /// Its end.
        end: u64,
    },
    /// The address is in the ROM but not the start of a stub
    /// (`mov eax, n; out port, eax; ret`).
    NotAStub {
        /// The address.
        entry: u64,
        /// Its offset in the ROM.
        offset: u64,
        /// The VMI port the stubs write.
        port: u16,
    },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EntryError::NoRom => write!(f, "no ROM is installed"),
            EntryError::OutsideRom { entry, base, end } => {
                write!(f, "{entry:#x} is outside the ROM ({base:#x}..{end:#x})")
            }
            EntryError::NotAStub {
                entry,
                offset,
                port,
            } => write!(
                f,
                "{entry:#x} (ROM offset {offset:#x}) is not the start of a call stub (mov eax, n; out {port:#x}, eax; ret)"
            ),
        }
    }
}

impl std::error::Error for EntryError {}

/// One broken rule of [`super::invariants`] ([`check_effective`] or
/// [`check_view`]): the rule, naming the table, slot and value.
///
/// [`check_effective`]: super::invariants::check_effective
/// [`check_view`]: super::invariants::check_view
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule broken, described.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)
    }
}

impl std::error::Error for Violation {}

impl From<String> for Violation {
    fn from(rule: String) -> Self {
        Violation { rule }
    }
}

/// Which state [`super::VmiHypervisor::check_invariants`] found broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckedState {
    /// The effective state applied so far.
    Applied,
    /// The state the pending lazy batch will produce.
    AfterLazyBatch,
}

impl fmt::Display for CheckedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckedState::Applied => "applied state",
            CheckedState::AfterLazyBatch => "after the pending lazy batch",
        })
    }
}

/// A broken invariant of the VMI model
/// ([`super::VmiHypervisor::check_invariants`]): a bug in the model or a
/// guest update it failed to refuse, never a guest error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvariantError {
    /// A state gives the guest a privilege it must not have
    /// ([`check_effective`](super::invariants::check_effective)).
    Unsafe {
        /// Which state.
        state: CheckedState,
        /// The rule broken.
        violation: Violation,
    },
    /// A state disagrees with the guest's view
    /// ([`check_view`](super::invariants::check_view)).
    Disagrees {
        /// Which state.
        state: CheckedState,
        /// The difference.
        violation: Violation,
    },
    /// Changes are recorded as deferred but there is no pending state.
    DeferredWithoutState {
        /// How many.
        changes: usize,
    },
    /// Lazy mode is 0 (off) but changes are still deferred.
    DeferredOutsideLazyMode {
        /// How many.
        changes: usize,
    },
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantError::Unsafe { state, violation }
            | InvariantError::Disagrees { state, violation } => {
                write!(f, "{state}: {violation}")
            }
            InvariantError::DeferredWithoutState { changes } => write!(
                f,
                "{changes} change(s) recorded as deferred but no pending state"
            ),
            InvariantError::DeferredOutsideLazyMode { changes } => {
                write!(f, "lazy mode 0 but {changes} change(s) still deferred")
            }
        }
    }
}

impl std::error::Error for InvariantError {}
