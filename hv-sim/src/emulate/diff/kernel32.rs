//! The 32-bit scenarios run by `examples/kernel32` (issue 11,
//! deliverable 3), not by [`super::image`]'s hand-assembled guest.
//!
//! [`blob`] serialises scenarios (CPL 0, flat 32-bit code, paging off:
//! what a kernel that keeps paging off can run as they are drawn) with
//! the addresses of the differential image's tables ([`image::GDT`],
//! [`image::IDT`], [`image::WIN`], a stub at [`STUB`], records at
//! [`image::RESULTS`]), so the kernel's records are compared with the
//! emulator by the same code as the image's ([`compare_records`]).
//! [`run_blob`] boots the kernel under QEMU TCG with the blob as its
//! PVH module (`-initrd`) and reads the records back from its RAM file;
//! the kernel's side, and the blob's layout, are in
//! `examples/kernel32/src/scenarios.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::run::{read_records, wait};
use super::{DiffError, Edges, Paging, RECORD, Report, Scenario, compare_records, image};
use crate::kvm::{GuestCheck, parse_checks};

/// The blob's magic and version.
const MAGIC: &[u8; 8] = b"PVK32SCN";
const VERSION: u32 = 1;
/// Bytes per scenario entry.
const ENTRY: usize = 232;
/// Where the kernel writes each scenario's instruction and its way back
/// (the differential image's first stub address; nothing else there).
pub const STUB: u32 = image::LOAD + 0x8000;

/// Why a scenario cannot go to the kernel.
fn refuse(index: usize, why: &str) -> DiffError {
    DiffError::NotForKernel32 {
        index,
        why: why.to_string(),
    }
}

/// The blob for `scenarios`: a header (magic, version, count, entry size,
/// the tables' addresses, the TSS selector and record size, the GDT image: null, flat
/// code 0x08 and data 0x10, the runtime TSS, code and stack segments as
/// the image has them), then one entry per scenario.
pub fn blob(scenarios: &[Scenario]) -> Result<Vec<u8>, DiffError> {
    let mut b = Vec::with_capacity(304 + ENTRY * scenarios.len());
    b.extend_from_slice(MAGIC);
    let fields = [
        VERSION,
        scenarios.len() as u32,
        ENTRY as u32,
        image::GDT,
        image::IDT,
        u32::from(image::IDT_LIMIT),
        image::WIN,
        STUB,
        image::RESULTS,
        u32::from(image::TSS_SEL) | (RECORD as u32) << 16,
    ];
    for f in fields {
        b.extend_from_slice(&f.to_le_bytes());
    }
    let mut gdt = [0u64; 32];
    gdt[1] = 0x00cf_9b00_0000_ffff;
    gdt[2] = 0x00cf_9300_0000_ffff;
    gdt[usize::from(image::TSS_SEL >> 3)] = image::tss_descriptor(false);
    for (i, s) in scenarios.iter().enumerate() {
        if s.cpl != 0 || s.code16.is_some() || s.umip || s.ac || s.edges != Edges::default() {
            return Err(refuse(
                i,
                "not CPL 0, flat 32-bit code, UMIP, AC and TF clear, SS flat",
            ));
        }
        if s.paging != Paging::Off {
            return Err(refuse(i, "paging on (the kernel runs with paging off)"));
        }
        if s.insn.is_empty() || s.insn.len() > 15 {
            return Err(refuse(i, "instruction not 1 to 15 bytes"));
        }
        // The same for every such scenario (checked: one GDT image).
        let code = image::code_descriptor(s, STUB);
        let stack = image::stack_descriptor(s);
        if i == 0 {
            gdt[usize::from(image::CODE_SEL >> 3)] = code;
            gdt[usize::from(image::STACK_SEL >> 3)] = stack;
        }
    }
    for d in gdt {
        b.extend_from_slice(&d.to_le_bytes());
    }
    for s in scenarios {
        b.push(s.insn.len() as u8);
        let mut insn = [0u8; 15];
        insn[..s.insn.len()].copy_from_slice(&s.insn);
        b.extend_from_slice(&insn);
        for r in s.regs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        for sel in s.sels {
            b.extend_from_slice(&sel.to_le_bytes());
        }
        b.extend_from_slice(&s.test_gdtr.0.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&s.test_gdtr.1.to_le_bytes());
        for w in s.gdt_slots {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&s.window);
    }
    debug_assert_eq!(b.len(), 304 + ENTRY * scenarios.len());
    Ok(b)
}

/// What one boot of the kernel with a blob gave.
#[derive(Clone, Debug)]
pub struct Kernel32Run {
    /// The records (`RECORD` bytes each), from the RAM file.
    pub records: Vec<u8>,
    /// The kernel's text (port 0xE9).
    pub text: String,
    /// Its check lines.
    pub checks: Vec<GuestCheck>,
    /// The status it wrote to port 0xF4 (its failed checks).
    pub exit_status: Option<u32>,
}

