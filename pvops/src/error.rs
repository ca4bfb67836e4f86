//! Errors of the descriptor model and the ops layer.
//!
//! Every error names the rule that was broken, so a kernel developer reading
//! a boot log knows what to fix without opening the source. Where a
//! hypervisor rejected a call, the error carries the hypervisor's errno.

use core::fmt;

use crate::selector::Selector;
use crate::validate::{Rule, Slot};

/// Which descriptor table an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// Global descriptor table.
    Gdt,
    /// Local descriptor table.
    Ldt,
    /// Interrupt descriptor table.
    Idt,
}

impl TableKind {
    /// Short upper-case name (`GDT`, `LDT`, `IDT`).
    pub const fn name(self) -> &'static str {
        match self {
            TableKind::Gdt => "GDT",
            TableKind::Ldt => "LDT",
            TableKind::Idt => "IDT",
        }
    }
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Linux/Xen errno value as returned by a hypervisor (positive number;
/// hypercalls return its negation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory (Xen uses it for missing objects).
    pub const ENOENT: Errno = Errno(2);
    /// Try again (continuation / preemption).
    pub const EAGAIN: Errno = Errno(11);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Bad address: the hypervisor could not read or write a guest buffer.
    pub const EFAULT: Errno = Errno(14);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// Function not implemented (unknown hypercall).
    pub const ENOSYS: Errno = Errno(38);

    /// The symbolic name, or `None` for values this crate does not name.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            11 => "EAGAIN",
            12 => "ENOMEM",
            14 => "EFAULT",
            16 => "EBUSY",
            22 => "EINVAL",
            38 => "ENOSYS",
            _ => return None,
        })
    }

    /// Decode a hypercall return value: negative values are errnos.
    pub const fn from_return(ret: i64) -> Option<Errno> {
        if ret < 0 && ret >= -4095 {
            Some(Errno(-ret as i32))
        } else {
            None
        }
    }
}

/// Shown as the hypercall would return it: `-EINVAL (-22)`, or `errno -99`
/// for a value this crate does not name. Any `i32` prints, `i32::MIN` and
/// negative (ill-formed) values included: the negation is done in `i64`,
/// so it cannot overflow.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = -i64::from(self.0);
        match self.name() {
            Some(n) => write!(f, "-{n} ({ret})"),
            None => write!(f, "errno {ret}"),
        }
    }
}

