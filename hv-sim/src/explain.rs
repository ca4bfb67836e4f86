//! Descriptors in plain words (`hv-sim explain HEX`), and the input rules
//! `explain` and `check-descriptor` share ([`parse_descriptor`],
//! [`for_each_descriptor`]).

use std::fmt::Write;
use std::io::{self, BufRead, Read};

use pvops::{Descriptor, Gate32};

/// The forms of an 8-byte descriptor that `explain` and `check-descriptor`
/// both accept, for their `--help` and their errors.
pub const DESCRIPTOR_FORMS: &str = "exactly 16 hex digits (either case), optionally prefixed by 0x or 0X; no sign, no spaces, no underscores";

/// How much of a malformed input an error message quotes.
const QUOTED_PREFIX: usize = 24;

/// Parse an 8-byte descriptor as given on the command line or on a stdin
/// line: exactly 16 hex digits (either case), optionally prefixed by `0x` or
/// `0X`. Nothing else is accepted: no sign (`+f`), no surrounding spaces, no
/// short forms. `explain` and `check-descriptor` both parse with this, so
/// they accept the same inputs. The error quotes at most a short prefix of
/// the input, however long it is.
pub fn parse_descriptor(s: &str) -> Result<u64, ParseDescriptorError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let malformed = || ParseDescriptorError {
        quoted: quote_prefix(s),
    };
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    // 16 hex digits always fit in a u64.
    u64::from_str_radix(digits, 16).map_err(|_| malformed())
}

/// A malformed descriptor ([`parse_descriptor`]): not [`DESCRIPTOR_FORMS`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseDescriptorError {
    /// The input, quoted and cut to a short prefix ([`quote_prefix`]).
    pub quoted: String,
}

impl std::fmt::Display for ParseDescriptorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed descriptor {}: expected {DESCRIPTOR_FORMS}",
            self.quoted
        )
    }
}

impl std::error::Error for ParseDescriptorError {}

/// The longest stdin line `explain -` and `check-descriptor -` read, in
/// bytes (not counting its `\n`): a descriptor line is at most a few dozen.
pub const MAX_LINE: usize = 4096;

/// Why [`for_each_descriptor`] stopped.
#[derive(Debug)]
pub enum InputError {
    /// A malformed input (or an unreadable or over-long stdin line): the
    /// message names it (`line N: ` for stdin) and quotes a short prefix.
    Input(String),
    /// Writing the output failed (a closed pipe, a full disk).
    Output(io::Error),
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Input(m) => f.write_str(m),
            InputError::Output(e) => write!(f, "writing output: {e}"),
        }
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InputError::Input(_) => None,
            InputError::Output(e) => Some(e),
        }
    }
}

/// The descriptors of a subcommand's arguments, in order, each handed to
/// `each` with its text: the arguments themselves, or with a single `-`
/// one per line of `stdin` (blank lines and spaces around a descriptor,
/// CRLF endings too, are ignored; a line longer than [`MAX_LINE`] bytes is
/// refused after reading at most `MAX_LINE + 1` bytes of it, so memory
/// stays bounded however long it is). Every subcommand that takes
/// descriptors reads them through this one function, so all accept the
/// same inputs and stop the same way: at the first malformed one
/// ([`InputError::Input`]), after the output of the ones before it, or at
/// the first failed write ([`InputError::Output`]).
pub fn for_each_descriptor<R: BufRead>(
    args: &[String],
    stdin: R,
    mut each: impl FnMut(&str, u64) -> io::Result<()>,
) -> Result<(), InputError> {
    if !(args.len() == 1 && args[0] == "-") {
        for h in args {
            let v = parse_descriptor(h).map_err(|e| InputError::Input(e.to_string()))?;
            each(h, v).map_err(InputError::Output)?;
        }
        return Ok(());
    }
    let mut input = stdin;
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    let mut n = 0u64;
    loop {
        line.clear();
        n += 1;
        let got = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| InputError::Input(format!("line {n}: reading stdin: {e}")))?;
        if got == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            return Err(InputError::Input(format!(
                "line {n}: longer than {MAX_LINE} bytes, the limit for a stdin line (a descriptor is 16 hex digits)"
            )));
        }
        // Bytes that are not UTF-8 make the line malformed.
        let text = String::from_utf8_lossy(&line);
        let h = text.trim();
        if h.is_empty() {
            continue;
        }
        let v = parse_descriptor(h).map_err(|e| InputError::Input(format!("line {n}: {e}")))?;
        each(h, v).map_err(InputError::Output)?;
    }
}

