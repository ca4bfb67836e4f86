//! Puts `pvops-pvh.ld` on the linker's search path, so a kernel that
//! depends on this crate links with `-C link-arg=-Tpvops-pvh.ld` (a
//! dependency's link-search path reaches the final link; its link-args do
//! not).

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("pvops-pvh.ld", out.join("pvops-pvh.ld")).expect("copy pvops-pvh.ld to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=pvops-pvh.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
