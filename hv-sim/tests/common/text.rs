//! Reading a boot's text in hv-sim's KVM tests (the one copy): tests
//! include it with `#[path = "common/text.rs"] mod text;`.

#![allow(dead_code)]

/// The first line of `text` that starts with `prefix`; panics (showing the
/// text) when there is none.
pub fn line(text: &str, prefix: &str) -> String {
    let l = text.lines().find(|l| l.starts_with(prefix));
    l.unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
        .to_string()
}

/// The value after `key` in `line`, up to the next space or `)`; panics
/// when `key` is not there.
pub fn field(line: &str, key: &str) -> String {
    let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[at..]
        .split([' ', ')'])
        .next()
        .unwrap_or_default()
        .to_string()
}
