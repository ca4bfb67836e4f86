//! `VCPUOP_initialise`, `VCPUOP_up` and `VCPUOP_is_up` for a 64-bit PV
//! domain with two vCPUs (hv-sim/src/xen/vcpu_op.rs): every refusal of
//! Xen 4.17.7's `do_vcpu_op` / `default_initialise_vcpu` /
//! `arch_set_info_guest` (`common/domain.c`, `arch/x86/domain.c`) with its
//! errno, in Xen's order, and what a good context leaves. In process.

#[path = "common/xen.rs"]
mod xen_helpers;

use hv_sim::xen::*;
use xen_helpers::vcpu_ctx::*;
use xen_helpers::{Context, hc, map, mfn, put_context, table};

const KCODE64: u64 = 0x00af_fb00_0000_ffff;

struct T {
    d: XenDomain,
    ctx: u64,
    gdt: u64,
    root: u64,
}

/// A two-vCPU domain, a context buffer (two pages) holding a good context,
/// a GDT frame and a root page-table frame, both read-only.
fn setup() -> T {
    let d = XenDomain::pv64(64, 2);
    let ctx = d.alloc_pages(2);
    let (_, gdt) = table(&d, &[0, KCODE64]);
    let root_va = d.alloc_pages(1);
    assert_eq!(map(&d, root_va, false), 0);
    let root = mfn(&d, root_va);
    let t = T { d, ctx, gdt, root };
    put_context(
        &t.d,
        t.ctx,
        &Context {
            rip: 0xffff_ffff_8100_1000,
            rsp: 0xffff_ffff_8120_0000,
            cs: 0xe030,     // RPL 0: Xen raises it to 3
            rflags: 0x3002, // IOPL 3, IF clear: Xen clears IOPL, sets IF
            gdt,
            root,
        },
    );
    t
}

impl T {
    fn put(&self, off: u64, v: u64) {
        assert!(self.d.host_write_u64(self.ctx + off, v));
    }
    fn op(&self, cmd: u64, vcpu: u64) -> i64 {
        hc(&self.d, VCPU_OP, &[cmd, vcpu, self.ctx])
    }
    fn refused(&self, errno: i64, why: &str) {
        assert_eq!(self.op(INITIALISE, 1), -errno, "{why}");
        let v = self.d.vcpu(1);
        assert!(!v.initialised && !v.up, "{why}: vCPU 1 stays uninitialised");
    }
}

#[test]
fn layout_is_the_headers() {
    assert_eq!(SIZE as usize, hv_sim::xen::domain::VCPU_GUEST_CONTEXT_SIZE);
}

/// `do_vcpu_op`: a vCPU the domain does not have is -ENOENT;
/// `default_initialise_vcpu`: an unreadable context -EFAULT, an initialised
/// vCPU (vCPU 0, built by the domain builder) -EEXIST.
#[test]
fn unknown_unreadable_and_initialised_vcpus() {
    let t = setup();
    assert_eq!(t.op(INITIALISE, 2), -ENOENT);
    assert_eq!(t.op(UP, 1 << 32 | 7), -ENOENT, "vcpuid is an unsigned int");
    assert_eq!(t.op(INITIALISE, 0), -EEXIST);
    assert_eq!(
        hc(&t.d, VCPU_OP, &[INITIALISE, 1, 0xffff_8000_dead_0000]),
        -EFAULT
    );
    assert_eq!(t.op(IS_UP, 0), 1);
    assert_eq!(t.op(IS_UP, 1), 0);
    assert_eq!(t.op(UP, 1), -EINVAL, "VCPUOP_up before initialise");
}

/// `arch_set_info_guest`'s -EINVAL rules, one at a time on a good context.
#[test]
fn each_context_rule_is_einval() {
    let cases: &[(&str, u64, u64)] = &[
        ("rip not canonical", RIP, 0x0000_8000_0000_0000),
        ("rsp not canonical", RSP, 0xffff_0000_0000_0000),
        (
            "trap_ctxt[14].address not canonical",
            TRAP_CTXT + 14 * 16 + 8,
            1 << 63,
        ),
        ("LDT base not page aligned", LDT_BASE, 0x1008),
        ("LDT with 8193 entries", LDT_BASE + 8, 8193),
        ("17 GDT frames", GDT_ENTS, 16 * 512 + 1),
        ("not in kernel mode and no user root", FLAGS, 0),
        (
            "root frame not the domain's",
            CTRLREG + 3 * 8,
            0x7_0000 << 12,
        ),
    ];
    for &(why, off, v) in cases {
        let t = setup();
        t.put(off, v);
        t.refused(EINVAL, why);
        assert!(
            t.d.vcpu(1).gdt_frames.is_empty(),
            "{why}: no GDT left behind"
        );
    }
    // The GDT as set_gdt takes it: a writable-mapped frame is refused.
    let t = setup();
    let gdt_va = t.d.alloc_pages(1);
    t.put(GDT_FRAMES, mfn(&t.d, gdt_va));
    t.refused(EINVAL, "GDT frame mapped writable");
}

/// A root that cannot take the L4 type is refused after the GDT was
/// installed: Xen drops the GDT again (`pv_destroy_gdt`), so the GDT frame's
/// type reference goes.
#[test]
fn a_bad_root_drops_the_gdt_again() {
    let t = setup();
    let w = t.d.alloc_pages(1); // mapped writable: cannot be a root
    t.put(CTRLREG + 3 * 8, mfn(&t.d, w) << 12);
    t.refused(EINVAL, "writable root");
    assert!(t.d.vcpu(1).gdt_frames.is_empty());
    assert_eq!(t.d.frame(t.gdt).unwrap().type_count, 0);
    // The same context with a good root then succeeds.
    t.put(CTRLREG + 3 * 8, t.root << 12);
    assert_eq!(t.op(INITIALISE, 1), 0);
}

