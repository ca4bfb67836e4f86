//! Fuzz target: the VMI ROM probe (`pvops_vmi::rom`) on arbitrary bytes.
//!
//! A case lays out guest-physical memory as a few readable regions: VMI
//! ROM images (a well-formed API 3.0 header with its PCI header, license
//! and checksum, then a few bytes changed, fields set to boundary values,
//! or truncated) and random bytes, at option-ROM slots of the scan window
//! 0xC0000..0xE0000, straddling its end, or near the top of the address
//! space; everything else is unreadable. It then runs `probe`,
//! `probe_strict` and `check_rom_with` at chosen bases, both rule sets.
//!
//! Checked after every call: no panic, and no read that wraps around the
//! address space or is longer than what the probe needs; every read is
//! bounded in number; an accepted ROM really has what the rules demand,
//! re-read from the bytes here (signatures, API 3, a PCI header offset, a
//! NUL-terminated `"GPL"`/`"GPL v2"` license, the vendor and device it
//! reports; under the strict rules also the length, the zero checksum, the
//! `"PCIR"` header and the license inside the image); `probe` returns the
//! first slot that `check_rom` accepts and nothing when none does.

use std::cell::Cell;

use pvops_vmi::platform::ReadPhys;
use pvops_vmi::rom::{self, ProbeRules, SCAN_END, SCAN_START, SCAN_STEP, VmiRom};

use super::{CaseStats, Source, int};

/// Readable regions of guest-physical memory.
struct Phys {
    regions: Vec<(u64, Vec<u8>)>,
    reads: Cell<u64>,
    bad: Cell<Option<String>>,
}

impl Phys {
    fn byte(&self, a: u64) -> Option<u8> {
        self.regions.iter().rev().find_map(|(b, v)| {
            let off = a.checked_sub(*b)?;
            v.get(usize::try_from(off).ok()?).copied()
        })
    }

    fn bytes(&self, a: u64, n: usize) -> Option<Vec<u8>> {
        (0..n)
            .map(|i| a.checked_add(i as u64).and_then(|x| self.byte(x)))
            .collect()
    }
}

impl ReadPhys for Phys {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.reads.set(self.reads.get() + 1);
        if buf.len() > 256 {
            self.bad
                .set(Some(format!("a read of {} bytes at {addr:#x}", buf.len())));
        }
        if buf.is_empty() || addr.checked_add(buf.len() as u64 - 1).is_none() {
            self.bad.set(Some(format!(
                "a read of {} bytes at {addr:#x} wraps around the address space",
                buf.len()
            )));
            return false;
        }
        match self.bytes(addr, buf.len()) {
            Some(b) => {
                buf.copy_from_slice(&b);
                true
            }
            None => false,
        }
    }
}

/// A ROM image: well-formed, then damaged by the case.
fn image(s: &mut Source) -> Vec<u8> {
    let any = s.word() as u8;
    let len_units = s.pick(&[1u8, 2, 4, 0, 255, any]);
    let size = (len_units as usize * 512).clamp(0x200, 0x2000);
    let mut b = vec![0u8; size];
    for x in b.iter_mut() {
        *x = 0;
    }
    b[0] = 0x55;
    b[1] = 0xAA;
    b[2] = len_units;
    b[8..12].copy_from_slice(&0x696d_5663u32.to_le_bytes());
    b[0x0C] = 0;
    b[0x0D] = 3;
    b[0x0E] = s.word() as u8;
    b[0x10..0x14].copy_from_slice(&(s.word() as u32).to_le_bytes());
    let pci = s.pick(&[0xA0u16, 0x1F0, 0x100]);
    let lic = s.pick(&[0xC0u16, 0x1F8, 0x120]);
    b[0x16..0x18].copy_from_slice(&lic.to_le_bytes());
    b[0x18..0x1A].copy_from_slice(&pci.to_le_bytes());
    let p = pci as usize;
    if p + 24 <= b.len() {
        b[p..p + 4].copy_from_slice(b"PCIR");
        b[p + 4..p + 6].copy_from_slice(&0x15ADu16.to_le_bytes());
        b[p + 6..p + 8].copy_from_slice(&0x0801u16.to_le_bytes());
    }
    let text: &[u8] = s.pick(&[&b"GPL\0"[..], b"GPL v2\0", b"GPL", b"BSD\0", b"GPL v3\0"]);
    let l = lic as usize;
    if l + text.len() <= b.len() {
        b[l..l + text.len()].copy_from_slice(text);
    }
    // Checksum byte.
    let sum = b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    if let Some(last) = b.last_mut() {
        *last = last.wrapping_sub(sum);
    }
    // Damage.
    for _ in 0..s.below(5) {
        let i = match s.below(3) {
            0 => s.below(0x20) as usize,
            1 => s.below(0x200) as usize,
            _ => s.below(b.len() as u64) as usize,
        };
        if let Some(x) = b.get_mut(i) {
            *x = match s.below(3) {
                0 => s.word() as u8,
                1 => s.pick(&[0, 0xff, 0x80, 0x7f]),
                _ => *x ^ (1 << s.below(8)),
            };
        }
    }
    if s.chance(1, 8) {
        let keep = s.below(b.len() as u64) as usize;
        b.truncate(keep.max(1));
    }
    b
}