/// Everything that can go wrong in the descriptor model or the ops layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PvError {
    /// A descriptor field does not fit its bit width.
    FieldOutOfRange {
        /// Field name (e.g. `limit`).
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest value the field holds.
        max: u64,
    },
    /// A table would be larger than the architecture allows (limit is 16 bits).
    TableTooLarge {
        /// The table.
        table: TableKind,
        /// Entries requested.
        entries: u32,
        /// Largest entry count allowed.
        max: u32,
    },
    /// A table with zero entries where one is required.
    EmptyTable {
        /// The table.
        table: TableKind,
    },
    /// A table pointer whose limit is not `entries * entry_size - 1`.
    LimitNotWhole {
        /// The table.
        table: TableKind,
        /// The limit given.
        limit: u16,
        /// The entry size in bytes.
        entry_size: u8,
    },
    /// A table base that is not aligned as required.
    MisalignedTable {
        /// The table.
        table: TableKind,
        /// The base given.
        base: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// A table base that is not a valid address for this CPU (non-canonical
    /// on 64-bit, above 4 GiB on 32-bit, or the table wraps around).
    BadTableBase {
        /// The table.
        table: TableKind,
        /// The base given.
        base: u64,
    },
    /// An index past the end of a table.
    IndexOutOfRange {
        /// The table.
        table: TableKind,
        /// Index given.
        index: u32,
        /// Entries in the table.
        entries: u32,
    },
    /// A 16-byte system descriptor whose upper half would fall past the table.
    DoubleSlotPastEnd {
        /// The table.
        table: TableKind,
        /// Index given (the upper half would be `index + 1`).
        index: u32,
        /// Entries in the table.
        entries: u32,
    },
    /// A 16-byte descriptor on a CPU mode that has none (32-bit).
    DoubleSlotUnsupported,
    /// Interrupt stack table index outside 1..=7.
    BadIst {
        /// Index given.
        ist: u8,
    },
    /// IST only exists in 64-bit interrupt and trap gates.
    IstOnNonInterruptGate,
    /// A selector that must name a GDT entry names the LDT (TI=1) or is null.
    BadSelector {
        /// Operation.
        op: &'static str,
        /// The selector.
        selector: Selector,
        /// What was expected.
        rule: &'static str,
    },
    /// The descriptor a selector names is not of the kind the operation needs.
    WrongDescriptorType {
        /// Operation.
        op: &'static str,
        /// The selector.
        selector: Selector,
        /// The descriptor's 4-bit type with the S bit in bit 4.
        found: u8,
        /// What was expected.
        expected: &'static str,
    },
    /// An operation needs a loaded GDT (or IDT) and none was loaded through
    /// this backend.
    NoTableLoaded {
        /// Operation.
        op: &'static str,
        /// Table needed.
        table: TableKind,
    },
    /// Lazy mode was entered twice or left without being entered.
    LazyModeMismatch {
        /// Operation.
        op: &'static str,
    },
    /// The dynamic ops table was used before [`crate::dispatch::install`].
    NotInstalled,
    /// [`crate::dispatch::install`] was called a second time.
    AlreadyInstalled {
        /// Name of the backend already installed.
        installed: &'static str,
    },
    /// A per-CPU backend ([`crate::percpu::PerCpu`]) has no backend for
    /// the CPU index its hook gave (out of range, not registered yet, or
    /// registered twice).
    PerCpu {
        /// Operation (`register` for [`crate::percpu::PerCpu::register`]).
        op: &'static str,
        /// The CPU index.
        cpu: usize,
        /// How many per-CPU slots there are.
        slots: usize,
        /// What is wrong.
        rule: &'static str,
    },
    /// The backend does not implement this operation in this environment.
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// Operation.
        op: &'static str,
    },
    /// The CPU (or a CPU model) raised a fault executing the instruction.
    CpuFault {
        /// Instruction (e.g. `ltr`).
        insn: &'static str,
        /// Exception vector (13 = #GP, 10 = #TS, 11 = #NP, 12 = #SS, 14 = #PF).
        vector: u8,
        /// Error code pushed by the fault.
        error_code: u32,
    },
    /// A hypervisor rejected a call.
    Hypervisor {
        /// The hypercall or VMI call (e.g. `set_gdt`).
        call: &'static str,
        /// The errno it returned.
        errno: Errno,
        /// The table slot, vector or selector the call was about
        /// ([`Slot::None`] when it was about no single one).
        at: Slot,
    },
    /// An argument broke a rule of the validation layer
    /// ([`crate::validate`]); checked before any instruction or hypercall,
    /// the same way on every backend.
    Invalid {
        /// Operation.
        op: &'static str,
        /// The table and slot or vector.
        at: Slot,
        /// The rule, with the values that broke it.
        rule: Rule,
    },
    /// An `x86-interrupt` handler's error-code parameter does not match
    /// what the CPU pushes for the vector.
    HandlerMismatch {
        /// The exception vector.
        vector: u8,
        /// Whether the CPU pushes an error code for it.
        pushes_error_code: bool,
    },
    /// Address translation the backend needs (virtual to machine) failed.
    NoTranslation {
        /// Operation.
        op: &'static str,
        /// The guest virtual address.
        addr: u64,
    },
}

