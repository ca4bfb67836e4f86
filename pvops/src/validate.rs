//! The validation layer: the rules every backend runs, with its own view of
//! the loaded tables, before any instruction or hypercall.
//!
//! A mistake in a descriptor table rarely fails where it is made: a gate
//! whose selector names a data segment, a non-canonical handler or a TSS
//! too small for the CPU is accepted by a store and faults (often as a
//! triple fault) at the first interrupt or task switch. So each op checks
//! the rules below first, the same way on every backend, and refuses with
//! [`PvError::Invalid`] (op, [`Slot`], [`Rule`]) or one of the selector
//! errors ([`PvError::BadSelector`], [`PvError::WrongDescriptorType`],
//! [`PvError::IndexOutOfRange`], [`PvError::DoubleSlotPastEnd`],
//! [`PvError::NoTableLoaded`]); nothing reaches the CPU or the hypervisor.
//!
//! | rule | ops |
//! |---|---|
//! | a present IDT entry is an interrupt or trap gate (32-bit: or a task gate) | `write_idt_entry`, `load_idt` (every gate) |
//! | a gate's selector is not null, names the GDT (IDT gates) or the GDT/LDT (call gates), lies within the table's limit and names a present code segment of the mode's width (64-bit in long mode) | `write_idt_entry`, `load_idt`, call gates in `write_gdt_entry` / `write_ldt_entry` |
//! | handler offsets, TSS and LDT bases and the kernel stack are canonical | `write_idt_entry`, `load_idt`, `write_gdt_entry`, `load_tr`, `load_kernel_stack` |
//! | a TSS limit is at least [`MIN_TSS_LIMIT`] (0x67) | `write_gdt_entry`, `load_tr` |
//! | `load_tr`'s selector is a GDT selector (TI=0), not null, within the GDT's limit, naming a present available TSS | `load_tr` |
//! | an IST index is one the backend can honour ([`IstSupport`]) | `write_idt_entry`, `load_idt` |
//! | an LDT holds only code/data segments, call gates and task gates; a TLS slot only code/data segments | `write_ldt_entry`, `load_tls` |
//! | a code segment does not set both L and D (reserved in long mode) | `write_gdt_entry`, `write_ldt_entry`, `load_tls` |
//!
//! Not-present descriptors and gates are inert and not checked (the CPU
//! raises #NP before using one).
//!
//! # The backend's view
//! Rules that resolve a selector read the tables through a [`TableView`]:
//! the GDT and LDT *this backend* loaded (its own record or shadow, never
//! an instruction or a hypercall). When the backend knows no such table
//! (before the first `load_gdt`, or an LDT never loaded through it), only
//! the rules that need no table apply. Selectors the hypervisor defines
//! itself (Xen's reserved GDT entries, `0xe000` and up) are the
//! hypervisor's to judge: the view says so with
//! [`TableView::hypervisor_selector`] and the table rules skip them.
//!
//! The rules are pure functions of their arguments and the view; backends
//! call them in each op before doing anything else.

use core::fmt;

use crate::descriptor::{Descriptor, GdtEntry, SystemType};
use crate::error::{PvError, Result, TableKind, vector_name};
use crate::gate::IdtGate;
use crate::selector::{Selector, TableIndicator};
use crate::table::is_valid_linear;

/// The smallest TSS limit the CPU accepts for a 32- or 64-bit TSS (104
/// bytes, SDM 7.2.2/7.7): [`Tss64::LIMIT`](crate::Tss64::LIMIT) and
/// [`Tss32::LIMIT`](crate::Tss32::LIMIT) (checked at compile time). Kept as
/// the SDM's literal so the layouts are checked against it, not the other
/// way round.
pub const MIN_TSS_LIMIT: u32 = 0x67;

