//! Hand-derived descriptor vectors for `check_descriptor`.
//!
//! Every expected outcome below was worked out on paper from the Xen source
//! (xen-project/xen at c447b7308b13: `xen/arch/x86/pv/descriptor-tables.c`
//! `check_descriptor`, `xen/arch/x86/include/asm/desc.h`
//! `guest_gate_selector_okay` / `GUEST_KERNEL_RPL` / `__fixup_guest_selector`,
//! `xen/arch/x86/include/asm/config.h` `__HYPERVISOR_COMPAT_VIRT_START`),
//! not by running the simulator. Notation: `a` = low dword, `b` = high
//! dword; P = b bit 15, S = b bit 12, DPL = b bits 13-14, TYPE = b bits
//! 8-11, L = b bit 21, G = b bit 23. krpl is 3 (pv64) / 1 (pv32).
//!
//! `Some(x)` = "ok, STORED x"; `None` = "rejected".

use hv_sim::xen::Abi::{Pv32, Pv64};
use hv_sim::xen::descriptor_policy::{Abi, check_descriptor, check_descriptor_with};

struct V {
    abi: Abi,
    desc: u64,
    want: Option<u64>,
    what: &'static str,
}

const fn v(abi: Abi, desc: u64, want: Option<u64>, what: &'static str) -> V {
    V {
        abi,
        desc,
        want,
        what,
    }
}

/// A call gate: P=1, TYPE=0xC, the given DPL, parameter byte and target
/// selector, offset 0x1234 (offset high half 0).
const fn gate(sel: u64, dpl: u64, params: u64) -> u64 {
    (1 << 47) | (0xC << 40) | (dpl << 45) | (params << 32) | (sel << 16) | 0x1234
}

/// What Xen stores for an accepted `gate(_, _, params)`: DPL field 0, the
/// selector's RPL replaced by the (raised) DPL.
const fn gate_out(sel_out: u64, params: u64) -> u64 {
    (1 << 47) | (0xC << 40) | (params << 32) | (sel_out << 16) | 0x1234
}

