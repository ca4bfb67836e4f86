//! µs per VM exit: bare-exit floors, a dedicated trap loop, and the example
//! kernel's boots under each personality.
//!
//! * **bare exits** ([`bare_exit_us`]): a guest looping on `out` in ring 0,
//!   the same in ring 3 (IOPL 3), and a ring-3 `lgdt` whose #GP is
//!   delivered to a ring-3 handler that does the `out` and `iretq`s back;
//!   each `KVM_RUN` round trip timed on its own, registers through sync
//!   regs as hv-sim's runner reads them. These are the floors: the exit,
//!   and the exit plus the exception delivery a trap needs.
//! * **trap loop** ([`trap_loop`]): a tiny kernel executing `sgdt` (after
//!   loading a 16-entry GDT) 2,000 times under the trap-and-emulate personality (each a #GP to hv-sim's
//!   stub, an exit, an emulation), against one that executes none: the end
//!   to end cost of one trap, split into `KVM_RUN` and hv-sim's time.
//! * **boots**: the example kernel under each personality, with the
//!   report's `run_time` and `handle_time` per exit.
//!
//! On PVM (`kvm_pvm`) every guest runs deprivileged and an exit costs a
//! world switch through the host kernel: these figures are PVM's, and on
//! hardware KVM they are several times smaller.

use crate::kvm::CheckSummary;
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Figure, Goal, Section, median};
use crate::kvm::{self, BootReport, Config, KvmError, layout};

/// Where a bare-exit guest exits from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareKind {
    /// `out` in ring 0.
    Ring0,
    /// `out` in ring 3 (IOPL 3).
    Ring3,
    /// A ring-3 `lgdt` raising #GP, delivered to a ring-3 handler that does
    /// the `out` and returns with `iretq`.
    Ring3Gp,
}

/// The guest code's address.
const CODE: u64 = 0x10_0000;
/// The #GP handler's address (ring 3).
const HANDLER: u64 = 0x10_1000;

/// A bare guest's RAM.
const BARE_RAM: usize = 4 << 20;

/// Median µs per `KVM_RUN` round trip over `n` exits of a bare guest.
pub fn bare_exit_us(kind: BareKind, n: usize) -> Result<f64, KvmError> {
    let bare = kvm::Machine::new(kvm::guest_ram(BARE_RAM)?)?;
    let mut vcpu = bare_vcpu(&bare, kind)?;
    time_exits(&mut vcpu, n)
}