/// `s` quoted (escaped as by `{:?}`), cut to its first `QUOTED_PREFIX`
/// characters with its length in bytes when it is longer.
pub fn quote_prefix(s: &str) -> String {
    match s.char_indices().nth(QUOTED_PREFIX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

/// A multi-line explanation of an 8-byte descriptor: every field, then one
/// summary line.
pub fn explain(raw: u64) -> String {
    let d = Descriptor(raw);
    let f = d.fields();
    let mut s = String::new();
    let _ = writeln!(s, "descriptor {raw:#018x}");
    let _ = writeln!(s, "  summary : {d}");
    let _ = writeln!(
        s,
        "  P={} DPL={} S={} type={:#x} ({})",
        f.present as u8,
        f.dpl as u8,
        f.code_or_data as u8,
        f.typ,
        if f.code_or_data {
            type_words(f.typ)
        } else {
            d.system_type().describe().to_string()
        }
    );
    let is_gate = !f.code_or_data && matches!(f.typ, 4..=7 | 0xc | 0xe | 0xf);
    if !is_gate {
        let _ = writeln!(
            s,
            "  base={:#010x} limit={:#07x} G={} (effective limit {:#x}) D/B={} L={} AVL={}",
            f.base,
            f.limit,
            f.granularity as u8,
            d.effective_limit(),
            f.default_big as u8,
            f.long_mode as u8,
            f.avl as u8
        );
    } else {
        let g = Gate32(raw);
        let _ = writeln!(
            s,
            "  selector={} offset[31:0]={:#010x} byte4={:#04x}",
            g.selector(),
            g.offset(),
            (raw >> 32) as u8
        );
    }
    s
}

fn type_words(t: u8) -> String {
    let code = t & 8 != 0;
    let mut w = vec![if code { "code" } else { "data" }];
    match (code, t & 2 != 0) {
        (true, true) => w.push("readable"),
        (true, false) => w.push("execute-only"),
        (false, true) => w.push("writable"),
        (false, false) => w.push("read-only"),
    }
    if t & 4 != 0 {
        w.push(if code { "conforming" } else { "expand-down" });
    }
    if t & 1 != 0 {
        w.push("accessed");
    }
    w.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            parse_descriptor("0x00af9b000000ffff"),
            Ok(0x00af9b000000ffff)
        );
        assert_eq!(
            parse_descriptor("0X00af9b000000ffff"),
            Ok(0x00af9b000000ffff)
        );
        assert_eq!(parse_descriptor("00CF93000000FFFF"), Ok(0x00cf93000000ffff));
        for bad in [
            "",
            "0x",
            "f",
            "+f",
            "-1",
            "+0af9b000000ffff",
            "0x+0af9b000000ffff",
            "00af9b000000ffff0",
            " 00af9b000000ffff",
            "00af9b000000ffff\n",
            "00af_9b00_0000_ffff",
            "zz",
            "0x0x00af9b000000ff",
            "00af9b000000fff\u{e9}",
        ] {
            let e = parse_descriptor(bad).unwrap_err().to_string();
            assert!(e.starts_with("malformed descriptor "), "{bad:?}: {e}");
            assert!(e.contains("16 hex digits"), "{bad:?}: {e}");
        }
    }

    /// Issue 10 item 3: an error quotes a short prefix of bad input, never
    /// all of it.
    #[test]
    fn errors_quote_a_short_prefix() {
        let long = "q".repeat(1 << 20);
        let e = parse_descriptor(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.contains("qqqq\"... (1048576 bytes)"), "{e}");
        // Multi-byte characters are cut on a character boundary.
        let wide = "\u{e9}".repeat(100);
        let e = parse_descriptor(&wide).unwrap_err();
        assert_eq!(e.quoted, quote_prefix(&wide));
        let e = e.to_string();
        assert!(e.contains("(200 bytes)"), "{e}");
        assert_eq!(quote_prefix("ab"), "\"ab\"");
    }

    #[test]
    fn words() {
        let e = explain(0x00af9b000000ffff);
        assert!(e.contains("64-bit code"), "{e}");
        assert!(e.contains("readable, accessed"), "{e}");
        let e = explain(0x0000_8e00_0010_1234);
        assert!(e.contains("interrupt gate"), "{e}");
        assert!(e.contains("selector=0x0010"), "{e}");
    }
}