/// Where an error is: the table and the slot or vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// No table or slot is more precise (a call about the CPU as a whole,
    /// or a batch whose entries were several).
    None,
    /// A table as a whole (`set_gdt`, `SetIDT`).
    Table(TableKind),
    /// Entry `index` of a table.
    Entry(TableKind, u32),
    /// An IDT vector.
    Vector(u8),
    /// The selector an op was given (`load_tr`, `SetTR`, `SetLDT`).
    Selector(Selector),
    /// The kernel stack pointer (`TSS.sp0`, `stack_switch`).
    KernelStack,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Slot::None => f.write_str("the CPU state"),
            Slot::Table(t) => write!(f, "the {t}"),
            Slot::Entry(t, i) => write!(f, "{t}[{i}]"),
            Slot::Vector(v) => match vector_name(v) {
                "vector" => write!(f, "IDT vector {v}"),
                name => write!(f, "IDT vector {v} ({name})"),
            },
            Slot::Selector(s) => write!(f, "selector {s}"),
            Slot::KernelStack => f.write_str("the kernel stack (TSS.sp0)"),
        }
    }
}

/// A rule of the validation layer, with the values that broke it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// A present IDT entry that is not an interrupt or trap gate (32-bit:
    /// or a task gate). `found` is the S bit and type (`S<<4 | type`).
    NotAGate {
        /// `S<<4 | type`.
        found: u8,
    },
    /// An IST index the backend cannot honour on this vector.
    IstNotHonoured {
        /// The IST index.
        ist: u8,
        /// The backend.
        backend: &'static str,
        /// How a kernel opts into losing it, if it can.
        opt_in: &'static str,
    },
    /// A gate's code selector is null.
    NullSelector,
    /// An IDT gate's selector names the LDT (TI=1): the LDT changes with
    /// every process, the handlers must not.
    GateSelectorInLdt {
        /// The selector.
        selector: Selector,
    },
    /// A selector's index is past the end of the table it names.
    SelectorPastLimit {
        /// The selector.
        selector: Selector,
        /// The table it names.
        table: TableKind,
        /// Entries in that table.
        entries: u32,
    },
    /// A gate's selector names a descriptor that is not a code segment.
    NotCodeSegment {
        /// The selector.
        selector: Selector,
        /// The descriptor's `S<<4 | type`.
        found: u8,
    },
    /// A gate's selector names a code segment that is not present.
    SegmentNotPresent {
        /// The selector.
        selector: Selector,
    },
    /// A gate's selector names a code segment of the wrong width.
    WrongCodeWidth {
        /// The selector.
        selector: Selector,
        /// What is needed (`"64-bit"`, `"32-bit"`).
        need: &'static str,
    },
    /// A gate's handler (or call gate's target) offset is not canonical.
    OffsetNotCanonical {
        /// The offset.
        offset: u64,
    },
    /// A TSS or LDT base is not canonical.
    BaseNotCanonical {
        /// The base.
        base: u64,
    },
    /// A TSS limit below [`MIN_TSS_LIMIT`].
    TssLimitTooSmall {
        /// The effective limit.
        limit: u32,
    },
    /// A descriptor this table or slot cannot hold.
    NotAllowedHere {
        /// The descriptor's `S<<4 | type`.
        found: u8,
        /// What the table or slot holds.
        allowed: &'static str,
    },
    /// A code segment with both L and D set (reserved in long mode).
    CodeLongAndDefault,
    /// The kernel stack pointer is not canonical.
    StackNotCanonical {
        /// The stack pointer.
        sp0: u64,
    },
}