/// Boot `elf` (`examples/kernel32`) under QEMU TCG with `blob` as its
/// PVH module and 256 MiB of RAM in a file, and read `n` records back
/// from [`image::RESULTS`]. QEMU is killed after `timeout`.
pub fn run_blob(
    elf: &Path,
    blob: &[u8],
    n: usize,
    timeout: Duration,
) -> Result<Kernel32Run, DiffError> {
    crate::qemu::available()?;
    let io = |what: String| move |source| DiffError::Io { what, source };
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hv-sim-k32-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let (module, ram, text) = (dir.join("blob"), dir.join("ram"), dir.join("text"));
    let _ = std::fs::remove_file(&ram);
    std::fs::write(&module, blob).map_err(io(format!("writing {}", module.display())))?;
    let child = Command::new(crate::qemu::QEMU)
        .args(["-cpu", "qemu64,+smep,+smap,+umip"])
        .args(["-machine", "pc,memory-backend=ram", "-accel", "tcg"])
        .args(["-m", "256", "-object"])
        .arg(format!(
            "memory-backend-file,id=ram,size=256M,share=on,mem-path={}",
            ram.display()
        ))
        .args(["-nographic", "-no-reboot", "-display", "none"])
        .args(["-serial", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(elf)
        .arg("-initrd")
        .arg(&module)
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", text.display()))
        .args(["-device", "isa-debugcon,iobase=0xe9,chardev=dbg"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {}", crate::qemu::QEMU)));
    let waited = child.and_then(|mut child| wait(&mut child, timeout));
    let records = read_records(&ram, n * RECORD).unwrap_or_default();
    let text = std::fs::read(&text)
        .map(|t| String::from_utf8_lossy(&t[..t.len().min(1 << 20)]).into_owned())
        .unwrap_or_default();
    // The RAM file is 256 MiB (sparse): removed whatever happened.
    let _ = std::fs::remove_dir_all(&dir);
    let status = waited?;
    let exit_status = status
        .code()
        .filter(|c| c & 1 == 1)
        .map(|c| (c >> 1) as u32);
    if exit_status.is_none() || records.len() != n * RECORD {
        return Err(DiffError::Unfinished {
            status,
            got: records.len(),
            want: n * RECORD,
        });
    }
    Ok(Kernel32Run {
        records,
        checks: parse_checks(&text),
        text,
        exit_status,
    })
}

/// Run `scenarios` in the kernel (see [`run_blob`]) and compare its
/// records with the emulator's, as [`super::compare_scenarios`] does
/// QEMU's image's: the report and the run (its text and checks).
pub fn compare_kernel32(
    elf: &Path,
    scenarios: &[Scenario],
    timeout: Duration,
) -> Result<(Report, Kernel32Run), DiffError> {
    let run = run_blob(elf, &blob(scenarios)?, scenarios.len(), timeout)?;
    let at = vec![STUB; scenarios.len()];
    let report = compare_records(scenarios, &run.records, &at);
    Ok((report, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blob's layout, field by field, for one scenario (the kernel
    /// reads it at these offsets: examples/kernel32/src/scenarios.rs).
    #[test]
    fn blob_layout() {
        let mut s = super::super::generate_in(1, super::super::SEED, Paging::Off).remove(0);
        s.regs = [1, 2, 3, 4, 5, 6, 7, 8];
        let b = blob(std::slice::from_ref(&s)).unwrap();
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(
            (u32at(8), u32at(12), u32at(16), u32at(20), u32at(24)),
            (1, 1, 232, image::GDT, image::IDT)
        );
        assert_eq!(
            (u32at(28), u32at(32), u32at(36), u32at(40), u32at(44)),
            (0x107, image::WIN, STUB, image::RESULTS, 0x88 | 220 << 16)
        );
        assert_eq!(u32at(48 + 8), 0xffff);
        let tss = u64::from_le_bytes(b[48 + 0x88..48 + 0x90].try_into().unwrap());
        assert_eq!(tss, image::tss_descriptor(false));
        let e = 304;
        assert_eq!(usize::from(b[e]), s.insn.len());
        assert_eq!(&b[e + 1..e + 1 + s.insn.len()], &s.insn[..]);
        assert_eq!((u32at(e + 16), u32at(e + 44)), (1, 8));
        let sels: Vec<u8> = s.sels.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(b[e + 48..e + 56], sels[..]);
        assert_eq!(u32at(e + 60), s.test_gdtr.1);
        assert_eq!(&b[e + 168..e + 232], &s.window[..]);
        assert_eq!(b.len(), e + 232);
        let mut bad = s.clone();
        bad.cpl = 3;
        assert!(matches!(
            blob(&[s, bad]),
            Err(DiffError::NotForKernel32 { index: 1, .. })
        ));
    }
}
