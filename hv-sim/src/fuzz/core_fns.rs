//! Fuzz target: pvops' public encoding and decoding functions, Xen's
//! `check_descriptor`, and the CLI's inputs.
//!
//! Each case makes a batch of calls, each with an oracle:
//! * every 8- and 16-byte form decodes and re-encodes to the same bits
//!   (`Descriptor`, `Gate32`, `Gate64`, `SystemDescriptor`, `Selector`,
//!   `DtPtr32`/`DtPtr64`), and its `Display`/`Debug` never panics and stays
//!   short;
//! * the constructors (`data_segment`, `system32`, `tss`, `ldt`,
//!   `Gate64::new`, `with_ist`, `Gate32::call`, `Selector::try_new`) either
//!   refuse or build exactly what was asked for;
//! * table handles (`Gdt`/`Ldt`/`Idt::new`, `entry_addr`, `slot_addr`)
//!   never hand out a slot outside the table;
//! * `check_descriptor` (both ABIs) never accepts a present code/data
//!   descriptor below the guest kernel's ring and is idempotent (what it
//!   stores passes unchanged);
//! * the CLI: `parse_descriptor` accepts exactly `[0x|0X]` + 16 hex digits
//!   (checked by an independent rule here), its errors stay short however
//!   long the input; `for_each_descriptor` over arbitrary stdin bytes
//!   (long lines, CRLF, invalid UTF-8) hands out exactly the valid lines
//!   before the first bad one, and its error stays short.

use std::fmt::Write as _;

use pvops::{
    Descriptor, DescriptorTablePointer, DtPtr32, DtPtr64, Gate32, Gate64, GateKind, GdtEntry, Ring,
    Selector, SystemDescriptor, SystemType, TableIndicator,
};

use super::{CaseStats, Source, descriptor, int};
use crate::explain::{InputError, MAX_LINE, for_each_descriptor, parse_descriptor};
use crate::xen::{Abi, check_descriptor};

/// A `fmt::Write` sink that counts and drops.
struct Sink(usize);

impl std::fmt::Write for Sink {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

fn shown(v: impl std::fmt::Display + std::fmt::Debug) -> Result<(), String> {
    let mut s = Sink(0);
    let _ = write!(s, "{v}");
    let _ = write!(s, "{v:?}");
    if s.0 > 4096 {
        return Err(format!("{v:?} displays as {} bytes", s.0));
    }
    Ok(())
}

fn ring(s: &mut Source) -> Ring {
    pvops::selector::ring_from_bits(s.below(4) as u8)
}

/// The CLI's rule, written independently: an optional `0x`/`0X`, then
/// exactly 16 ASCII hex digits.
fn cli_rule(s: &str) -> Option<u64> {
    let d = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if d.len() != 16 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    d.bytes().try_fold(0u64, |v, b| {
        Some(v << 4 | u64::from((b as char).to_digit(16)?))
    })
}

/// A string for the CLI: a descriptor's hex, damaged, prefixed, padded.
fn cli_text(s: &mut Source) -> String {
    let v = descriptor(s);
    let mut t = match s.below(4) {
        0 => format!("{v:016x}"),
        1 => format!("0x{v:016X}"),
        2 => format!("0X{v:x}"),
        _ => format!("{v:#x}"),
    };
    for _ in 0..s.below(3) {
        let pos = s.below(t.len() as u64 + 1) as usize;
        let pos = (0..=pos)
            .rev()
            .find(|&p| t.is_char_boundary(p))
            .unwrap_or(0);
        match s.below(6) {
            0 => t.insert(
                pos,
                s.pick(&['+', '-', ' ', '_', 'g', '\u{e9}', '\0', '\r']),
            ),
            1 if pos < t.len() && t.is_char_boundary(pos + 1) => {
                t.remove(pos);
            }
            2 => t.insert_str(0, s.pick(&["0x", "0X", "+", " ", "0x0x"])),
            3 => t.push_str(s.pick(&["\n", " ", "0", "\r\n", "ff"])),
            4 => t = "f".repeat(s.pick(&[0usize, 1, 15, 16, 17, 4096, 70_000])),
            _ => {}
        }
    }
    t
}

/// One case (see the module documentation).
pub(crate) fn case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    for _ in 0..s.range(1, 32) {
        let k = s.below(12);
        st.calls += 1;
        st.checks += 1;
        st.outcome(0x4000 + k, 0);
        match k {
            0 => descriptor_roundtrip(s)?,
            1 => gate_roundtrip(s)?,
            2 => system_roundtrip(s)?,
            3 => selector_roundtrip(s)?,
            4 => dtptr_roundtrip(s)?,
            5 => constructors(s)?,
            6 => gate_constructors(s)?,
            7 => table_slots(s)?,
            8 => xen_check_descriptor(s)?,
            9 => cli_parse(s)?,
            _ => stdin_case(s)?,
        }
    }
    Ok(())
}