impl Rule {
    /// A short stable name of the rule (`"not-a-gate"`, ...), for logs and
    /// for tests comparing error kinds across backends.
    pub const fn name(&self) -> &'static str {
        match self {
            Rule::NotAGate { .. } => "not-a-gate",
            Rule::IstNotHonoured { .. } => "ist-not-honoured",
            Rule::NullSelector => "null-selector",
            Rule::GateSelectorInLdt { .. } => "gate-selector-in-ldt",
            Rule::SelectorPastLimit { .. } => "selector-past-limit",
            Rule::NotCodeSegment { .. } => "not-code-segment",
            Rule::SegmentNotPresent { .. } => "segment-not-present",
            Rule::WrongCodeWidth { .. } => "wrong-code-width",
            Rule::OffsetNotCanonical { .. } => "offset-not-canonical",
            Rule::BaseNotCanonical { .. } => "base-not-canonical",
            Rule::TssLimitTooSmall { .. } => "tss-limit-too-small",
            Rule::NotAllowedHere { .. } => "not-allowed-here",
            Rule::CodeLongAndDefault => "code-l-and-d",
            Rule::StackNotCanonical { .. } => "stack-not-canonical",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rule::NotAGate { found } => write!(
                f,
                "a present IDT entry must be an interrupt or trap gate, found type {found:#x} (S<<4|type) ({})",
                SystemType::from_bits(found).describe()
            ),
            Rule::IstNotHonoured {
                ist,
                backend,
                opt_in,
            } => write!(
                f,
                "IST {ist} cannot be honoured by the {backend} backend on this vector (the handler would run on the interrupted stack); {opt_in}"
            ),
            Rule::NullSelector => f.write_str("the gate's code selector is null"),
            Rule::GateSelectorInLdt { selector } => write!(
                f,
                "the gate's selector {selector} names the LDT (TI=1); interrupt handlers must name a GDT code segment (the LDT changes with every process)"
            ),
            Rule::SelectorPastLimit {
                selector,
                table,
                entries,
            } => write!(
                f,
                "selector {selector} is past the end of the loaded {table} ({entries} entries)"
            ),
            Rule::NotCodeSegment { selector, found } => write!(
                f,
                "selector {selector} names a descriptor of type {found:#x} (S<<4|type), not a code segment"
            ),
            Rule::SegmentNotPresent { selector } => {
                write!(
                    f,
                    "selector {selector} names a code segment that is not present"
                )
            }
            Rule::WrongCodeWidth { selector, need } => write!(
                f,
                "selector {selector} names a code segment that is not {need} (a {need} gate needs L={} D={})",
                (need == "64-bit") as u8,
                (need != "64-bit") as u8
            ),
            Rule::OffsetNotCanonical { offset } => {
                write!(f, "handler offset {offset:#x} is not canonical")
            }
            Rule::BaseNotCanonical { base } => write!(f, "base {base:#x} is not canonical"),
            Rule::TssLimitTooSmall { limit } => write!(
                f,
                "TSS limit {limit:#x} is below {MIN_TSS_LIMIT:#x}: the CPU needs at least 104 bytes"
            ),
            Rule::NotAllowedHere { found, allowed } => write!(
                f,
                "a descriptor of type {found:#x} (S<<4|type) cannot go here: this slot holds {allowed}"
            ),
            Rule::CodeLongAndDefault => f.write_str(
                "a code segment with both L and D set is reserved in long mode (#GP on load)",
            ),
            Rule::StackNotCanonical { sp0 } => {
                write!(f, "kernel stack pointer {sp0:#x} is not canonical")
            }
        }
    }
}

/// A set of IDT vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VectorSet(pub [u64; 4]);

impl VectorSet {
    /// No vector.
    pub const EMPTY: VectorSet = VectorSet([0; 4]);
    /// Every vector.
    pub const ALL: VectorSet = VectorSet([u64::MAX; 4]);
    /// #DB, NMI, #DF and #MC: the vectors Linux's Xen PV guest registers
    /// without their IST (`ist_okay` in `cvt_gate_to_trap`), taking them on
    /// the kernel stack through Xen-specific entry points.
    pub const LINUX_IST_OKAY: VectorSet = VectorSet::EMPTY.with(1).with(2).with(8).with(18);

    /// This set plus `vector`.
    pub const fn with(self, vector: u8) -> VectorSet {
        let mut w = self.0;
        w[(vector >> 6) as usize] |= 1 << (vector & 63);
        VectorSet(w)
    }

    /// Is `vector` in the set?
    pub const fn contains(&self, vector: u8) -> bool {
        self.0[(vector >> 6) as usize] & (1 << (vector & 63)) != 0
    }
}

/// What a backend does with a gate's IST index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IstSupport {
    /// The CPU (or hypervisor) switches to the IST stack: native, VMI.
    Honoured,
    /// The backend cannot switch stacks (Xen's `trap_info` has no IST
    /// field): an IST gate is refused unless its vector is in the set the
    /// kernel accepted to take on the kernel stack.
    DroppedOn {
        /// Vectors whose IST the kernel opted to lose.
        vectors: VectorSet,
        /// How the kernel opts in (for the error message).
        opt_in: &'static str,
    },
}