const VECTORS: &[V] = &[
    // --- Group A: P clear. Xen returns "okay" before looking at anything
    // else and writes nothing back, so every such slot is stored verbatim,
    // even system types, the L bit on pv32, or junk.
    v(Pv64, 0, Some(0), "null slot"),
    v(
        Pv64,
        0xFFFF_7FFF_FFFF_FFFF,
        Some(0xFFFF_7FFF_FFFF_FFFF),
        "all bits but P",
    ),
    v(
        Pv32,
        0x0000_0900_0000_0067,
        Some(0x0000_0900_0000_0067),
        "non-present TSS",
    ),
    v(
        Pv32,
        0x0020_1a00_0000_0000,
        Some(0x0020_1a00_0000_0000),
        "non-present code with L on pv32",
    ),
    v(
        Pv64,
        0x0000_0c00_e008_0000,
        Some(0x0000_0c00_e008_0000),
        "non-present gate naming Xen's CS",
    ),
    // --- Group B: pv64 code/data (S=1). DPL is raised to krpl=3 and there
    // are no other checks and no limit fixup (the fixup block is inside
    // `is_pv_32bit_domain`). DPL field 3 = b | 0x6000.
    v(
        Pv64,
        0x00af_9b00_0000_ffff,
        Some(0x00af_fb00_0000_ffff),
        "64-bit code DPL0",
    ),
    v(
        Pv64,
        0x00af_bb00_0000_ffff,
        Some(0x00af_fb00_0000_ffff),
        "64-bit code DPL1",
    ),
    v(
        Pv64,
        0x00af_db00_0000_ffff,
        Some(0x00af_fb00_0000_ffff),
        "64-bit code DPL2",
    ),
    v(
        Pv64,
        0x00af_fb00_0000_ffff,
        Some(0x00af_fb00_0000_ffff),
        "64-bit code DPL3",
    ),
    v(
        Pv64,
        0x00ef_9300_0000_ffff,
        Some(0x00ef_f300_0000_ffff),
        "data with L and D both set",
    ),
    v(
        Pv64,
        0x00cf_9300_0000_5800,
        Some(0x00cf_f300_0000_5800),
        "pv64 never extends limits",
    ),
    v(
        Pv64,
        0x00cf_9700_0000_0000,
        Some(0x00cf_f700_0000_0000),
        "expand-down data DPL0",
    ),
    // --- Group C: pv32 code/data DPL: only DPL 0 is below krpl=1, it
    // becomes 1 (b | 0x2000); 1..3 are kept. These are flat 4 GiB segments:
    // raw limit 0xFFFFF, G=1 -> lim = 0x100000 << 12 > 0xF5800000, so the
    // fixup ORs in 0xFFFF / 0xF0000, which are already set.
    v(
        Pv32,
        0x00cf_9b00_0000_ffff,
        Some(0x00cf_bb00_0000_ffff),
        "pv32 code DPL0",
    ),
    v(
        Pv32,
        0x00cf_bb00_0000_ffff,
        Some(0x00cf_bb00_0000_ffff),
        "pv32 code DPL1",
    ),
    v(
        Pv32,
        0x00cf_db00_0000_ffff,
        Some(0x00cf_db00_0000_ffff),
        "pv32 code DPL2",
    ),
    v(
        Pv32,
        0x00cf_fb00_0000_ffff,
        Some(0x00cf_fb00_0000_ffff),
        "pv32 code DPL3",
    ),
    // --- Group D: pv32, S=1 with L set -> "goto bad", code or data alike.
    v(Pv32, 0x00af_9b00_0000_ffff, None, "pv32 64-bit code"),
    v(Pv32, 0x0020_9300_0000_0000, None, "pv32 data with L"),
    v(Pv32, 0x0020_f300_0000_0000, None, "pv32 DPL3 data with L"),
    // --- Group E: pv32 limit fixup. base = b[31:24] | b[7:0] | a[31:16];
    // lim = (b[19:16] | a[15:0]) + 1, << 12 if G; extend iff base == 0 and
    // lim > 0xF5800000 (strictly). The EC bit is not looked at.
    // raw 0xF57FF, G=1: lim = 0xF5800000, not greater -> unchanged.
    v(
        Pv32,
        0x00cf_b300_0000_57ff,
        Some(0x00cf_b300_0000_57ff),
        "raw limit 0xF57FF",
    ),
    // raw 0xF5800, G=1: lim = 0xF5801000 > threshold -> a |= 0xFFFF.
    v(
        Pv32,
        0x00cf_b300_0000_5800,
        Some(0x00cf_b300_0000_ffff),
        "raw limit 0xF5800",
    ),
    // raw 0xF0000: b already carries 0xF in [19:16], a gets 0xFFFF.
    v(
        Pv32,
        0x00cf_b300_0000_0000,
        Some(0x00cf_b300_0000_0000),
        "raw limit 0xF0000 (lim 0xF0001000 < threshold)",
    ),
    // G=0: lim at most 0x100000, never above the threshold.
    v(
        Pv32,
        0x004f_b300_0000_ffff,
        Some(0x004f_b300_0000_ffff),
        "byte granular",
    ),
    // base 0x1000 (a[31:16]) -> not zero -> unchanged.
    v(
        Pv32,
        0x00cf_b300_1000_5800,
        Some(0x00cf_b300_1000_5800),
        "base in a",
    ),
    // base 0x01000000 (b[31:24]) -> unchanged.
    v(
        Pv32,
        0x01cf_b300_0000_5800,
        Some(0x01cf_b300_0000_5800),
        "base in b high byte",
    ),
    // base 0x00010000 (b[7:0]) -> unchanged.
    v(
        Pv32,
        0x00cf_b301_0000_5800,
        Some(0x00cf_b301_0000_5800),
        "base in b low byte",
    ),
    // Expand-down data, DPL0 -> DPL1 (0x97 -> 0xb7), raw 0xF5800 -> extended.
    v(
        Pv32,
        0x00cf_9700_0000_5800,
        Some(0x00cf_b700_0000_ffff),
        "expand-down extended too",
    ),
    // Conforming code, raw limit 0 G=1: lim 0x1000, no fixup; DPL0 -> 1.
    v(
        Pv32,
        0x00c0_9f00_0000_0000,
        Some(0x00c0_bf00_0000_0000),
        "conforming code",
    ),
    // --- Group F: present system descriptors (S=0). TYPE 0 -> "return
    // true" before the DPL is written back: stored untouched. TYPE != 0xC ->
    // bad. (TYPE 0xC is a call gate, see group G.)
    v(
        Pv64,
        0x0000_8000_0000_0000,
        Some(0x0000_8000_0000_0000),
        "type 0, DPL0 kept",
    ),
    v(
        Pv64,
        0x1234_8000_5678_9abc,
        Some(0x1234_8000_5678_9abc),
        "type 0 with offset bits",
    ),
    v(
        Pv32,
        0x0000_8000_0000_0000,
        Some(0x0000_8000_0000_0000),
        "pv32 type 0",
    ),
    v(Pv64, 0x0000_8100_0000_0000, None, "type 1 TSS16"),
    v(Pv64, 0x0000_8200_0000_0000, None, "type 2 LDT"),
    v(Pv64, 0x0000_8300_0000_0000, None, "type 3 busy TSS16"),
    v(Pv64, 0x0000_8400_0000_0000, None, "type 4 16-bit call gate"),
    v(Pv64, 0x0000_8500_0000_0000, None, "type 5 task gate"),
    v(Pv64, 0x0000_8600_0000_0000, None, "type 6 int gate16"),
    v(Pv64, 0x0000_8700_0000_0000, None, "type 7 trap gate16"),
    v(Pv64, 0x0000_8800_0000_0000, None, "type 8 reserved"),
    v(Pv64, 0x0000_8900_0000_0067, None, "type 9 TSS"),
    v(Pv64, 0x0000_8a00_0000_0000, None, "type 0xA reserved"),
    v(Pv64, 0x0000_8b00_0000_0067, None, "type 0xB busy TSS"),
    v(Pv64, 0x0000_8d00_0000_0000, None, "type 0xD reserved"),
    v(Pv64, 0x0000_8e00_0000_0000, None, "type 0xE interrupt gate"),
    v(Pv64, 0x0000_8f00_0000_0000, None, "type 0xF trap gate"),
    v(Pv32, 0x0000_e200_0000_0000, None, "pv32 LDT DPL3"),
    v(Pv32, 0x0000_8400_0010_0000, None, "pv32 16-bit call gate"),
    v(Pv32, 0x0000_ee00_0010_0000, None, "pv32 interrupt gate"),
    // Type 0xC with selector 0 and DPL 0: DPL raised to krpl, moved into the
    // selector RPL (0 -> 3 / 1), DPL field cleared.
    v(
        Pv64,
        0x0000_8c00_0000_0000,
        Some(0x0000_8c00_0003_0000),
        "type 0xC minimal pv64",
    ),
    v(
        Pv32,
        0x0000_8c00_0000_0000,
        Some(0x0000_8c00_0001_0000),
        "type 0xC minimal pv32",
    ),
    // --- Group G: call gates, pv64. guest_gate_selector_okay on the RAW
    // selector: (sel >> 3) < 7168, or sel == FLAT_KERNEL_CS (0xe033,
    // FLAT_RING3_CS64, RPL included), or sel & 4. Then b's DPL cleared,
    // cs = (cs & ~3) | dpl (dpl already raised to 3), and b & 0xFF must be 0.
    v(
        Pv64,
        gate(0xe033, 3, 0),
        Some(gate_out(0xe033, 0)),
        "pv64 flat kernel CS",
    ),
    v(
        Pv64,
        gate(0xe033, 0, 0),
        Some(gate_out(0xe033, 0)),
        "pv64 flat kernel CS, DPL0",
    ),
    v(
        Pv64,
        gate(0xe030, 3, 0),
        None,
        "0xe033 with RPL 0: index 7174",
    ),
    v(Pv64, gate(0xe019, 3, 0), None, "pv32's CS on pv64"),
    v(Pv64, gate(0xe008, 0, 0), None, "Xen's own CS"),
    v(
        Pv64,
        gate(0xe023, 3, 0),
        None,
        "FLAT_RING3_CS32 is not allowed",
    ),
    v(
        Pv64,
        gate(7167 << 3, 0, 0),
        Some(gate_out(0xdffb, 0)),
        "GDT index 7167",
    ),
    v(Pv64, gate(7168 << 3, 0, 0), None, "GDT index 7168"),
    v(Pv64, gate(0xfff8, 3, 0), None, "GDT index 8191"),
    v(
        Pv64,
        gate(0xe004, 0, 0),
        Some(gate_out(0xe007, 0)),
        "LDT selector, index 7168",
    ),
    v(
        Pv64,
        gate(0xfffc, 1, 0),
        Some(gate_out(0xffff, 0)),
        "LDT selector, index 8191",
    ),
    v(Pv64, gate(0, 0, 0), Some(gate_out(3, 0)), "null selector"),
    v(
        Pv64,
        gate(3, 2, 0),
        Some(gate_out(3, 0)),
        "null selector RPL3",
    ),
    v(
        Pv64,
        gate(0x12, 3, 0),
        Some(gate_out(0x13, 0)),
        "RPL 2 becomes 3",
    ),
    v(Pv64, gate(0x10, 3, 1), None, "pv64 parameter count 1"),
    v(Pv64, gate(0x10, 3, 0x1f), None, "pv64 parameter count 31"),
    v(Pv64, gate(0x10, 3, 0x20), None, "pv64 reserved bit 5"),
    v(Pv64, gate(0x10, 3, 0x80), None, "pv64 reserved bit 7"),
    // Offset bits b[31:16] are kept; DPL 2 -> 3 -> RPL 3.
    v(
        Pv64,
        0xdead_cc00_0010_5678,
        Some(0xdead_8c00_0013_5678),
        "offset bits kept",
    ),
    // --- Group H: call gates, pv32. Same rule with FLAT_COMPAT_KERNEL_CS
    // (0xe019, RPL 1) and reserved mask 0xE0 (bits 0-4 = parameter count).
    v(
        Pv32,
        gate(0xe019, 1, 0),
        Some(gate_out(0xe019, 0)),
        "pv32 flat kernel CS",
    ),
    v(
        Pv32,
        gate(0xe019, 0, 0),
        Some(gate_out(0xe019, 0)),
        "pv32 flat kernel CS, DPL0 -> 1",
    ),
    // The raw selector passes; the rewrite then puts DPL 3 in its RPL.
    v(
        Pv32,
        gate(0xe019, 3, 0),
        Some(gate_out(0xe01b, 0)),
        "pv32 flat kernel CS, DPL3",
    ),
    v(Pv32, gate(0xe01b, 3, 0), None, "0xe019 with RPL 3"),
    v(Pv32, gate(0xe018, 1, 0), None, "0xe019 with RPL 0"),
    v(Pv32, gate(0xe033, 1, 0), None, "pv64's CS on pv32"),
    v(Pv32, gate(0xe008, 1, 0), None, "Xen's CS on pv32"),
    v(
        Pv32,
        gate(7167 << 3, 0, 0),
        Some(gate_out(0xdff9, 0)),
        "pv32 GDT index 7167",
    ),
    v(Pv32, gate(7168 << 3, 1, 0), None, "pv32 GDT index 7168"),
    v(
        Pv32,
        gate(0xe004, 1, 0),
        Some(gate_out(0xe005, 0)),
        "pv32 LDT selector",
    ),
    v(
        Pv32,
        gate(0, 0, 0),
        Some(gate_out(1, 0)),
        "pv32 null selector",
    ),
    v(
        Pv32,
        gate(0x10, 1, 0x1f),
        Some(gate_out(0x11, 0x1f)),
        "pv32 31 parameters",
    ),
    v(
        Pv32,
        gate(0x10, 2, 5),
        Some(gate_out(0x12, 5)),
        "pv32 DPL2 gate, 5 parameters",
    ),
    v(Pv32, gate(0x10, 1, 0x20), None, "pv32 reserved bit 5"),
    v(Pv32, gate(0x10, 1, 0x40), None, "pv32 reserved bit 6"),
    v(Pv32, gate(0x10, 1, 0x80), None, "pv32 reserved bit 7"),
];