/// `Descriptor`: fields and words re-encode; `Display` of it, a vector name and an errno stays short.
fn descriptor_roundtrip(s: &mut Source) -> Result<(), String> {
    let d = Descriptor(descriptor(s));
    let back = Descriptor::from_fields(d.fields());
    if back != Ok(d) {
        return Err(format!("{d:?}: fields do not re-encode: {back:?}"));
    }
    let _ = (
        d.effective_limit(),
        d.system_type().describe(),
        d.segment_type(),
    );
    shown(d)?;
    let (lo, hi) = d.words();
    if Descriptor::from_words(lo, hi) != d {
        return Err(format!("{d:?}: words do not re-encode"));
    }
    shown(pvops::error::vector_name(s.word() as u8))?;
    let e = pvops::Errno(s.word() as i32);
    shown(e)?;
    let _ = pvops::Errno::from_return(int(s) as i64);
    Ok(())
}

/// `Gate32`/`Gate64`: fields re-encode.
fn gate_roundtrip(s: &mut Source) -> Result<(), String> {
    let g = Gate32(descriptor(s));
    if Gate32::from_fields(g.fields()) != Ok(g) {
        return Err(format!("{g:?}: fields do not re-encode"));
    }
    let _ = (g.kind(), g.param_count(), g.offset(), g.selector());
    let g64 = Gate64 {
        low: descriptor(s),
        high: int(s),
    };
    if Gate64::from_fields(g64.fields()) != Ok(g64) {
        return Err(format!("{g64:?}: fields do not re-encode"));
    }
    let _ = (g64.kind(), g64.ist(), g64.offset());
    shown(g64)?;
    Ok(())
}

/// `SystemDescriptor`: fields re-encode.
fn system_roundtrip(s: &mut Source) -> Result<(), String> {
    let d = SystemDescriptor {
        low: descriptor(s),
        high: int(s),
    };
    if SystemDescriptor::from_fields(d.fields()) != Ok(d) {
        return Err(format!("{d:?}: fields do not re-encode"));
    }
    let _ = (
        d.without_busy(),
        d.effective_limit(),
        d.system_type(),
        d.low_half(),
    );
    shown(d)?;
    Ok(())
}

/// `Selector`: fields re-encode; `try_new` refuses only an index past 0x1fff and builds what was asked.
fn selector_roundtrip(s: &mut Source) -> Result<(), String> {
    let sel = Selector(s.word() as u16);
    let again = Selector::new(sel.index(), sel.ti(), sel.rpl());
    if again != sel {
        return Err(format!("{sel:?}: fields do not re-encode ({again:?})"));
    }
    shown(sel)?;
    let idx = s.word() as u16;
    let ti = if s.chance(1, 2) {
        TableIndicator::Gdt
    } else {
        TableIndicator::Ldt
    };
    let r = ring(s);
    match Selector::try_new(idx, ti, r) {
        Ok(x) if x.index() != idx || x.ti() != ti || x.rpl() != r => {
            return Err(format!("try_new({idx}, {ti:?}, {r:?}) = {x:?}"));
        }
        Err(_) if idx <= 0x1fff => {
            return Err(format!("try_new refused index {idx}"));
        }
        _ => {}
    }
    Ok(())
}

/// `DtPtr64`/`DtPtr32` round-trip their bytes.
fn dtptr_roundtrip(s: &mut Source) -> Result<(), String> {
    let mut b = [0u8; 10];
    for x in b.iter_mut() {
        *x = s.word() as u8;
    }
    let p64 = DtPtr64::from_bytes(b);
    if p64.to_bytes() != b {
        return Err(format!("DtPtr64 {b:x?} does not round-trip"));
    }
    let b6: [u8; 6] = [b[0], b[1], b[2], b[3], b[4], b[5]];
    if DtPtr32::from_bytes(b6).to_bytes() != b6 {
        return Err(format!("DtPtr32 {b6:x?} does not round-trip"));
    }
    let p: DescriptorTablePointer = p64.into();
    let _ = (
        p.entries(8),
        p.entries(16),
        p.to_packed32(),
        p.to_packed64(),
    );
    Ok(())
}