/// A backend's view of the tables it loaded, for the rules that resolve a
/// selector. Reading it must execute no instruction and make no call to the
/// hypervisor.
pub trait TableView {
    /// Entries of the GDT this backend loaded, `None` if it knows none.
    fn gdt_entries(&self) -> Option<u32>;
    /// Word `index` of that GDT (`index < gdt_entries()`), as the guest
    /// wrote it.
    fn gdt_word(&self, index: u32) -> u64;
    /// Entries of the LDT selectors with TI=1 resolve in, `None` if none
    /// is known.
    fn ldt_entries(&self) -> Option<u32>;
    /// Word `index` of that LDT (`index < ldt_entries()`).
    fn ldt_word(&self, index: u32) -> u64;
    /// Is `sel` defined by the hypervisor itself (Xen's reserved GDT
    /// entries), so that only the hypervisor can judge it?
    fn hypervisor_selector(&self, sel: Selector) -> bool {
        let _ = sel;
        false
    }
}

/// A view that knows no table: only the table-free rules apply.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTables;

impl TableView for NoTables {
    fn gdt_entries(&self) -> Option<u32> {
        None
    }
    fn gdt_word(&self, _index: u32) -> u64 {
        0
    }
    fn ldt_entries(&self) -> Option<u32> {
        None
    }
    fn ldt_word(&self, _index: u32) -> u64 {
        0
    }
}

/// The tables a backend loaded, read from memory with atomic word loads
/// (no instruction, no hypervisor call): the view the native and VMI
/// backends use.
#[derive(Clone, Copy, Debug)]
pub struct MemoryView {
    gdt: Option<(u64, u32)>,
    ldt: Option<(u64, u32)>,
}

impl MemoryView {
    /// A view of the GDT and LDT at (base, entries).
    ///
    /// # Safety
    /// Each table given must be valid for aligned 8-byte atomic reads of
    /// all its `entries * 8` bytes while the view is used (a table loaded
    /// through the backend is, under the load ops' contract, until the
    /// next load of that table through it).
    pub const unsafe fn new(gdt: Option<(u64, u32)>, ldt: Option<(u64, u32)>) -> MemoryView {
        MemoryView { gdt, ldt }
    }

    /// The same view with another LDT (the one an op writes).
    ///
    /// # Safety
    /// As [`MemoryView::new`], for `ldt`.
    pub const unsafe fn with_ldt(self, ldt: Option<(u64, u32)>) -> MemoryView {
        MemoryView { ldt, ..self }
    }

    fn word(table: Option<(u64, u32)>, index: u32) -> u64 {
        match table {
            // SAFETY: index < entries, inside a table `new`'s caller
            // vouched for; tables are 8-byte aligned, so is every slot.
            Some((base, n)) if index < n => unsafe {
                crate::table::load_u64(base.wrapping_add(index as u64 * 8))
            },
            _ => 0,
        }
    }
}

impl TableView for MemoryView {
    fn gdt_entries(&self) -> Option<u32> {
        self.gdt.map(|g| g.1)
    }
    fn gdt_word(&self, index: u32) -> u64 {
        MemoryView::word(self.gdt, index)
    }
    fn ldt_entries(&self) -> Option<u32> {
        self.ldt.map(|l| l.1)
    }
    fn ldt_word(&self, index: u32) -> u64 {
        MemoryView::word(self.ldt, index)
    }
}

/// Long mode (the mode pvops is compiled for)?
const LONG: bool = cfg!(target_arch = "x86_64");

/// The width a gate's target code segment must have in this mode.
const CODE_WIDTH: &str = if LONG { "64-bit" } else { "32-bit" };

const fn invalid(op: &'static str, at: Slot, rule: Rule) -> PvError {
    PvError::Invalid { op, at, rule }
}

