//! The in-process sections: dispatch, hv-sim's Xen hypercalls against their
//! lean paths, and the instruction emulator against Linux's UMIP emulation.
//! The setups are those of `tests/benches/dispatch.rs`,
//! `hv-sim/benches/xen_hypercalls.rs` and `hv-sim/benches/trap_emulate.rs`.

use pvops::{
    Descriptor, DescriptorOps, DescriptorStorage, DescriptorTablePointer, Gdt, GdtEntry, GdtLayout,
    OpsTable, SystemDescriptor,
};
use pvops_native::NativeOps;

use super::{BATCH, BATCHES, Figure, Goal, Section, keep, time_each_ns, time_ns};
use crate::emulate::mock::{MockCpu, MockMemory};
use crate::emulate::{Outcome, emulate};
use crate::xen::{Abi, TrapInfo, XenDomain, check_descriptor, nr};

static GDT: DescriptorStorage<32> = DescriptorStorage::new([Descriptor::NULL; 32]);
// SAFETY: the figures only write entries of the static GDT above (plain
// stores); nothing loads or reads a table through the CPU's registers.
static NATIVE: NativeOps = unsafe { NativeOps::new(GdtLayout::LINUX) };

/// The backend's method on the concrete type (no trait generics).
#[inline(never)]
fn direct_write(ops: &NativeOps, gdt: &Gdt, i: u32, d: Descriptor) -> pvops::Result<()> {
    // SAFETY: as generic_write.
    unsafe { NativeOps::write_gdt_entry(ops, gdt, i, GdtEntry::Single(d)) }
}

/// Kernel code generic over its backend: every variant pays this one
/// non-inlined call and differs only in dispatch.
#[inline(never)]
fn generic_write<O: DescriptorOps>(ops: &O, gdt: &Gdt, i: u32, d: Descriptor) -> pvops::Result<()> {
    // SAFETY: GDT is a static table of this process; write_gdt_entry on the
    // native backend is a store and needs no privilege.
    unsafe { ops.write_gdt_entry(gdt, i, GdtEntry::Single(d)) }
}

/// `write_gdt_entry` through each dispatch mode against a plain store.
pub fn dispatch() -> Section {
    let mut s = Section::figures("Dispatch: write_gdt_entry on the native backend (user space)");
    let gdt = match GDT.gdt() {
        Ok(g) => g,
        Err(e) => {
            s.missing("all", &format!("static GDT rejected: {e}"));
            return s;
        }
    };
    let table = OpsTable::new(&NATIVE);
    let installed = match pvops::install(OpsTable::new(&NATIVE)) {
        Ok(()) => true,
        Err(_) => pvops::dispatch::installed().is_some_and(|t| t.name() == "native"),
    };
    let d = pvops::presets::USER_DATA;
    let time = |f: &mut dyn FnMut()| time_ns(f, BATCH, BATCHES);
    let floor = time(&mut || {
        let i = keep(5usize);
        // SAFETY: index 5 < 32, static storage.
        unsafe { GDT.as_mut_ptr().add(i).write_volatile(keep(d)) }
    });
    s.floor("plain volatile store (no pvops)", Figure::Ns(floor));
    type Variant<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let rows: [Variant<'_>; 3] = [
        (
            "direct (the backend's method)",
            Box::new(|| {
                let _ = keep(direct_write(&NATIVE, keep(&gdt), keep(5), keep(d)));
            }),
        ),
        (
            "static (generic over the backend)",
            Box::new(|| {
                let _ = keep(generic_write(&NATIVE, keep(&gdt), keep(5), keep(d)));
            }),
        ),
        (
            "table (OpsTable, function pointers)",
            Box::new(|| {
                let _ = keep(generic_write(keep(&table), keep(&gdt), keep(5), keep(d)));
            }),
        ),
    ];
    for (name, mut f) in rows {
        let v = time(&mut *f);
        s.against(name, Figure::Ns(v), "store", Figure::Ns(floor));
    }
    if installed {
        let v = time(&mut || {
            let _ = keep(generic_write(
                &pvops::Installed,
                keep(&gdt),
                keep(5),
                keep(d),
            ));
        });
        s.against(
            "installed (the global table)",
            Figure::Ns(v),
            "store",
            Figure::Ns(floor),
        );
    } else {
        s.missing(
            "installed (the global table)",
            "another backend's table is installed in this process",
        );
    }
    s
}

