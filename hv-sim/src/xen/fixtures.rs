//! Domain states that tests and benchmarks build the same way: one
//! builder, so the bounded-cost test (`tests/xen_bounded_cost.rs`) and the
//! worst-case benchmark (`bench::worst`) measure the same tree.

use super::domain::XenDomain;
use super::nr;

/// Why [`spanning_tree`] could not build its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixtureError {
    /// Fewer free pages than an L4, an L3, an L2 and an L1 need.
    TooSmall {
        /// Free pages left for the tree.
        free: usize,
    },
    /// A page of the tree could not be mapped read-only.
    Map {
        /// The page's VA.
        va: u64,
        /// The hypercall's return value.
        rc: i64,
    },
    /// A page the builder allocated is not in the domain's RAM.
    NotRam {
        /// The address.
        va: u64,
    },
}

// Hand-written (thiserror is a dependency of the `kvm` feature only).
impl core::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall { free } => {
                write!(
                    f,
                    "spanning tree: only {free} free pages (needs at least 4)"
                )
            }
            Self::Map { va, rc } => write!(
                f,
                "spanning tree: update_va_mapping of {va:#x} read-only returned {rc}"
            ),
            Self::NotRam { va } => write!(f, "spanning tree: {va:#x} is not mapped RAM"),
        }
    }
}

impl std::error::Error for FixtureError {}

/// A page-table tree built by [`spanning_tree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanningTree {
    /// The L4's machine frame.
    pub l4: u64,
    /// The (one) L3's machine frame.
    pub l3: u64,
    /// Page-table pages in the tree (L4, L3, L2s and L1s).
    pub tables: usize,
}

/// Allocate a page and map it read-only (to become a table): (va, mfn).
fn ro_page(d: &XenDomain) -> Result<(u64, u64), FixtureError> {
    let va = d.alloc_pages(1);
    let mfn = d.virt_to_mfn(va).ok_or(FixtureError::NotRam { va })?;
    let mut args = [0u64; 6];
    (args[0], args[1]) = (va, mfn << 12 | 1);
    match d.hypercall(0, nr::UPDATE_VA_MAPPING, args) {
        0 => Ok((va, mfn)),
        rc => Err(FixtureError::Map { va, rc }),
    }
}

fn write(d: &XenDomain, va: u64, v: u64) -> Result<(), FixtureError> {
    d.host_write_u64(va, v)
        .then_some(())
        .ok_or(FixtureError::NotRam { va })
}

/// A pv64 page-table tree over every free page of `d` but `spare`: one L4,
/// one L3, as many L2s as needed, and every other page an L1 whose 512
/// entries map one data page (allocated first) read-only. Every table page
/// is mapped read-only and unpinned; nothing is validated yet, so pinning
/// the L4 validates the whole of the domain's free RAM.
pub fn spanning_tree(d: &XenDomain, spare: usize) -> Result<SpanningTree, FixtureError> {
    const P: u64 = 1;
    const RW: u64 = 2;
    let data = d.alloc_pages(1);
    let data_pte = d
        .virt_to_mfn(data)
        .ok_or(FixtureError::NotRam { va: data })?
        << 12
        | P;
    let used = (d.alloc_pages(0).wrapping_sub(d.va_base()) / 4096) as usize;
    let free = d.pages().saturating_sub(used).saturating_sub(spare);
    if free < 4 {
        return Err(FixtureError::TooSmall { free });
    }
    // n2 L2s cover n1 = free - 2 - n2 L1s: n2 = ceil((free - 2) / 513).
    let n2 = (free - 2).div_ceil(513);
    let n1 = free - 2 - n2;
    let (l4v, l4) = ro_page(d)?;
    let (l3v, l3) = ro_page(d)?;
    let l2s = (0..n2).map(|_| ro_page(d)).collect::<Result<Vec<_>, _>>()?;
    for k in 0..n1 {
        let (l1v, l1) = ro_page(d)?;
        for s in 0..512 {
            write(d, l1v + s * 8, data_pte)?;
        }
        let (l2v, _) = l2s[k / 512];
        write(d, l2v + (k % 512) as u64 * 8, l1 << 12 | P | RW)?;
    }
    for (k, (_, l2)) in l2s.iter().enumerate() {
        write(d, l3v + k as u64 * 8, l2 << 12 | P | RW)?;
    }
    write(d, l4v, l3 << 12 | P | RW)?;
    Ok(SpanningTree {
        l4,
        l3,
        tables: 2 + n1 + n2,
    })
}