/// Check that `sel` names a present code segment of this mode's width, in
/// the GDT or (when `ldt_allowed` and TI=1) the LDT of `view`.
fn code_target<V: TableView + ?Sized>(
    sel: Selector,
    ldt_allowed: bool,
    view: &V,
) -> core::result::Result<(), Rule> {
    if sel.is_null() {
        return Err(Rule::NullSelector);
    }
    let in_ldt = sel.ti() == TableIndicator::Ldt;
    if in_ldt && !ldt_allowed {
        return Err(Rule::GateSelectorInLdt { selector: sel });
    }
    if !in_ldt && view.hypervisor_selector(sel) {
        return Ok(());
    }
    let (table, entries) = if in_ldt {
        (TableKind::Ldt, view.ldt_entries())
    } else {
        (TableKind::Gdt, view.gdt_entries())
    };
    // No table known: only the table-free rules apply.
    let Some(entries) = entries else {
        return Ok(());
    };
    let index = sel.index() as u32;
    if index >= entries {
        return Err(Rule::SelectorPastLimit {
            selector: sel,
            table,
            entries,
        });
    }
    let d = Descriptor(if in_ldt {
        view.ldt_word(index)
    } else {
        view.gdt_word(index)
    });
    if !d.is_code() {
        return Err(Rule::NotCodeSegment {
            selector: sel,
            found: d.s_type(),
        });
    }
    if !d.present() {
        return Err(Rule::SegmentNotPresent { selector: sel });
    }
    let width_ok = if LONG {
        d.long_mode() && !d.default_big()
    } else {
        d.default_big() && !d.long_mode()
    };
    if !width_ok {
        return Err(Rule::WrongCodeWidth {
            selector: sel,
            need: CODE_WIDTH,
        });
    }
    Ok(())
}

/// (low word, offset, IST) of a gate in this mode's IDT format.
#[cfg(target_arch = "x86_64")]
const fn gate_parts(g: IdtGate) -> (u64, u64, u8) {
    (g.low, g.offset(), g.ist())
}

/// (low word, offset, IST) of a gate in this mode's IDT format.
#[cfg(not(target_arch = "x86_64"))]
const fn gate_parts(g: IdtGate) -> (u64, u64, u8) {
    (g.0, g.offset() as u64, 0)
}

/// The rules for IDT gate `vector`, as written by `write_idt_entry` or
/// found by `load_idt`. A not-present gate is not checked.
pub fn idt_gate<V: TableView + ?Sized>(
    op: &'static str,
    vector: u8,
    gate: IdtGate,
    ist: IstSupport,
    backend: &'static str,
    view: &V,
) -> Result<()> {
    let at = Slot::Vector(vector);
    let (low, offset, ist_index) = gate_parts(gate);
    if low & (1 << 47) == 0 {
        return Ok(());
    }
    let found = ((low >> 40) & 0x1f) as u8;
    let typ = SystemType::from_bits(found);
    let is_gate = found & 0x10 == 0
        && match typ {
            SystemType::InterruptGate | SystemType::TrapGate => true,
            SystemType::TaskGate => !LONG,
            _ => false,
        };
    if !is_gate {
        return Err(invalid(op, at, Rule::NotAGate { found }));
    }
    let sel = Selector((low >> 16) as u16);
    if typ == SystemType::TaskGate {
        // A task gate names a TSS in the GDT (32-bit only); the TSS may be
        // filled after the gate is written (Linux's double-fault gate).
        if sel.is_null() {
            return Err(invalid(op, at, Rule::NullSelector));
        }
        if sel.ti() == TableIndicator::Ldt {
            return Err(invalid(op, at, Rule::GateSelectorInLdt { selector: sel }));
        }
        return Ok(());
    }
    if ist_index != 0
        && let IstSupport::DroppedOn { vectors, opt_in } = ist
        && !vectors.contains(vector)
    {
        return Err(invalid(
            op,
            at,
            Rule::IstNotHonoured {
                ist: ist_index,
                backend,
                opt_in,
            },
        ));
    }
    if !is_valid_linear(offset) {
        return Err(invalid(op, at, Rule::OffsetNotCanonical { offset }));
    }
    code_target(sel, false, view).map_err(|rule| invalid(op, at, rule))
}

/// The rules for every gate of an IDT about to be loaded; `gate(v)` reads
/// gate `v` (`v < entries`).
pub fn idt<V: TableView + ?Sized>(
    op: &'static str,
    entries: u32,
    gate: impl Fn(u8) -> IdtGate,
    ist: IstSupport,
    backend: &'static str,
    view: &V,
) -> Result<()> {
    for v in 0..entries.min(256) {
        idt_gate(op, v as u8, gate(v as u8), ist, backend, view)?;
    }
    Ok(())
}