/// vCPU 0 of `bare` with the host's CPUID, in long mode at [`CODE`], with
/// the `kind` guest written and sync regs on where available.
fn bare_vcpu(bare: &kvm::Machine, kind: BareKind) -> Result<VcpuFd, KvmError> {
    let er = KvmError::ioctl;
    let mut vcpu = bare.vm.create_vcpu(0).map_err(er("KVM_CREATE_VCPU"))?;
    let cpuid = bare
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(er("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(er("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(er("KVM_GET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(er("KVM_GET_REGS"))?;
    layout::long_mode_sregs(&mut sregs);
    regs.rip = CODE;
    regs.rflags = 2;
    regs.rsp = layout::BOOT_STACK_TOP;
    if kind == BareKind::Ring0 {
        layout::write_boot_tables(&bare.mem)?;
        write_code(&bare.mem, CODE, &OUT_LOOP)?;
    } else {
        ring3_guest(bare, kind, &mut regs, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs).map_err(er("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(er("KVM_SET_REGS"))?;
    if crate::kvm::regs::sync_regs_available(&bare.kvm) {
        vcpu.set_sync_valid_reg(SyncReg::Register);
        vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    }
    Ok(vcpu)
}

/// `out 0xe0, al; jmp $-2`.
const OUT_LOOP: [u8; 4] = [0xe6, 0xe0, 0xeb, 0xfc];

/// Write guest code `b` at `a`.
fn write_code(mem: &GuestMemoryMmap, a: u64, b: &[u8]) -> Result<(), KvmError> {
    mem.write_slice(b, GuestAddress(a))
        .map_err(KvmError::guest_write("the bare guest's code", a))
}

/// The ring-3 guests: GDT at 0x5000 (ring-3 code 0x08, data 0x10, TSS
/// 0x18), TSS at 0x6000, IDT at 0x9000 (those pages user-accessible); the
/// `out` loop, or (`Ring3Gp`) an `lgdt` loop whose #GP goes to a DPL-3
/// handler at [`HANDLER`] that does the `out`.
fn ring3_guest(
    bare: &kvm::Machine,
    kind: BareKind,
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
) -> Result<(), KvmError> {
    let mem = &bare.mem;
    let w = |a: u64, v: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(KvmError::guest_write("the bare guest's tables", a))
    };
    layout::write_ring3_page_tables(mem, BARE_RAM, |a| {
        if (0x5000..0xa000).contains(&a) {
            a | layout::PTE_P | layout::PTE_RW
        } else {
            0
        }
    })?;
    w(0x5008, 0x00af_fb00_0000_ffff)?;
    w(0x5010, 0x00cf_f300_0000_ffff)?;
    let tss = 0x6000u64;
    w(
        0x5018,
        0x67 | (tss & 0xff_ffff) << 16 | 0x8b << 40 | ((tss >> 24) & 0xff) << 56,
    )?;
    w(0x5020, tss >> 32)?;
    layout::ring3_entry(
        regs,
        sregs,
        &layout::Ring3Tables {
            cs: 0x0b,
            ss: 0x13,
            gdt: (0x5000, 8),
            idt: 0x9000,
            tss: (0x18, tss),
        },
    );
    regs.rsp = 0x20_0000;
    if kind != BareKind::Ring3Gp {
        return write_code(mem, CODE, &OUT_LOOP);
    }
    // #GP gate (vector 13) -> HANDLER, DPL 3, ring-3 CS.
    w(
        0x9000 + 13 * 16,
        (HANDLER & 0xffff) | 0x0b << 16 | 0xee << 40 | ((HANDLER >> 16) & 0xffff) << 48,
    )?;
    w(0x9000 + 13 * 16 + 8, HANDLER >> 32)?;
    // lgdt [rax]; jmp back to it.
    write_code(mem, CODE, &[0x0f, 0x01, 0x10, 0xeb, 0xfb])?;
    // out 0xe0, al; add rsp, 8 (the error code); iretq
    write_code(
        mem,
        HANDLER,
        &[0xe6, 0xe0, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf],
    )
}

/// Median µs of `n` `KVM_RUN` round trips, each ending at the guest's
/// `out 0xe0`, after 50 warm-up ones.
fn time_exits(vcpu: &mut VcpuFd, n: usize) -> Result<f64, KvmError> {
    const WARM: usize = 50;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + WARM {
        let t = Instant::now();
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0xe0, _)) => {}
            Ok(other) => {
                return Err(KvmError::GuestCrashed {
                    crash: crate::kvm::Crash::UnexpectedExit {
                        exit: format!("bare guest: unexpected exit {other:?}"),
                        at: None,
                    },
                    text: String::new(),
                });
            }
            Err(e) => return Err(KvmError::ioctl("KVM_RUN")(e)),
        }
        if i >= WARM {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(median(&mut samples))
}

/// An ELF kernel that loads a 16-entry GDT once (`lgdt`; operand and
/// table in the boot stack page), then executes `sgdt [rax]` `n` times and
/// writes exit status 0.
pub fn sgdt_loop_elf(n: u32) -> Vec<u8> {
    let mut code = vec![0xb9]; // mov ecx, n
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xb8, 0x00, 0x7f, 0x00, 0x00]); // mov eax, 0x7f00
    // The operand: limit 0x7f, base 0x7800.
    code.extend_from_slice(&[0x66, 0xc7, 0x00, 0x7f, 0x00]); // mov word [rax], 0x7f
    code.extend_from_slice(&[0xc7, 0x40, 0x02, 0x00, 0x78, 0x00, 0x00]); // mov dword [rax+2], 0x7800
    code.extend_from_slice(&[0xc7, 0x40, 0x06, 0x00, 0x00, 0x00, 0x00]); // mov dword [rax+6], 0
    code.extend_from_slice(&[0x0f, 0x01, 0x10]); // lgdt [rax]
    code.extend_from_slice(&[0x85, 0xc9, 0x74, 0x07]); // test ecx, ecx; jz done
    // loop: sgdt [rax]; dec ecx; jnz loop
    code.extend_from_slice(&[0x0f, 0x01, 0x00, 0xff, 0xc9, 0x75, 0xf9]);
    // done: xor eax, eax; out 0xf4, eax; hlt
    code.extend_from_slice(&[0x31, 0xc0, 0xe7, 0xf4, 0xf4]);
    let mut e = vec![0u8; 0x1000];
    let mut put = |at: usize, b: &[u8]| {
        if let Some(d) = e.get_mut(at..at + b.len()) {
            d.copy_from_slice(b);
        }
    };
    put(0, b"\x7fELF\x02\x01\x01");
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &CODE.to_le_bytes()); // entry
    put(32, &64u64.to_le_bytes()); // phoff
    put(52, &64u16.to_le_bytes()); // ehsize
    put(54, &56u16.to_le_bytes()); // phentsize
    put(56, &1u16.to_le_bytes()); // phnum
    let len = (code.len() as u64).to_le_bytes();
    put(64, &1u32.to_le_bytes()); // PT_LOAD
    put(68, &5u32.to_le_bytes()); // R+X
    put(72, &0x1000u64.to_le_bytes()); // offset
    put(80, &CODE.to_le_bytes()); // vaddr
    put(88, &CODE.to_le_bytes()); // paddr
    put(96, &len); // filesz
    put(104, &len); // memsz
    put(112, &0x1000u64.to_le_bytes()); // align
    e.extend_from_slice(&code);
    e
}

/// One trap, end to end, from [`sgdt_loop_elf`] boots: µs per trap in
/// `KVM_RUN`, between runs (hv-sim), in its trap handler, in the emulator
/// and re-checking the real tables; medians of `reps` pairs of boots.
pub fn trap_loop(reps: usize) -> Result<[f64; 5], KvmError> {
    const N: u32 = 2000;
    let cfg = Config::default();
    let (mut run, mut hv, mut handler) = (vec![], vec![], vec![]);
    let (mut emu, mut sync) = (vec![], vec![]);
    let empty = sgdt_loop_elf(0);
    let full = sgdt_loop_elf(N);
    for _ in 0..reps.max(1) {
        let a = kvm::trap::boot_trap(&empty, &cfg)?;
        let b = kvm::trap::boot_trap(&full, &cfg)?;
        if b.traps != u64::from(N) + 1 || b.boot.exit_status != Some(0) {
            return Err(KvmError::Report(format!(
                "the sgdt loop took {} traps and exited with {:?}",
                b.traps, b.boot.exit_status
            )));
        }
        let per = |x: std::time::Duration, y: std::time::Duration| {
            (x.as_secs_f64() - y.as_secs_f64()) * 1e6 / f64::from(N)
        };
        run.push(per(b.boot.run_time, a.boot.run_time));
        hv.push(per(b.boot.handle_time, a.boot.handle_time));
        handler.push(per(b.handler_time, a.handler_time));
        emu.push(per(b.emulate_time, a.emulate_time));
        sync.push(per(b.sync_time, a.sync_time));
    }
    Ok([run, hv, handler, emu, sync].map(|mut v| median(&mut v)))
}

/// One boot's figures: (personality, report, calls or traps, note).
type Boot = (&'static str, BootReport, u64, String);

fn boots(image: &[u8]) -> Vec<Result<Boot, String>> {
    let cfg = Config::default();
    let s = |e: kvm::KvmError| e.to_string();
    vec![
        kvm::boot(image, &cfg)
            .map(|r| ("native", r, 0, String::new()))
            .map_err(s),
        kvm::xen::boot_xen(image, &cfg)
            .map(|r| {
                let mc = r.calls_by_name().get("multicall").map_or(0, |c| c.0);
                let note =
                    format!("{mc} multicalls (the kernel's 64 lazy context switches among them)");
                ("Xen-style", r.boot, r.hypercalls, note)
            })
            .map_err(s),
        kvm::vmi::boot_vmi(image, &cfg)
            .map(|r| {
                let (batches, calls) = r.lazy_batches();
                let note = format!("{batches} lazy batches holding {calls} calls");
                ("VMI-style", r.boot, r.rom_calls, note)
            })
            .map_err(s),
        kvm::trap::boot_trap(image, &cfg)
            .map(|r| {
                let note = format!("{} instructions emulated", r.emulated_total());
                ("trap-and-emulate", r.boot, r.traps, note)
            })
            .map_err(s),
    ]
}

/// The sections (floors and boots) and the trap goal.
pub fn per_exit(progress: &mut dyn FnMut(&str)) -> (Vec<Section>, Vec<Goal>) {
    let mut s = Section::figures("µs per exit: bare exit, delivery and hv-sim (KVM)");
    let trap_goal = "a trap end to end ≤ 1.3× the floor (bare ring-3 exit + #GP delivery)";
    if let Err(why) = kvm::available() {
        s.missing("all KVM figures", &why.to_string());
        let goal = Goal::new(trap_goal, None, format!("no KVM: {why}"));
        return (vec![s], vec![goal]);
    }
    let (r0, r3, gp) = floors(&mut s);
    progress("trap loop (sgdt x2000 under trap-and-emulate)");
    let goal = trap_rows(&mut s, &gp, trap_goal);
    progress("example kernel boots");
    let b = boot_section(&r0, &r3);
    (vec![s, b], vec![goal])
}

/// A bare exit, µs, or why it could not be measured.
type Floor = Result<f64, KvmError>;

/// The floors: bare exits from ring 0 and ring 3, and a ring-3 #GP
/// delivered to a ring-3 handler; one row each (against the one below).
fn floors(s: &mut Section) -> (Floor, Floor, Floor) {
    let bare = |k| bare_exit_us(k, 1000);
    let r0 = bare(BareKind::Ring0);
    let r3 = bare(BareKind::Ring3);
    let gp = bare(BareKind::Ring3Gp);
    match &r0 {
        Ok(v) => s.floor(
            "bare exit, ring 0 (out; KVM_RUN round trip)",
            Figure::Us(*v),
        ),
        Err(e) => s.missing("bare exit, ring 0", &e.to_string()),
    };
    match (&r3, &r0) {
        (Ok(v), Ok(f)) => s.against(
            "bare exit, ring 3 (out with IOPL 3)",
            Figure::Us(*v),
            "ring 0",
            Figure::Us(*f),
        ),
        (Ok(v), Err(_)) => s.floor("bare exit, ring 3", Figure::Us(*v)),
        (Err(e), _) => s.missing("bare exit, ring 3", &e.to_string()),
    };
    match (&gp, &r3) {
        (Ok(v), Ok(f)) => {
            s.against(
                "ring-3 #GP delivered to a ring-3 handler + out (the trap floor)",
                Figure::Us(*v),
                "ring 3",
                Figure::Us(*f),
            );
            s.row([
                "  of which the #GP delivery".to_string(),
                Figure::Us(v - f).to_string(),
            ])
        }
        (Ok(v), Err(_)) => s.floor("ring-3 #GP + out", Figure::Us(*v)),
        (Err(e), _) => s.missing("ring-3 #GP + out", &e.to_string()),
    };
    (r0, r3, gp)
}

/// The trap loop's rows against the trap floor, and the trap goal.
fn trap_rows(s: &mut Section, gp: &Floor, trap_goal: &str) -> Goal {
    match (trap_loop(5), gp) {
        (Ok([run, hv, handler, emu, sync]), Ok(floor)) => {
            let total = run + hv;
            s.against(
                "trap end to end (sgdt in ring 3 -> #GP -> stub -> exit -> emulate -> resume)",
                Figure::Us(total),
                "trap floor",
                Figure::Us(*floor),
            );
            s.against(
                "  of which in KVM_RUN (exit + delivery + stub)",
                Figure::Us(run),
                "trap floor",
                Figure::Us(*floor),
            );
            s.row([
                "  of which hv-sim (between runs)".to_string(),
                Figure::Us(hv).to_string(),
                String::new(),
                format!("{:.0}% of the trap", hv / total * 100.0),
            ]);
            s.row([
                "    of which the trap handler (frame, fetch, emulate, tables)".to_string(),
                Figure::Us(handler).to_string(),
            ]);
            s.row([
                "      of which the emulator".to_string(),
                Figure::Us(emu).to_string(),
            ]);
            s.row([
                "      of which re-checking the guest's tables (sync)".to_string(),
                Figure::Us(sync).to_string(),
            ]);
            Goal::new(
                trap_goal,
                Some(total <= 1.3 * floor),
                format!(
                    "{total:.1} µs vs {floor:.1} µs = {}: KVM_RUN {run:.1} µs ({} the floor), hv-sim {hv:.1} µs, of which {sync:.1} µs re-checking the guest's tables after the trap and {emu:.1} µs emulating",
                    super::ratio(total, *floor),
                    super::ratio(run, *floor),
                ),
            )
        }
        (Err(e), _) => {
            s.missing("trap end to end", &e.to_string());
            Goal::new(trap_goal, None, e.to_string())
        }
        (_, Err(e)) => Goal::new(trap_goal, None, format!("no floor: {e}")),
    }
}

/// The example kernel's boots under each personality: exits and µs per
/// exit against the bare exit of the same ring.
fn boot_section(r0: &Floor, r3: &Floor) -> Section {
    let mut b = Section::with_columns(
        "Example kernel boots: exits and µs per exit",
        &[
            "personality",
            "exits",
            "calls / traps",
            "other exits (report lines, exit)",
            "KVM_RUN µs/exit",
            "vs bare exit, same ring",
            "hv-sim µs/exit",
            "register ioctls",
        ],
    );
    match crate::testing::example_kernel_image() {
        Err(e) => {
            b.note(format!("no example kernel: {e}"));
        }
        Ok(image) => {
            for r in boots(&image) {
                match r {
                    Ok((name, rep, calls, note)) => {
                        let ex = rep.exits.total().max(1) as f64;
                        let run = rep.run_time.as_secs_f64() * 1e6 / ex;
                        let hv = rep.handle_time.as_secs_f64() * 1e6 / ex;
                        let floor = if name == "native" { r0 } else { r3 };
                        b.row([
                            name.to_string(),
                            rep.exits.total().to_string(),
                            calls.to_string(),
                            rep.exits.total().saturating_sub(calls).to_string(),
                            format!("{run:.1}"),
                            match floor {
                                Ok(f) if name != "native" => super::ratio(run, *f),
                                _ => "- (guest work)".into(),
                            },
                            format!("{hv:.1}"),
                            rep.ioctls.register_ioctls().to_string(),
                        ]);
                        let sep = if note.is_empty() { "" } else { ", " };
                        b.note(format!(
                            "{name}: checks {}/{}{sep}{note}",
                            rep.passed(),
                            rep.ran()
                        ));
                    }
                    Err(e) => {
                        b.note(format!("a boot failed: {e}"));
                    }
                }
            }
            b.note("KVM_RUN µs/exit includes the guest's own work between exits (its checks), so it is an upper bound on the exit (native: almost all of it is the kernel's own work, 0 exits per descriptor op); the bare-exit rows above are the exit alone");
        }
    }
    b
}