#[test]
fn descriptor_vectors() {
    assert!(VECTORS.len() >= 40);
    let mut bad = Vec::new();
    for t in VECTORS {
        let got = check_descriptor(t.abi, t.desc).ok();
        if got != t.want {
            bad.push(format!(
                "{} {:#018x} ({}): want {:x?}, got {:x?}",
                t.abi, t.desc, t.what, t.want, got
            ));
        }
    }
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

/// `HYPERVISOR_COMPAT_VIRT_START(d)` is per domain (`hv_compat_vstart`);
/// the fixup compares against it, not the default.
#[test]
fn compat_vstart_is_per_domain() {
    // Threshold 0x10000000: raw 0x0FFFF, G=1 -> lim = 0x10000000, not above.
    assert_eq!(
        check_descriptor_with(Pv32, 0x1000_0000, 0x00c0_b300_0000_ffff),
        Ok(0x00c0_b300_0000_ffff)
    );
    // raw 0x10000 -> lim = 0x10001000 > threshold -> both halves ORed.
    assert_eq!(
        check_descriptor_with(Pv32, 0x1000_0000, 0x00c1_b300_0000_0000),
        Ok(0x00cf_b300_0000_ffff)
    );
    // pv64 ignores the threshold entirely.
    assert_eq!(
        check_descriptor_with(Pv64, 0, 0x00c1_f300_0000_0000),
        Ok(0x00c1_f300_0000_0000)
    );
}