/// A good context: vCPU 1 is initialised with Xen's fixups (selector RPL
/// raised to 3, IOPL cleared and IF set), its GDT and root installed, and
/// stays down until VCPUOP_up (no VGCF_online); a second initialise is
/// -EEXIST.
#[test]
fn a_good_context_initialises_and_up_starts() {
    let t = setup();
    assert_eq!(t.op(INITIALISE, 1), 0);
    let v = t.d.vcpu(1);
    assert!(v.initialised && !v.up);
    let e = v.entry.expect("entry registers");
    assert_eq!(e.rip, 0xffff_ffff_8100_1000);
    assert_eq!(e.rsp, 0xffff_ffff_8120_0000);
    assert_eq!((e.cs, e.ss), (0xe033, 0xe02b));
    assert_eq!((e.rflags, e.iopl), (0x0202, 0x3000));
    assert_eq!(v.gdt_frames, vec![t.gdt]);
    assert_eq!(v.gdt_ents, 16);
    assert_eq!(v.cr3, Some(t.root));
    assert_eq!(v.kernel_ss, 0xe02b);
    assert_eq!(t.op(IS_UP, 1), 0);
    assert_eq!(t.op(UP, 1), 0);
    assert_eq!(t.op(IS_UP, 1), 1);
    assert_eq!(t.op(INITIALISE, 1), -EEXIST);
    // vCPU 0's GDT is its own.
    assert!(t.d.vcpu(0).gdt_frames.is_empty());
    // VGCF_online: up at once.
    let t = setup();
    t.put(FLAGS, VGCF_IN_KERNEL | VGCF_ONLINE);
    assert_eq!(t.op(INITIALISE, 1), 0);
    assert_eq!(t.op(IS_UP, 1), 1);
}

/// VCPUOP_down (`do_vcpu_op`): a vCPU goes down while another runs (0,
/// is_up 0, VCPUOP_up brings it back); the last running vCPU going down
/// shuts the domain down (poweroff), also 0.
#[test]
fn down_stops_a_vcpu_and_the_last_one_powers_off() {
    const DOWN: u64 = 2;
    let t = setup();
    assert_eq!(t.op(INITIALISE, 1), 0);
    assert_eq!(t.op(UP, 1), 0);
    assert_eq!(t.op(DOWN, 1), 0);
    assert_eq!(t.op(IS_UP, 1), 0);
    assert_eq!(t.d.shutdown_reason(), None);
    assert_eq!(t.op(UP, 1), 0);
    assert_eq!(t.op(IS_UP, 1), 1);
    assert_eq!(t.op(DOWN, 1), 0);
    // vCPU 0 is the last one running.
    assert_eq!(t.op(DOWN, 0), 0);
    assert_eq!(t.d.shutdown_reason(), Some(0), "poweroff");
    assert_eq!(t.op(DOWN, 2), -ENOENT);
}

/// RFLAGS through `VCPUOP_initialise`, bit by bit, each pinned to its
/// source (Xen RELEASE-4.17.7).
///
/// Xen's saved flags after `arch_set_info_guest` (`xen/arch/x86/domain.c`):
/// line 1131 (`memcpy` of `user_regs`) takes the flags as given; lines
/// 1168-1169 move IOPL (bits 12-13) into `pv.iopl` and clear it; line 1172
/// sets IF (bit 9). Nothing else: VM (17), VIF (19), VIP (20), bit 1 and
/// the reserved bits stay as the guest gave them.
///
/// What the vCPU runs with (`traps::exit_rflags`):
/// `xen/arch/x86/x86_64/entry.S` lines 241-242 (`iret_exit_to_guest`) clear
/// IOPL and VM and set IF (207-208 on the sysret path); then `iretq` at
/// CPL 0 (SDM vol. 2A, IRET, 64-bit return to an outer level) loads CF PF
/// AF ZF SF TF DF OF NT RF AC ID IF IOPL VIF VIP, bit 1 reads as 1, bits 3,
/// 5, 15 and 22-63 are not loaded; `sysretq` (SDM vol. 2B, SYSRET:
/// `R11 & 3C7FD7H | 2`) does not load RF either.
#[test]
fn rflags_bit_by_bit_as_xen_4_17_7() {
    const IF: u64 = 1 << 9;
    const MBS: u64 = 1 << 1;
    for b in 0..64u32 {
        let bit = 1u64 << b;
        let t = setup();
        t.put(RFLAGS, bit);
        assert_eq!(t.op(INITIALISE, 1), 0, "bit {b}");
        let e = t.d.vcpu(1).entry.expect("entry registers");
        let (saved, iopl) = match b {
            12 | 13 => (IF, bit), // domain.c 1168-1169
            9 => (IF, 0),         // domain.c 1172
            _ => (bit | IF, 0),   // domain.c 1131, untouched after
        };
        assert_eq!((e.rflags, e.iopl), (saved, iopl), "bit {b}: saved");
        let runs = match b {
            12 | 13 | 17 => IF | MBS,             // entry.S 241
            1 | 3 | 5 | 15 | 22..=63 => IF | MBS, // not loaded by iretq
            _ => bit | IF | MBS,                  // loaded (9: entry.S 242)
        };
        assert_eq!(traps::exit_rflags(e.rflags, false), runs, "bit {b}: iretq");
        let sysret = if b == 16 { IF | MBS } else { runs };
        assert_eq!(
            traps::exit_rflags(e.rflags, true),
            sysret,
            "bit {b}: sysretq"
        );
    }
}