/// Check a call gate (8-byte form, or the low half of the 16-byte one with
/// `offset` the full target).
fn call_gate<V: TableView + ?Sized>(
    low: Descriptor,
    offset: Option<u64>,
    ldt_allowed: bool,
    view: &V,
) -> core::result::Result<(), Rule> {
    if let Some(offset) = offset
        && !is_valid_linear(offset)
    {
        return Err(Rule::OffsetNotCanonical { offset });
    }
    code_target(crate::gate::Gate32(low.0).selector(), ldt_allowed, view)
}

/// The rules for an 8-byte descriptor written to a GDT or LDT slot.
fn descriptor<V: TableView + ?Sized>(
    table: TableKind,
    d: Descriptor,
    view: &V,
) -> core::result::Result<(), Rule> {
    if !d.present() {
        return Ok(());
    }
    if d.is_code_or_data() {
        if LONG && d.is_code() && d.long_mode() && d.default_big() {
            return Err(Rule::CodeLongAndDefault);
        }
        return Ok(());
    }
    match d.system_type() {
        SystemType::CallGate if LONG => {
            // The low half of a 64-bit call gate: the target selector.
            call_gate(d, None, true, view)
        }
        SystemType::CallGate => call_gate(
            d,
            Some(crate::gate::Gate32(d.0).offset() as u64),
            true,
            view,
        ),
        _ if table == TableKind::Ldt => match d.system_type() {
            SystemType::TaskGate | SystemType::CallGate16 => Ok(()),
            _ => Err(Rule::NotAllowedHere {
                found: d.s_type(),
                allowed: "code/data segments, call gates and task gates",
            }),
        },
        SystemType::Tss | SystemType::TssBusy if d.effective_limit() < MIN_TSS_LIMIT => {
            Err(Rule::TssLimitTooSmall {
                limit: d.effective_limit(),
            })
        }
        _ => Ok(()),
    }
}

/// The rules for an entry written to GDT slot `index` (`write_gdt_entry`).
pub fn gdt_entry<V: TableView + ?Sized>(
    op: &'static str,
    index: u32,
    entry: GdtEntry,
    view: &V,
) -> Result<()> {
    let at = Slot::Entry(TableKind::Gdt, index);
    let r = match entry {
        GdtEntry::Single(d) => descriptor(TableKind::Gdt, d, view),
        GdtEntry::Double(sd) => {
            let low = Descriptor(sd.low);
            if !low.present() || low.is_code_or_data() {
                descriptor(TableKind::Gdt, low, view)
            } else {
                match low.system_type() {
                    SystemType::Tss | SystemType::TssBusy => tss(low, sd.base()),
                    SystemType::Ldt => canonical_base(sd.base()),
                    SystemType::CallGate => call_gate(
                        low,
                        Some(
                            crate::gate::Gate64 {
                                low: sd.low,
                                high: sd.high,
                            }
                            .offset(),
                        ),
                        true,
                        view,
                    ),
                    _ => Ok(()),
                }
            }
        }
    };
    r.map_err(|rule| invalid(op, at, rule))
}

fn canonical_base(base: u64) -> core::result::Result<(), Rule> {
    if is_valid_linear(base) {
        Ok(())
    } else {
        Err(Rule::BaseNotCanonical { base })
    }
}

/// A TSS descriptor's limit and base.
fn tss(low: Descriptor, base: u64) -> core::result::Result<(), Rule> {
    if low.effective_limit() < MIN_TSS_LIMIT {
        return Err(Rule::TssLimitTooSmall {
            limit: low.effective_limit(),
        });
    }
    canonical_base(base)
}

/// The rules for a descriptor written to LDT slot `index`
/// (`write_ldt_entry`); `view`'s LDT should be the LDT written.
pub fn ldt_entry<V: TableView + ?Sized>(
    op: &'static str,
    index: u32,
    d: Descriptor,
    view: &V,
) -> Result<()> {
    descriptor(TableKind::Ldt, d, view)
        .map_err(|rule| invalid(op, Slot::Entry(TableKind::Ldt, index), rule))
}