/// `data_segment`, `system32`, `tss`, `ldt` refuse or build exactly what was asked for.
fn constructors(s: &mut Source) -> Result<(), String> {
    let (base, lim, r) = (int(s) as u32, int(s) as u32, ring(s));
    if let Ok(d) = Descriptor::data_segment(base, lim, r)
        && (d.base() != base || d.effective_limit() != lim || d.dpl() != r || !d.present())
    {
        return Err(format!("data_segment({base:#x}, {lim:#x}, {r:?}) = {d:?}"));
    }
    let typ = SystemType::from_bits(s.word() as u8);
    if let Ok(d) = Descriptor::system32(typ, base, lim, r)
        && (d.base() != base || d.system_type() != typ || d.dpl() != r)
    {
        return Err(format!("system32({typ:?}, ..) = {d:?}"));
    }
    let _ = Descriptor::from_linux_flags(s.word() as u16, base, lim);
    let b64 = int(s);
    if let Ok(t) = SystemDescriptor::tss(b64, lim)
        && (t.base() != b64 || t.system_type() != SystemType::Tss)
    {
        return Err(format!("tss({b64:#x}, {lim:#x}) = {t:?}"));
    }
    let n = int(s) as u32;
    if let Ok(l) = SystemDescriptor::ldt(b64, n)
        && (l.base() != b64 || u64::from(l.effective_limit()) + 1 != u64::from(n) * 8)
    {
        return Err(format!("ldt({b64:#x}, {n}) = {l:?}"));
    }
    Ok(())
}

/// `Gate64::new`, `with_ist`, `Gate32::call` refuse or build exactly what was asked for.
fn gate_constructors(s: &mut Source) -> Result<(), String> {
    let kind = s.pick(&[
        GateKind::Interrupt,
        GateKind::Trap,
        GateKind::Call,
        GateKind::Task,
    ]);
    let sel = Selector(super::selector(s) as u16);
    let off = int(s);
    let r = ring(s);
    if let Ok(g) = Gate64::new(kind, sel, off, r) {
        if g.offset() != off || g.selector() != sel || g.dpl() != r || g.kind() != Some(kind) {
            return Err(format!(
                "Gate64::new({kind:?}, {sel:?}, {off:#x}, {r:?}) = {g:?}"
            ));
        }
        let ist = s.word() as u8;
        match g.with_ist(ist) {
            Ok(h) if h.ist() != ist || h.offset() != off => {
                return Err(format!("with_ist({ist}) = {h:?}"));
            }
            Err(_) if ist <= 7 && kind != GateKind::Call => {
                return Err(format!("with_ist({ist}) refused"));
            }
            _ => {}
        }
    }
    let params = s.word() as u8;
    if let Ok(g) = Gate32::call(sel, off as u32, r, params)
        && (g.param_count() != params || g.offset() != off as u32)
    {
        return Err(format!("Gate32::call(.., {params}) = {g:?}"));
    }
    Ok(())
}

/// `Gdt`/`Ldt`/`Idt` handles never hand out a slot outside the table.
fn table_slots(s: &mut Source) -> Result<(), String> {
    let base = int(s);
    let n = int(s) as u32;
    let idx = if s.chance(1, 2) {
        s.below(u64::from(n) + 2) as u32
    } else {
        int(s) as u32
    };
    let entry = if s.chance(1, 2) {
        GdtEntry::Single(Descriptor(descriptor(s)))
    } else {
        GdtEntry::Double(SystemDescriptor {
            low: descriptor(s),
            high: int(s),
        })
    };
    if let Ok(g) = pvops::Gdt::new(base, n)
        && let Ok(a) = g.entry_addr(idx, &entry)
    {
        let end = u128::from(base) + u128::from(n) * 8;
        if a < base || u128::from(a) + 8 * u128::from(entry.slots()) > end {
            return Err(format!(
                "Gdt({base:#x}, {n}).entry_addr({idx}) = {a:#x}, outside"
            ));
        }
    }
    if let Ok(l) = pvops::Ldt::new(base, n)
        && let Ok(a) = l.slot_addr(idx)
        && (a < base || u128::from(a) + 8 > u128::from(base) + u128::from(n) * 8)
    {
        return Err(format!(
            "Ldt({base:#x}, {n}).slot_addr({idx}) = {a:#x}, outside"
        ));
    }
    if let Ok(t) = pvops::Idt::new(base, n)
        && let Ok(a) = t.slot_addr(idx as u8)
        && (a < base || u128::from(a) + 16 > u128::from(base) + u128::from(n) * 16)
    {
        return Err(format!(
            "Idt({base:#x}, {n}).slot_addr({idx}) = {a:#x}, outside"
        ));
    }
    Ok(())
}