impl fmt::Display for PvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PvError::*;
        match *self {
            FieldOutOfRange { field, value, max } => write!(
                f,
                "descriptor field `{field}` = {value:#x} does not fit (largest is {max:#x})"
            ),
            TableTooLarge {
                table,
                entries,
                max,
            } => write!(
                f,
                "{table} of {entries} entries is too large: the 16-bit limit allows at most {max} entries (64 KiB)"
            ),
            EmptyTable { table } => write!(f, "{table} must have at least one entry"),
            LimitNotWhole {
                table,
                limit,
                entry_size,
            } => write!(
                f,
                "{table} limit {limit:#x} is not a whole number of {entry_size}-byte entries (limit must be entries*{entry_size}-1)"
            ),
            MisalignedTable { table, base, align } => write!(
                f,
                "{table} base {base:#x} is not {align}-byte aligned"
            ),
            BadTableBase { table, base } => write!(
                f,
                "{table} base {base:#x} is not a valid linear address for this CPU (non-canonical, beyond the address width, or the table wraps)"
            ),
            IndexOutOfRange {
                table,
                index,
                entries,
            } => write!(
                f,
                "index {index} is past the end of the {table} ({entries} entries)"
            ),
            DoubleSlotPastEnd {
                table,
                index,
                entries,
            } => write!(
                f,
                "a 16-byte descriptor at {table} index {index} needs slots {index} and {} but the {table} has {entries} entries",
                index + 1
            ),
            DoubleSlotUnsupported => f.write_str(
                "16-byte system descriptors exist only in long mode; a 32-bit GDT takes 8-byte TSS/LDT descriptors",
            ),
            BadIst { ist } => write!(f, "IST index {ist} is outside 1..=7"),
            IstOnNonInterruptGate => {
                f.write_str("an IST index applies only to 64-bit interrupt and trap gates")
            }
            BadSelector { op, selector, rule } => {
                write!(f, "{op}: selector {selector} {rule}")
            }
            WrongDescriptorType {
                op,
                selector,
                found,
                expected,
            } => write!(
                f,
                "{op}: selector {selector} names a descriptor of type {found:#x} (S<<4|type), expected {expected}"
            ),
            NoTableLoaded { op, table } => {
                write!(f, "{op}: no {table} has been loaded through this backend")
            }
            LazyModeMismatch { op } => write!(
                f,
                "{op}: lazy CPU mode must be entered once and left once (no nesting)"
            ),
            NotInstalled => f.write_str(
                "pvops: no ops table installed; call pvops::dispatch::install() once at boot",
            ),
            AlreadyInstalled { installed } => write!(
                f,
                "pvops: an ops table ({installed}) is already installed; the table is installed once at boot"
            ),
            PerCpu {
                op,
                cpu,
                slots,
                rule,
            } => write!(f, "{op}: CPU index {cpu} (of {slots} per-CPU slots) {rule}"),
            Unsupported { backend, op } => write!(f, "{backend}: {op} is not supported"),
            HandlerMismatch {
                vector,
                pushes_error_code,
            } => write!(
                f,
                "IDT vector {vector} ({}): the CPU {} an error code, the handler {}",
                vector_name(vector),
                if pushes_error_code { "pushes" } else { "pushes no" },
                if pushes_error_code {
                    "takes none"
                } else {
                    "takes one"
                }
            ),

            CpuFault {
                insn,
                vector,
                error_code,
            } => write!(
                f,
                "{insn} raised exception {vector} ({}) with error code {error_code:#x}",
                vector_name(vector)
            ),
            Hypervisor {
                call,
                errno,
                at: Slot::None,
            } => write!(f, "hypervisor rejected {call}: {errno}"),
            Hypervisor { call, errno, at } => {
                write!(f, "hypervisor rejected {call} for {at}: {errno}")
            }
            Invalid { op, at, rule } => write!(f, "{op}: {at}: {rule}"),
            NoTranslation { op, addr } => write!(
                f,
                "{op}: virtual address {addr:#x} has no machine translation"
            ),
        }
    }
}

/// Mnemonic of an exception vector (`#GP`, ...), for messages.
pub const fn vector_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => "vector",
    }
}

impl core::error::Error for PvError {}