/// Check an accepted ROM against the bytes.
fn verify(p: &Phys, r: &VmiRom, base: u64, rules: ProbeRules) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "accepted {r:x?} at {base:#x} under {rules:?}, but {why}"
        ))
    };
    if r.base != base {
        return bad("its base differs");
    }
    let Some(h) = p.bytes(base, 0x90) else {
        return bad("its header is not readable");
    };
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    if u16_at(0) != 0xAA55 || h[8..12] != 0x696d_5663u32.to_le_bytes() || h[0x0D] != 3 {
        return bad("a signature or the API major is wrong");
    }
    if r.size != u32::from(h[2]) * 512 || r.api_minor != h[0x0C] || r.jump_slots != h[0x0E] {
        return bad("its size, minor or slots are not the header's");
    }
    let pci = u16_at(0x18);
    let lic = u16_at(0x16);
    if pci == 0 || lic == 0 {
        return bad("it has no PCI header or license offset");
    }
    let Some(ph) = base
        .checked_add(u64::from(pci))
        .and_then(|a| p.bytes(a, 24))
    else {
        return bad("its PCI header is not readable");
    };
    if r.vendor != u16::from_le_bytes([ph[4], ph[5]])
        || r.device != u16::from_le_bytes([ph[6], ph[7]])
    {
        return bad("vendor/device are not the PCI header's");
    }
    let mut text = Vec::new();
    let mut a = base.wrapping_add(u64::from(lic));
    loop {
        match p.byte(a) {
            Some(0) => break,
            Some(c) if text.len() < 32 => text.push(c),
            _ => return bad("its license is not NUL-terminated within 32 bytes"),
        }
        a = a.wrapping_add(1);
    }
    let want: &[u8] = match r.license {
        rom::License::Gpl => b"GPL",
        rom::License::GplV2 => b"GPL v2",
    };
    if text != want {
        return bad("its license text is not the one reported");
    }
    if rules == ProbeRules::Strict {
        let size = r.size as usize;
        let Some(img) = p.bytes(base, size) else {
            return bad("its image is not readable");
        };
        if size == 0 || img.iter().fold(0u8, |s, &x| s.wrapping_add(x)) != 0 {
            return bad("its length is 0 or its checksum is not 0");
        }
        if usize::from(pci) + 24 > size || ph[..4] != *b"PCIR" {
            return bad("the PCI header is outside or not PCIR");
        }
        if usize::from(lic) + text.len() >= size {
            return bad("the license is not inside the image");
        }
    }
    // The derived addresses are inside the address space.
    let _ = (r.init_entry(), r.reloc_entry(), r.contains(base));
    Ok(())
}

/// One case (see the module documentation).
pub(crate) fn case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let mut regions = Vec::new();
    for _ in 0..s.range(1, 4) {
        let at = match s.below(8) {
            0..=3 => SCAN_START + s.below((SCAN_END - SCAN_START) / SCAN_STEP) * SCAN_STEP,
            4 => SCAN_END - s.pick(&[0x10, 0x90, 0x800]),
            5 => u64::MAX - s.below(0x200),
            6 => SCAN_START + s.below(SCAN_END - SCAN_START),
            _ => int(s),
        };
        let bytes = if s.chance(3, 4) {
            image(s)
        } else {
            (0..s.range(1, 0x400)).map(|_| s.word() as u8).collect()
        };
        regions.push((at, bytes));
    }
    let p = Phys {
        regions,
        reads: Cell::new(0),
        bad: Cell::new(None),
    };
    for rules in [ProbeRules::Linux, ProbeRules::Strict] {
        p.reads.set(0);
        st.calls += 1;
        let r = rom::probe_with(&p, rules);
        st.outcome(0x2000 + rules as u64, i64::from(r.is_ok()));
        // 64 slots: a header, a PCI header, up to 32 license bytes, and
        // (strict) the image in 256-byte chunks, for each.
        let slots = (SCAN_END - SCAN_START) / SCAN_STEP;
        st.checks += 1;
        if p.reads.get() > slots * (3 + 32 + 512) {
            return Err(format!("probe {rules:?} made {} reads", p.reads.get()));
        }
        if let Some(b) = p.bad.take() {
            return Err(format!("probe {rules:?}: {b}"));
        }
        // The first slot check_rom accepts, or none.
        let mut first = None;
        let mut base = SCAN_START;
        while base < SCAN_END {
            st.calls += 1;
            if let Ok(rom) = rom::check_rom_with(&p, base, rules) {
                verify(&p, &rom, base, rules)?;
                st.checks += 1;
                first = Some(rom);
                break;
            }
            base += SCAN_STEP;
        }
        st.checks += 1;
        if r.ok() != first {
            return Err(format!(
                "probe {rules:?} = {:x?}, but the first slot check_rom accepts is {first:x?}",
                rom::probe_with(&p, rules)
            ));
        }
    }
    // check_rom at the regions' own bases and at chosen ones.
    let mut bases: Vec<u64> = p.regions.iter().map(|r| r.0).collect();
    bases.push(int(s));
    bases.push(u64::MAX - s.below(0x100));
    for base in bases {
        for rules in [ProbeRules::Linux, ProbeRules::Strict] {
            st.calls += 1;
            let r = rom::check_rom_with(&p, base, rules);
            st.outcome(0x2100, i64::from(r.is_ok()));
            if let Some(b) = p.bad.take() {
                return Err(format!("check_rom_with({base:#x}, {rules:?}): {b}"));
            }
            if let Ok(rom) = r {
                st.checks += 1;
                verify(&p, &rom, base, rules)?;
            }
            // Its Display never panics.
            if let Err(e) = r {
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}