/// A 64-bit user code segment, DPL 3 (valid for pv64 as it is).
const UCODE64: u64 = 0x00af_fb00_0000_ffff;

fn hc(d: &XenDomain, v: usize, n: u64, a: &[u64]) -> i64 {
    let mut args = [0u64; 6];
    for (slot, x) in args.iter_mut().zip(a) {
        *slot = *x;
    }
    d.hypercall(v, n, args)
}

fn ok(what: &str, r: i64) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned {r}"))
    }
}

/// `frames` fresh pages mapped read-only; their mfns.
fn ro_frames(d: &XenDomain, frames: usize) -> Result<Vec<u64>, String> {
    (0..frames)
        .map(|_| {
            let va = d.alloc_pages(1);
            let m = d.virt_to_mfn(va).ok_or("a fresh page has no mfn")?;
            ok(
                "update_va_mapping",
                hc(d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 1, 0]),
            )?;
            Ok(m)
        })
        .collect()
}

fn frame_list(d: &XenDomain, mfns: &[u64]) -> Result<u64, String> {
    let list = d.alloc_pages(1);
    for (i, m) in mfns.iter().enumerate() {
        if !d.host_write_u64(list + 8 * i as u64, *m) {
            return Err("writing a frame list".into());
        }
    }
    Ok(list)
}

/// A pv64 domain whose vCPU 0 has a live GDT of `frames` frames.
fn domain_with_gdt(frames: usize) -> Result<(XenDomain, Vec<u64>), String> {
    let d = XenDomain::pv64(128, 2);
    let mfns = ro_frames(&d, frames)?;
    let list = frame_list(&d, &mfns)?;
    ok(
        "set_gdt",
        hc(&d, 0, nr::SET_GDT, &[list, frames as u64 * 512]),
    )?;
    d.clear_trace();
    Ok((d, mfns))
}

/// hv-sim's Xen hypercalls in process against their lean paths.
pub fn hypercalls() -> (Section, Vec<Goal>) {
    let mut s = Section::figures("In-process hypercalls (hv-sim's Xen PV model, pv64)");
    let mut goals = Vec::new();
    if let Err(e) = hypercall_rows(&mut s, &mut goals) {
        s.missing("(the rest)", &e);
    }
    (s, goals)
}

fn hypercall_rows(s: &mut Section, goals: &mut Vec<Goal>) -> Result<(), String> {
    let time = |f: &mut dyn FnMut()| time_ns(f, BATCH, BATCHES);
    // The floor: the descriptor rule and one store.
    let mut slot = [0u64; 512];
    let mut i = 0usize;
    let lean = time(&mut || {
        i = (i + 1) & 511;
        let v = check_descriptor(Abi::Pv64, keep(UCODE64)).unwrap_or(0);
        if let Some(x) = slot.get_mut(i) {
            // SAFETY: `x` is a valid, aligned u64 of `slot`.
            unsafe { core::ptr::write_volatile(x, v) };
        }
    });
    keep(&slot);
    s.floor("lean check_descriptor + store", Figure::Ns(lean));
    let mut worst = 0f64;
    for frames in [1usize, 14] {
        let (d, mfns) = domain_with_gdt(frames)?;
        let maddr = mfns.first().ok_or("no frame")? << 12;
        ok(
            "update_descriptor",
            hc(&d, 0, nr::UPDATE_DESCRIPTOR, &[maddr + 8, UCODE64]),
        )?;
        let mut i = 0u64;
        let v = time(&mut || {
            i = (i + 1) & 511;
            keep(hc(&d, 0, nr::UPDATE_DESCRIPTOR, &[maddr + i * 8, UCODE64]));
        });
        worst = worst.max(v);
        s.against(
            &format!("update_descriptor, {frames} live GDT frame(s)"),
            Figure::Ns(v),
            "lean",
            Figure::Ns(lean),
        );
    }
    goals.push(Goal::new(
        "update_descriptor ≤ 50 ns (1 and 14 live GDT frames)",
        Some(worst <= 50.0),
        format!(
            "slowest {:.0} ns = {} the lean path{}",
            worst,
            super::ratio(worst, lean),
            if worst > 50.0 {
                " (the hypercall entry, trace event and page-type lookup: see cargo bench -p hv-sim --bench xen_hypercalls)"
            } else {
                ""
            }
        ),
    ));
    trap_table_rows(s)?;
    set_gdt_rows(s)?;
    multicall_rows(s, lean)?;
    Ok(())
}