/// Result alias used throughout pvops.
pub type Result<T, E = PvError> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn every_error_names_its_rule() {
        let sel = Selector(0x40);
        let cases: &[(PvError, &str)] = &[
            (
                PvError::FieldOutOfRange {
                    field: "limit",
                    value: 0x100000,
                    max: 0xfffff,
                },
                "does not fit",
            ),
            (
                PvError::TableTooLarge {
                    table: TableKind::Ldt,
                    entries: 8193,
                    max: 8192,
                },
                "at most 8192 entries",
            ),
            (
                PvError::EmptyTable {
                    table: TableKind::Gdt,
                },
                "at least one entry",
            ),
            (
                PvError::LimitNotWhole {
                    table: TableKind::Gdt,
                    limit: 8,
                    entry_size: 8,
                },
                "entries*8-1",
            ),
            (
                PvError::MisalignedTable {
                    table: TableKind::Idt,
                    base: 4,
                    align: 8,
                },
                "8-byte aligned",
            ),
            (
                PvError::BadTableBase {
                    table: TableKind::Gdt,
                    base: 1 << 47,
                },
                "non-canonical",
            ),
            (
                PvError::IndexOutOfRange {
                    table: TableKind::Gdt,
                    index: 9,
                    entries: 9,
                },
                "past the end of the GDT",
            ),
            (
                PvError::DoubleSlotPastEnd {
                    table: TableKind::Gdt,
                    index: 8,
                    entries: 9,
                },
                "needs slots 8 and 9",
            ),
            (PvError::DoubleSlotUnsupported, "only in long mode"),
            (PvError::BadIst { ist: 9 }, "outside 1..=7"),
            (PvError::IstOnNonInterruptGate, "interrupt and trap gates"),
            (
                PvError::BadSelector {
                    op: "load_tr",
                    selector: sel,
                    rule: "is null",
                },
                "load_tr: selector 0x0040",
            ),
            (
                PvError::WrongDescriptorType {
                    op: "load_tr",
                    selector: sel,
                    found: 0x1b,
                    expected: "a TSS",
                },
                "expected a TSS",
            ),
            (
                PvError::NoTableLoaded {
                    op: "load_tls",
                    table: TableKind::Gdt,
                },
                "no GDT has been loaded",
            ),
            (
                PvError::LazyModeMismatch {
                    op: "enter_lazy_cpu",
                },
                "no nesting",
            ),
            (PvError::NotInstalled, "install()"),
            (
                PvError::AlreadyInstalled { installed: "xen" },
                "(xen) is already installed",
            ),
            (
                PvError::PerCpu {
                    op: "load_tr",
                    cpu: 3,
                    slots: 2,
                    rule: "is out of range",
                },
                "load_tr: CPU index 3 (of 2 per-CPU slots) is out of range",
            ),
            (
                PvError::Unsupported {
                    backend: "vmi",
                    op: "load_tls",
                },
                "not supported",
            ),
            (
                PvError::CpuFault {
                    insn: "ltr",
                    vector: 13,
                    error_code: 0x40,
                },
                "#GP",
            ),
            (
                PvError::Hypervisor {
                    call: "set_gdt",
                    errno: Errno::EINVAL,
                    at: Slot::None,
                },
                "-EINVAL (-22)",
            ),
            (
                PvError::Hypervisor {
                    call: "update_descriptor",
                    errno: Errno::EINVAL,
                    at: Slot::Entry(TableKind::Gdt, 12),
                },
                "hypervisor rejected update_descriptor for GDT[12]: -EINVAL (-22)",
            ),
            (
                PvError::Invalid {
                    op: "write_idt_entry",
                    at: Slot::Vector(14),
                    rule: Rule::OffsetNotCanonical { offset: 1 << 47 },
                },
                "write_idt_entry: IDT vector 14 (#PF): handler offset 0x800000000000 is not canonical",
            ),
            (
                PvError::NoTranslation {
                    op: "load_gdt",
                    addr: 0x1000,
                },
                "no machine translation",
            ),
        ];
        for (e, needle) in cases {
            let s = e.to_string();
            assert!(s.contains(needle), "{s:?} should contain {needle:?}");
        }
        assert_eq!(Errno::from_return(-14), Some(Errno::EFAULT));
        assert_eq!(Errno::from_return(0), None);
        assert_eq!(Errno(99).to_string(), "errno -99");
    }

    /// Issue 10 item 1: `-self.0` overflowed (a panic in debug builds) for
    /// `i32::MIN`; every `i32` must print.
    #[test]
    fn errno_display_never_overflows() {
        let cases: &[(i32, &str)] = &[
            (i32::MIN, "errno 2147483648"),
            (i32::MIN + 1, "errno 2147483647"),
            (i32::MAX, "errno -2147483647"),
            (-22, "errno 22"),
            (-1, "errno 1"),
            (0, "errno 0"),
            (22, "-EINVAL (-22)"),
            (4095, "errno -4095"),
        ];
        for &(v, want) in cases {
            assert_eq!(Errno(v).to_string(), want, "Errno({v})");
        }
    }
}
