//! Descriptors in plain words (`hv-sim explain HEX`).

use std::fmt::Write;

use pvops::{Descriptor, Gate32};

/// Parse 1..=16 hex digits with an optional `0x`/`0X` prefix.
pub fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if digits.is_empty() || digits.len() > 16 {
        return Err(format!(
            "`{s}`: expected up to 16 hex digits (an 8-byte descriptor), optionally prefixed by 0x"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("`{s}`: not a hexadecimal number"))
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
        assert_eq!(parse_hex_u64("0x00af9b000000ffff"), Ok(0x00af9b000000ffff));
        assert_eq!(parse_hex_u64("00CF93000000FFFF"), Ok(0x00cf93000000ffff));
        assert!(parse_hex_u64("0x").is_err());
        assert!(parse_hex_u64("00af9b000000ffff0").is_err());
        assert!(parse_hex_u64("zz").is_err());
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