fn trap_table_rows(s: &mut Section) -> Result<(), String> {
    let d = XenDomain::pv64(64, 1);
    let t = d.alloc_pages(2);
    let entry = |v: u64| (v | 0xe033 << 16, 0xffff_8000_0000_1000 + v * 16);
    for v in 0..=256u64 {
        // vector, flags (DPL 0), cs (flat kernel CS), address; the 257th
        // entry (address 0) terminates.
        let (w0, w1) = if v < 256 { entry(v) } else { (0, 0) };
        if !d.host_write_u64(t + v * 16, w0) || !d.host_write_u64(t + v * 16 + 8, w1) {
            return Err("writing the trap table".into());
        }
    }
    // The floor: read each 16-byte entry, Xen's checks (canonical address,
    // RPL raised to the kernel's) and the store.
    let raw: Vec<[u8; 16]> = (0..256u64)
        .map(|v| {
            let (w0, w1) = entry(v);
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&w0.to_le_bytes());
            e[8..].copy_from_slice(&w1.to_le_bytes());
            e
        })
        .collect();
    let mut table = vec![TrapInfo::default(); 256];
    let lean = time_ns(
        || {
            for e in keep(&raw) {
                let mut w = [0u8; 8];
                w.copy_from_slice(&e[8..]);
                let address = u64::from_le_bytes(w);
                let mut cs = u16::from_le_bytes([e[2], e[3]]);
                if address == 0 || !crate::xen::domain::is_canonical(address) {
                    break;
                }
                if cs & 3 < 3 {
                    cs |= 3;
                }
                if let Some(slot) = table.get_mut(usize::from(e[0])) {
                    *slot = TrapInfo {
                        vector: e[0],
                        flags: e[1],
                        cs,
                        address,
                    };
                }
            }
            keep(&table);
        },
        BATCH,
        BATCHES,
    );
    ok("set_trap_table", hc(&d, 0, nr::SET_TRAP_TABLE, &[t]))?;
    let v = time_ns(
        || {
            keep(hc(&d, 0, nr::SET_TRAP_TABLE, &[t]));
        },
        BATCH,
        BATCHES,
    );
    s.floor(
        "lean 256 trap entries: read, check, store",
        Figure::Ns(lean),
    );
    s.against(
        "set_trap_table(256)",
        Figure::Ns(v),
        "lean 256",
        Figure::Ns(lean),
    );
    Ok(())
}

fn set_gdt_rows(s: &mut Section) -> Result<(), String> {
    let d = XenDomain::pv64(128, 2);
    let a = ro_frames(&d, 14)?;
    let b = ro_frames(&d, 14)?;
    let la = frame_list(&d, &a)?;
    let lb = frame_list(&d, &b)?;
    let lean = time_ns(
        || {
            let mut n = 0u32;
            for _ in 0..14 * 512 {
                n += u32::from(check_descriptor(Abi::Pv64, keep(0)).is_ok());
            }
            keep(n);
        },
        BATCH,
        BATCHES,
    );
    // Set A loses its seg_desc type before each timed call (released, then
    // mapped writable and read-only again), so the call validates all 7168
    // slots afresh.
    let retype = |mfns: &[u64]| -> Result<(), String> {
        ok("set_gdt", hc(&d, 0, nr::SET_GDT, &[lb, 0]))?;
        for m in mfns {
            let pfn = d.mfn_to_pfn(*m).ok_or("an mfn without a pfn")?;
            let va = d.va_base() + (pfn << 12);
            ok(
                "update_va_mapping",
                hc(&d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 3, 0]),
            )?;
            ok(
                "update_va_mapping",
                hc(&d, 0, nr::UPDATE_VA_MAPPING, &[va, m << 12 | 1, 0]),
            )?;
        }
        Ok(())
    };
    retype(&a)?;
    ok("set_gdt", hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]))?;
    let mut failed = None;
    let first = time_each_ns(
        || {
            if let Err(e) = retype(&a) {
                failed = Some(e);
            }
        },
        || {
            keep(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]));
        },
        40,
    );
    if let Some(e) = failed {
        return Err(e);
    }
    // vCPU 1 holds set A, so vCPU 0's loads of A find it typed.
    ok("set_gdt", hc(&d, 1, nr::SET_GDT, &[la, 14 * 512]))?;
    ok("set_gdt", hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]))?;
    let reload = time_ns(
        || {
            keep(hc(&d, 0, nr::SET_GDT, &[la, 14 * 512]));
        },
        BATCH,
        BATCHES,
    );
    s.floor("lean 7168 descriptor checks", Figure::Ns(lean));
    s.against(
        "set_gdt(14 frames), first validation",
        Figure::Ns(first),
        "lean 7168",
        Figure::Ns(lean),
    );
    s.against(
        "set_gdt(14 frames), re-load (frames already typed)",
        Figure::Ns(reload),
        "lean 7168",
        Figure::Ns(lean),
    );
    Ok(())
}

