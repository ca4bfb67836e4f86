//! The Xen model's error types (hv-sim's API, not Xen's: a hypercall
//! answers with Xen's errno, never with these).
//!
//! `Display` and `Error` are written by hand rather than derived with
//! thiserror, so that the in-process models (hv-sim without default
//! features) do not need it.

use core::fmt;

/// A broken invariant of the model (hv-sim's own rules, checked after
/// every call by [`super::XenDomain::check_invariants`]): a bug in the
/// model or a guest write it failed to catch, never a guest error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvariantError {
    /// A present code/data descriptor in a live GDT frame or mapped LDT
    /// page has a DPL below the kernel's RPL (Xen's `check_descriptor`
    /// raises or refuses such a DPL).
    LowDpl {
        /// The vCPU whose table holds it.
        vcpu: usize,
        /// `"GDT"` or `"LDT"`.
        table: &'static str,
        /// The entry's index in that table.
        index: usize,
        /// The descriptor.
        desc: u64,
        /// The kernel's RPL (1 for pv32, 3 for pv64).
        krpl: u8,
    },
    /// The frame accounting (type counts, references, page-table users,
    /// pins, shadows, linear counts, roots) disagrees with the mappings
    /// and tables: the frame and what is wrong.
    Accounting(String),
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvariantError::LowDpl {
                vcpu,
                table,
                index,
                desc,
                krpl,
            } => write!(
                f,
                "vcpu{vcpu} {table}[{index}] = {desc:#018x} has DPL {} < krpl {krpl}",
                (desc >> 45) & 3
            ),
            InvariantError::Accounting(what) => write!(f, "frame accounting: {what}"),
        }
    }
}

impl std::error::Error for InvariantError {}

/// Why [`super::XenDomain::install_bootstrap_tables`] refused the
/// bootstrap page tables (nothing is typed or pinned then).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The range of pfns is empty.
    Empty,
    /// A pfn is outside the domain's own RAM.
    NotOwned {
        /// The pfn.
        pfn: u64,
    },
    /// A frame is already typed, mapped twice or referenced elsewhere.
    InUse {
        /// The pfn.
        pfn: u64,
    },
    /// The walk from the L4 reaches a table twice.
    ReachedTwice {
        /// The pfn.
        pfn: u64,
    },
    /// A present entry names a frame outside the bootstrap tables.
    ForeignEntry {
        /// The level of the table holding it (4..2).
        level: u8,
        /// The table's pfn.
        pfn: u64,
        /// The entry's slot.
        slot: usize,
        /// The entry.
        entry: u64,
    },
    /// A frame of the range is not reachable from the L4.
    Unreachable,
    /// The tables were installed but the domain's invariants broke.
    Invariant(InvariantError),
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootstrapError::Empty => write!(f, "no bootstrap page tables"),
            BootstrapError::NotOwned { pfn } => {
                write!(f, "bootstrap page table pfn {pfn:#x} is not the domain's")
            }
            BootstrapError::InUse { pfn } => {
                write!(f, "bootstrap page table pfn {pfn:#x} is already in use")
            }
            BootstrapError::ReachedTwice { pfn } => {
                write!(f, "bootstrap page table pfn {pfn:#x} is reached twice")
            }
            BootstrapError::ForeignEntry {
                level,
                pfn,
                slot,
                entry,
            } => write!(
                f,
                "bootstrap L{level} pfn {pfn:#x} slot {slot} = {entry:#x} names no bootstrap table"
            ),
            BootstrapError::Unreachable => write!(
                f,
                "a bootstrap page-table frame is not reachable from the L4"
            ),
            BootstrapError::Invariant(_) => {
                write!(f, "the bootstrap page tables break the model's invariants")
            }
        }
    }
}

impl std::error::Error for BootstrapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BootstrapError::Invariant(e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvariantError> for BootstrapError {
    fn from(e: InvariantError) -> Self {
        BootstrapError::Invariant(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::XenDomain;
    use std::error::Error;

    #[test]
    fn bootstrap_refusals_are_typed() {
        let d = XenDomain::pv64(64, 1);
        assert_eq!(d.install_bootstrap_tables(5..5), Err(BootstrapError::Empty));
        assert_eq!(
            d.install_bootstrap_tables(64..65),
            Err(BootstrapError::NotOwned { pfn: 64 })
        );
        // pfn 20's L4 is empty: its walk reaches only itself.
        assert_eq!(
            d.install_bootstrap_tables(20..22),
            Err(BootstrapError::Unreachable)
        );
        d.check_invariants().unwrap();
    }

    #[test]
    fn a_wrapped_invariant_is_the_source() {
        let inner = InvariantError::LowDpl {
            vcpu: 1,
            table: "GDT",
            index: 4,
            desc: 0x00cf_9b00_0000_ffff,
            krpl: 3,
        };
        assert_eq!(
            inner.to_string(),
            "vcpu1 GDT[4] = 0x00cf9b000000ffff has DPL 0 < krpl 3"
        );
        let e = BootstrapError::from(inner.clone());
        let src = e.source().unwrap().downcast_ref::<InvariantError>();
        assert_eq!(src, Some(&inner));
    }
}