/// Xen's `check_descriptor` (both ABIs): never a present code/data descriptor below the kernel's ring, idempotent; call gates stored with DPL 0.
fn xen_check_descriptor(s: &mut Source) -> Result<(), String> {
    let d = descriptor(s);
    for abi in [Abi::Pv64, Abi::Pv32] {
        match check_descriptor(abi, d) {
            Ok(v) => {
                let dd = Descriptor(v);
                if dd.present() && dd.is_code_or_data() && (dd.dpl() as u32) < abi.krpl() {
                    return Err(format!(
                        "check_descriptor({}, {d:#018x}) stores {v:#018x}, DPL below the kernel's ring",
                        abi.name()
                    ));
                }
                // A call gate is stored with DPL 0 and its DPL
                // in the target's RPL (Xen: so that using it
                // faults and is emulated): not re-checkable,
                // but the RPL is at least the kernel's ring.
                let call_gate = dd.present() && !dd.is_code_or_data() && dd.typ() == 0xC;
                if call_gate {
                    if dd.dpl() != Ring::Ring0 || ((v >> 16) & 3) < u64::from(abi.krpl()) {
                        return Err(format!(
                            "check_descriptor({}, {d:#018x}) stores call gate {v:#018x}: DPL not 0 or RPL below the kernel's ring",
                            abi.name()
                        ));
                    }
                    continue;
                }
                let again = check_descriptor(abi, v);
                if again != Ok(v) {
                    return Err(format!(
                        "check_descriptor({}, {d:#018x}) = {v:#018x}, which it then turns into {again:?}",
                        abi.name()
                    ));
                }
            }
            Err(r) => shown(r)?,
        }
    }
    let _ = crate::xen::trace::decode_args(
        int(s),
        Abi::Pv64,
        &[int(s), int(s), int(s), int(s), int(s), int(s)],
    );
    let _ = crate::xen::trace::errno_name(int(s) as i64);
    Ok(())
}

/// `parse_descriptor` against an independent rule; `explain` of what it accepts.
fn cli_parse(s: &mut Source) -> Result<(), String> {
    let t = cli_text(s);
    let got = parse_descriptor(&t);
    let want = cli_rule(&t);
    match (&got, want) {
        (Ok(v), Some(w)) if *v == w => {}
        (Err(e), None) => {
            if e.to_string().len() > 300 {
                let n = e.to_string().len();
                return Err(format!("parse_descriptor error is {n} bytes"));
            }
        }
        _ => {
            return Err(format!(
                "parse_descriptor({:?}) = {got:?}, the rule says {want:?}",
                crate::explain::quote_prefix(&t)
            ));
        }
    }
    if let Ok(v) = got {
        let e = crate::explain::explain(v);
        if e.lines().count() != 4 {
            return Err(format!("explain({v:#x}) is not 4 lines: {e}"));
        }
    }
    Ok(())
}

/// `for_each_descriptor` over arbitrary stdin bytes.
fn stdin_case(s: &mut Source) -> Result<(), String> {
    let mut input = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..s.range(1, 8) {
        let l = match s.below(8) {
            0 => String::new(),
            1 => " \t ".into(),
            2 => "x".repeat(s.pick(&[MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 3 * MAX_LINE])),
            _ => cli_text(s).replace('\n', ""),
        };
        input.extend_from_slice(l.as_bytes());
        if s.chance(1, 8) {
            input.push(0xff);
        }
        input.extend_from_slice(if s.chance(1, 4) { b"\r\n" } else { b"\n" });
        lines.push(input.len());
    }
    if s.chance(1, 4) {
        input.pop();
    }
    // What the rule expects: each line's trimmed text, up to the first bad.
    let mut want = Vec::new();
    let mut want_err = false;
    for raw in input.split(|&b| b == b'\n') {
        if raw.len() > MAX_LINE {
            want_err = true;
            break;
        }
        let t = String::from_utf8_lossy(raw);
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        match cli_rule(t) {
            Some(v) => want.push(v),
            None => {
                want_err = true;
                break;
            }
        }
    }
    let mut got = Vec::new();
    let r = for_each_descriptor(&["-".to_string()], &input[..], |_, v| {
        got.push(v);
        Ok(())
    });
    match &r {
        Err(InputError::Input(e)) if e.len() > 300 => {
            return Err(format!("stdin error is {} bytes", e.len()));
        }
        Err(InputError::Output(e)) => return Err(format!("output error without output: {e}")),
        _ => {}
    }
    if got != want || r.is_err() != want_err {
        return Err(format!(
            "for_each_descriptor over {} bytes gave {got:x?} / {r:?}, the rule says {want:x?} / error {want_err}",
            input.len()
        ));
    }
    Ok(())
}