fn multicall_rows(s: &mut Section, lean: f64) -> Result<(), String> {
    let (d, mfns) = domain_with_gdt(1)?;
    let m0 = mfns.first().ok_or("no frame")? << 12;
    let list = d.alloc_pages(16);
    for i in 0..1024u64 {
        let e = list + i * 64;
        if !(d.host_write_u64(e, nr::UPDATE_DESCRIPTOR)
            && d.host_write_u64(e + 16, m0 | ((i % 512) * 8))
            && d.host_write_u64(e + 24, UCODE64))
        {
            return Err("writing the multicall list".into());
        }
    }
    ok("multicall", hc(&d, 0, nr::MULTICALL, &[list, 1024]))?;
    let mut per = Vec::new();
    for n in [1u64, 16, 256, 1024] {
        let v = time_ns(
            || {
                keep(hc(&d, 0, nr::MULTICALL, &[list, n]));
            },
            BATCH,
            BATCHES,
        ) / n as f64;
        per.push(v);
        s.against(
            &format!("multicall({n}) of update_descriptor, per entry"),
            Figure::Ns(v),
            "lean",
            Figure::Ns(lean),
        );
    }
    if let (Some(a), Some(b)) = (per.get(1), per.last()) {
        s.note(format!(
            "multicall per-entry cost at 1024 entries is {} of that at 16 (1.00× = linear in entries)",
            super::ratio(*b, *a)
        ));
    }
    Ok(())
}

const CODE: u64 = 0x40_0000;
const EMU_GDT: u64 = 0x1_0000;
pub(super) const DATA: u64 = 0x2_0000;