/// The rules for the TLS descriptors `load_tls` puts in GDT slots
/// `first..first + 3`: code/data segments only.
pub fn tls(op: &'static str, first: u32, tls: &[Descriptor]) -> Result<()> {
    for (i, d) in tls.iter().enumerate() {
        let at = Slot::Entry(TableKind::Gdt, first + i as u32);
        if d.present() && !d.is_code_or_data() {
            return Err(invalid(
                op,
                at,
                Rule::NotAllowedHere {
                    found: d.s_type(),
                    allowed: "a code or data segment (a TLS slot)",
                },
            ));
        }
        descriptor(TableKind::Gdt, *d, &NoTables).map_err(|rule| invalid(op, at, rule))?;
    }
    Ok(())
}

/// The rules for the stack `load_kernel_stack` installs.
pub fn kernel_stack(op: &'static str, sp0: u64) -> Result<()> {
    if is_valid_linear(sp0) {
        Ok(())
    } else {
        Err(invalid(
            op,
            Slot::KernelStack,
            Rule::StackNotCanonical { sp0 },
        ))
    }
}

/// The rules for `load_tr(sel)`: a non-null GDT selector within the GDT's
/// limit (both slots in long mode) naming a present available TSS whose
/// limit is at least [`MIN_TSS_LIMIT`] and whose base is canonical. Returns
/// the TSS base.
pub fn tss_selector<V: TableView + ?Sized>(
    op: &'static str,
    sel: Selector,
    view: &V,
) -> Result<u64> {
    if sel.is_null() {
        return Err(PvError::BadSelector {
            op,
            selector: sel,
            rule: "is null; a TSS/LDT selector must name a GDT entry",
        });
    }
    if sel.ti() != TableIndicator::Gdt {
        return Err(PvError::BadSelector {
            op,
            selector: sel,
            rule: "has TI=1 (LDT); TSS and LDT descriptors live in the GDT",
        });
    }
    let Some(entries) = view.gdt_entries() else {
        return Err(PvError::NoTableLoaded {
            op,
            table: TableKind::Gdt,
        });
    };
    let index = sel.index() as u32;
    if index >= entries {
        return Err(PvError::IndexOutOfRange {
            table: TableKind::Gdt,
            index,
            entries,
        });
    }
    if LONG && index + 1 >= entries {
        return Err(PvError::DoubleSlotPastEnd {
            table: TableKind::Gdt,
            index,
            entries,
        });
    }
    let low = Descriptor(view.gdt_word(index));
    if low.is_code_or_data() || low.system_type() != SystemType::Tss || !low.present() {
        let expected = if !low.is_code_or_data() && low.system_type() == SystemType::TssBusy {
            "an available TSS (type 9); this one is busy (0xB): rewrite the descriptor before reloading TR"
        } else if !low.is_code_or_data() && !low.present() && low.system_type() == SystemType::Tss {
            "a present TSS descriptor (P is clear)"
        } else {
            "an available TSS descriptor (S=0, type 9)"
        };
        return Err(PvError::WrongDescriptorType {
            op,
            selector: sel,
            found: low.s_type(),
            expected,
        });
    }
    let mut base = low.base() as u64;
    if LONG {
        base |= view.gdt_word(index + 1) << 32;
    }
    tss(low, base).map_err(|rule| invalid(op, Slot::Selector(sel), rule))?;
    Ok(base)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;
    use crate::descriptor::SystemDescriptor;
    use crate::gate::Gate64;
    use crate::presets;
    use crate::selector::Ring;

    struct View(std::vec::Vec<u64>, Option<std::vec::Vec<u64>>);
    impl TableView for View {
        fn gdt_entries(&self) -> Option<u32> {
            Some(self.0.len() as u32)
        }
        fn gdt_word(&self, i: u32) -> u64 {
            self.0[i as usize]
        }
        fn ldt_entries(&self) -> Option<u32> {
            self.1.as_ref().map(|l| l.len() as u32)
        }
        fn ldt_word(&self, i: u32) -> u64 {
            self.1.as_ref().map_or(0, |l| l[i as usize])
        }
    }

    fn view() -> View {
        let tss = SystemDescriptor::tss(0xffff_8000_0000_1000, crate::Tss64::LIMIT).unwrap();
        let small = SystemDescriptor::tss(0x1000, 0x20).unwrap();
        View(
            std::vec![
                0,
                presets::KERNEL_CODE32.0,
                presets::KERNEL_CODE64.0,
                presets::KERNEL_DATA.0,
                tss.low,
                tss.high,
                small.low,
                small.high,
            ],
            Some(std::vec![0, presets::USER_CODE64.0]),
        )
    }

    const H: u64 = 0xffff_ffff_8100_0000;

    fn rule(r: Result<()>) -> &'static str {
        match r {
            Err(PvError::Invalid { rule, .. }) => rule.name(),
            Err(_) => "other",
            Ok(()) => "ok",
        }
    }

    #[test]
    fn gates() {
        let v = view();
        let g = |sel: u16| Gate64::interrupt(Selector(sel), H, Ring::Ring0);
        let check = |gate| rule(idt_gate("t", 14, gate, IstSupport::Honoured, "t", &v));
        assert_eq!(check(g(0x10)), "ok");
        assert_eq!(check(g(0x18)), "not-code-segment");
        assert_eq!(check(g(0x08)), "wrong-code-width");
        assert_eq!(check(g(0x0c)), "gate-selector-in-ldt");
        assert_eq!(check(g(0)), "null-selector");
        assert_eq!(check(g(0x400)), "selector-past-limit");
        assert_eq!(
            check(Gate64::interrupt(Selector(0x10), 1 << 47, Ring::Ring0)),
            "offset-not-canonical"
        );
        assert_eq!(
            check(Gate64::call(Selector(0x10), H, Ring::Ring0)),
            "not-a-gate"
        );
        assert_eq!(check(Gate64::MISSING), "ok");
        let ist = g(0x10).with_ist(1).unwrap();
        let xen = IstSupport::DroppedOn {
            vectors: VectorSet::LINUX_IST_OKAY,
            opt_in: "opt in",
        };
        assert_eq!(
            rule(idt_gate("t", 14, ist, xen, "xen", &v)),
            "ist-not-honoured"
        );
        assert_eq!(rule(idt_gate("t", 8, ist, xen, "xen", &v)), "ok");
        // No table known: the table rules are skipped.
        assert_eq!(
            rule(idt_gate(
                "t",
                3,
                g(0x18),
                IstSupport::Honoured,
                "t",
                &NoTables
            )),
            "ok"
        );
        let e = idt_gate(
            "write_idt_entry",
            14,
            g(0x18),
            IstSupport::Honoured,
            "t",
            &v,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("write_idt_entry: IDT vector 14 (#PF): selector 0x0018"),
            "{e}"
        );
    }

    #[test]
    fn tss_rules() {
        let v = view();
        assert_eq!(
            tss_selector("load_tr", Selector(0x20), &v),
            Ok(0xffff_8000_0000_1000)
        );
        assert!(matches!(
            tss_selector("load_tr", Selector(0x30), &v),
            Err(PvError::Invalid {
                rule: Rule::TssLimitTooSmall { limit: 0x20 },
                ..
            })
        ));
        assert!(matches!(
            tss_selector("load_tr", Selector(0x24), &v),
            Err(PvError::BadSelector { .. })
        ));
        assert!(matches!(
            tss_selector("load_tr", Selector(0x18), &v),
            Err(PvError::WrongDescriptorType { .. })
        ));
        let bad = SystemDescriptor::tss(0x0000_8000_0000_0000, crate::Tss64::LIMIT).unwrap();
        assert_eq!(
            rule(gdt_entry("w", 8, bad.into(), &v)),
            "base-not-canonical"
        );
        let small = SystemDescriptor::tss(0x1000, 0x10).unwrap();
        assert_eq!(
            rule(gdt_entry("w", 8, small.into(), &v)),
            "tss-limit-too-small"
        );
        assert_eq!(rule(kernel_stack("k", 1 << 63)), "stack-not-canonical");
        assert_eq!(rule(kernel_stack("k", H)), "ok");
    }
}