/// A vCPU and memory with a 16-entry GDT and `code` at RIP (as
/// `benches/trap_emulate.rs`).
pub(super) fn machine(code: &[u8]) -> (MockCpu, MockMemory) {
    let mem = MockMemory::quiet();
    mem.map(EMU_GDT, true).map(DATA, true).map(CODE, false);
    mem.poke(CODE, code);
    if let Ok(tss) = SystemDescriptor::tss(0x3_0000, pvops::Tss64::LIMIT) {
        mem.poke_u64(EMU_GDT + 0x40, tss.low);
        mem.poke_u64(EMU_GDT + 0x48, tss.high);
    }
    // The lgdt operand for `lgdt [rip + 0x1000]` (7 bytes).
    mem.map(CODE + 7 + 0x1000, true);
    mem.poke(CODE + 7 + 0x1000, &[0x7f, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    let mut cpu = MockCpu {
        rip: CODE,
        ..MockCpu::default()
    };
    cpu.dt.gdtr = DescriptorTablePointer {
        limit: 16 * 8 - 1,
        base: EMU_GDT,
    };
    (cpu, mem)
}

/// hv-sim's emulator against Linux's UMIP emulation of `sgdt`.
pub fn emulator(umip: bool) -> (Section, Vec<Goal>) {
    let mut s = Section::figures("Emulator: hv_sim::emulate against Linux's UMIP emulation");
    let mut goals = Vec::new();
    let linux = umip_sgdt_ns();
    match &linux {
        Ok(v) => {
            s.floor(
                "Linux emulating a user-space sgdt (UMIP), per instruction",
                Figure::Ns(*v),
            );
            if !umip || *v < 50.0 {
                s.note("the user-space sgdt did not trap (no UMIP): the floor is the native instruction, so the ratios are not the issue's comparison");
            }
        }
        Err(e) => {
            s.missing("Linux emulating a user-space sgdt (UMIP)", e);
        }
    }
    let mut sgdt_ns = None;
    for (name, code) in [
        (
            "emulate sgdt [rax]: decode + 10-byte store",
            &[0x0f, 0x01, 0x00][..],
        ),
        (
            "emulate lgdt [rip+disp32]: decode + operand fetch + checks",
            &[0x0f, 0x01, 0x15, 0x00, 0x10, 0x00, 0x00][..],
        ),
    ] {
        let (mut cpu, mem) = machine(code);
        cpu.gprs[0] = DATA;
        if !matches!(emulate(&mut cpu, &mem), Outcome::Emulated { .. }) {
            s.missing(name, "the emulator did not emulate it");
            continue;
        }
        let v = time_ns(
            || {
                keep(emulate(&mut cpu, &mem));
            },
            BATCH,
            BATCHES,
        );
        sgdt_ns.get_or_insert(v);
        match &linux {
            Ok(l) => s.against(name, Figure::Ns(v), "Linux sgdt", Figure::Ns(*l)),
            Err(_) => s.row([name.to_string(), Figure::Ns(v).to_string()]),
        };
    }
    let goal = "emulator ≤ 0.5× Linux's UMIP emulation of sgdt";
    goals.push(match (sgdt_ns, &linux) {
        (Some(e), Ok(l)) => Goal::new(
            goal,
            Some(e <= 0.5 * l && umip),
            format!(
                "{:.0} ns vs {:.0} ns = {}{}",
                e,
                l,
                super::ratio(e, *l),
                if umip { "" } else { " (no UMIP on this CPU)" }
            ),
        ),
        (_, Err(e)) => Goal::new(goal, None, e.clone()),
        (None, _) => Goal::new(goal, None, "the emulator figure is missing"),
    });
    (s, goals)
}

/// Nanoseconds per `sgdt` executed in a user-space loop (Linux emulates it
/// where the CPU has UMIP), measured in a child process so that a kernel
/// that answers with SIGSEGV instead costs only the child.
#[cfg(target_arch = "x86_64")]
fn umip_sgdt_ns() -> Result<f64, String> {
    const BATCHES: usize = 9;
    const PER_BATCH: u32 = 4000;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe(2) requires.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let [rd, wr] = fds;
    // SAFETY: fork(2); the child only runs the loop below (no allocation,
    // no locks), writes to the pipe and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut per = [0f64; BATCHES];
        let mut buf = [0u8; 16];
        for p in per.iter_mut() {
            let t = std::time::Instant::now();
            for _ in 0..PER_BATCH {
                // SAFETY: sgdt stores 10 bytes at the address, inside `buf`.
                unsafe {
                    core::arch::asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack));
                }
            }
            *p = t.elapsed().as_secs_f64() * 1e9 / f64::from(PER_BATCH);
        }
        per.sort_by(|a, b| a.total_cmp(b));
        let bytes = per[BATCHES / 2].to_le_bytes();
        // SAFETY: writes 8 bytes from a live array to our pipe; _exit ends
        // the child without running the parent's destructors.
        unsafe {
            libc::write(wr, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end (the child has its own).
    unsafe { libc::close(wr) };
    if pid < 0 {
        // SAFETY: closing the read end we own.
        unsafe { libc::close(rd) };
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut bytes = [0u8; 8];
    let mut got = 0usize;
    while got < bytes.len() {
        let rest = &mut bytes[got..];
        // SAFETY: reads into the live slice `rest`, at most its length.
        let n = unsafe { libc::read(rd, rest.as_mut_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid int.
    unsafe {
        libc::close(rd);
        libc::waitpid(pid, &mut status, 0);
    }
    if libc::WIFSIGNALED(status) {
        return Err(format!(
            "a user-space sgdt was killed by signal {} (this kernel does not emulate it)",
            libc::WTERMSIG(status)
        ));
    }
    if got < bytes.len() {
        return Err("the sgdt loop's child reported nothing".into());
    }
    Ok(f64::from_le_bytes(bytes))
}

#[cfg(not(target_arch = "x86_64"))]
fn umip_sgdt_ns() -> Result<f64, String> {
    Err("not an x86-64 host".into())
}
