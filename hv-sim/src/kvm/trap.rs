//! The trap-and-emulate personality on a real vCPU: what paravirtualization
//! avoids, shown and counted.
//!
//! [`boot_trap`] boots the *unmodified native-backend* kernel deprivileged:
//! its `lgdt`, `lidt`, `ltr`, `lldt` are the real instructions, executed in
//! ring 3, so they raise #GP; with CR4.UMIP set, so do `sgdt`, `sidt`,
//! `str` and `sldt`. hv-sim:
//!
//! * enters the kernel in **ring 3** on its own flat selectors
//!   [`TRAP_KERNEL_CS`]/[`TRAP_KERNEL_SS`] at the top of the real GDT, with
//!   RFLAGS.IOPL = 3 (the report port `out`s work), the U bit on the
//!   kernel's pages and CR4.UMIP on;
//! * keeps the guest's **virtual** GDTR, IDTR, TR and LDTR
//!   ([`DtRegisters`]) — what the kernel loaded and what its `sgdt`…`sldt`
//!   must see — and builds the **real** GDT, IDT and LDT the vCPU runs on
//!   from the guest's tables, compressed to ring 3: present code/data
//!   descriptors get DPL 3, gates get DPL 3, code selector RPL 3 and no
//!   IST, the guest's TR and LDTR selectors name hv-sim's TSS and LDT copy
//!   (installed through the vCPU's system registers, [`super::regs`]);
//! * routes #GP (vector 13 of the real IDT) to its stub page [`TRAP_TEXT`]
//!   (`push rax; mov eax, 13; out 0xE5, eax`): on that port exit it reads
//!   the exception frame, fetches the instruction at the faulting RIP
//!   through the guest's page tables, runs [`crate::emulate`] against the
//!   virtual state and guest memory, and then either advances RIP past the
//!   instruction (unwinding the frame itself: RIP, RSP, RFLAGS, RAX),
//!   delivers the exception the emulator asks for (#GP(sel), #NP(sel),
//!   #PF with CR2) to the handler in the *guest's* IDT, or — for any #GP
//!   that is not a descriptor-table instruction, such as the kernel's
//!   deliberate bad selector load — delivers the original #GP, error code
//!   and all, to the guest's handler ("bounced"). Every other vector goes
//!   straight to the guest's handler through the compressed real IDT.
//!
//! # What the kernel is told
//! Boot flag [`super::boot_flags::DEPRIVILEGED`]: CS and SS cannot be
//! reloaded from its GDT in ring 3 (a far return or `mov ss` to an RPL 0
//! selector faults, and those are not descriptor-table instructions), so
//! its load_gdt check reloads DS/ES only and reports the CS/SS reload as
//! skipped; `lar`/`lsl`/`verr` are sensitive but unprivileged (they would
//! read the compressed copy without trapping), so they are skipped too.
//! On PVM hosts, [`super::boot_flags::CPUID_SHOWS_HOST`] as well.
//!
//! # Shadowing
//! hv-sim rebuilds the real tables from the guest's at every trap. A
//! kernel that stores into its live GDT and loads a segment from the new
//! entry with no trap in between would use the stale copy (a production
//! trap-and-emulate VMM write-protects the guest's table pages and traps
//! those stores too); the example kernel always executes a trapping
//! instruction (`lldt`, `sldt`) between the two.
//! [`TrapMode::WriteProtect`] ([`boot_trap_with`]) is that VMM's way:
//! the guest's table pages are write-protected, every store into them
//! traps (a #PF routed to [`PF_STUB`]) and is applied to the real tables at
//! once, true or false sharing counted (see `trap/wp.rs`); the rebuild then
//! runs only when an emulated instruction changed the tables' registers.
//!
//! # Guest-physical layout (pages below 1 MiB are the hypervisor's)
//! | GPA | contents | guest access |
//! |---|---|---|
//! | 0x1000 / 0x2000 / 0x3000 | PML4, PDPT, PD | none |
//! | 0x7000–0x8000 | boot stack (rsp at entry) | read/write |
//! | 0x10000–0x50000 | page tables: 64 × 512 4 KiB entries (≤ 128 MiB RAM) | none |
//! | 0x50000–0x60000 | the real GDT: 8192 entries, hv-sim's from [`FIRST_HV_GDT_ENTRY`] | none |
//! | 0x60000 | the real IDT | none |
//! | 0x61000–0x71000 | the real LDT (compressed copy of the guest's) | none |
//! | 0x71000 | hv-sim's TSS | none |
//! | 0x72000 | hv-sim's #GP entry ([`TRAP_TEXT`]), #PF entry ([`PF_STUB_AT`]) | execute |
//! | 0xC0000–0x100000 | option-ROM window (empty: zeros) | read |

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::personality::{PortAction, PortWrite};
use super::regs::Vcpu;
use super::xen::FinalSegments;
use super::{BootReport, Config, Crash, KvmError, PortError, layout, ports};
use crate::emulate::{self, Access, DtRegisters, Exception, GuestMemory, NotEmulated, Outcome};
use pvops::{DescriptorTablePointer, Selector};

pub use super::layout::ring3::{
    FIRST_HV_GDT_ENTRY, HV_TSS, HV_TSS_SELECTOR, MAX_PTS, PT_BASE, REAL_GDT, REAL_GDT_ENTRIES,
    REAL_IDT, REAL_LDT, RESERVED_PAGES,
};
/// Most entries of the real LDT.
pub const REAL_LDT_ENTRIES: u64 = 8192;
/// hv-sim's #GP entry page.
pub const TRAP_TEXT: u64 = layout::ring3::OWN_PAGE;
/// The stub: `push rax; mov eax, 13; out 0xE5, eax; ud2` (hv-sim resumes
/// the guest elsewhere; the `ud2` is never reached).
pub const TRAP_STUB: [u8; 10] = [0x50, 0xb8, 13, 0, 0, 0, 0xe7, ports::TRAP as u8, 0x0f, 0x0b];
/// RIP after the stub's `out`.
pub const TRAP_STUB_EXIT_RIP: u64 = TRAP_TEXT + 8;
/// hv-sim's ring-3 64-bit code segment: the kernel's CS.
pub const TRAP_KERNEL_CS: u16 = layout::ring3::KERNEL_CS;
/// hv-sim's ring-3 flat data segment: the kernel's SS.
pub const TRAP_KERNEL_SS: u16 = layout::ring3::KERNEL_SS;
/// CR4.UMIP.
pub const CR4_UMIP: u64 = 1 << 11;

mod cpu;
use cpu::TrapCpu;
mod store;
mod wp;
pub use wp::{PF_STUB, PF_STUB_AT, PTE_HV_WP, TrapMode, WpReport};
mod report;
pub mod workload;
use super::Capped;
pub use report::{Bounced, TrapBootReport};
/// Most injected exceptions and bounced #GPs a report keeps (each list
/// counts them all).
pub const MAX_RECORDS: usize = 4096;

pub use super::paging::PagingMemory;
use layout::{TSS_BUSY as BUSY, gate};
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;

/// Boot `image` (a native-backend kernel) deprivileged, trapping and
/// emulating its descriptor-table instructions.
pub fn boot_trap(image: &[u8], cfg: &Config) -> Result<TrapBootReport, KvmError> {
    boot_trap_with(image, cfg, TrapMode::Shadow)
}

/// [`boot_trap`] keeping the real tables current the `mode` way.
pub fn boot_trap_with(
    image: &[u8],
    cfg: &Config,
    mode: TrapMode,
) -> Result<TrapBootReport, KvmError> {
    // The profiler's one-time 10 ms calibration, here rather than inside
    // the first trap's handler and emulation times.
    emulate::profile::tsc_hz();
    let (boot, o) = super::personality::launch_ring3(
        "trap-and-emulate",
        image,
        cfg,
        |entry, _| Ok((entry, super::Setup::Trap(mode))),
        |o| match o {
            super::Outcome::Trap(o) => Some(*o),
            _ => None,
        },
    )?;
    Ok(TrapBootReport { boot, ..o })
}

/// A ring-3 copy of a guest descriptor: DPL 3, accessed
/// ([`layout::real_descriptor`]).
fn compress(d: u64) -> u64 {
    layout::real_descriptor(d, 3)
}

/// The real gate for vector `v` from the guest's (`low`, `high`): DPL 3,
/// code selector RPL 3, no IST; vector 13 (and 14 with `pf_stub`) always
/// hv-sim's stubs.
fn real_gate(v: usize, low: u64, high: u64, pf_stub: bool) -> (u64, u64) {
    let typ = (low >> 40) & 0xf;
    if v == 13 {
        gate(TRAP_TEXT, TRAP_KERNEL_CS, 0x8e)
    } else if v == 14 && pf_stub {
        gate(wp::PF_STUB_AT, TRAP_KERNEL_CS, 0x8e)
    } else if low & (1 << 47) != 0 && (typ == 0xe || typ == 0xf) {
        let offset = (low & 0xffff) | ((low >> 48) << 16) | (high << 32);
        let sel = ((low >> 16) as u16) | 3;
        gate(offset, sel, 0xe0 | typ)
    } else {
        (0, 0)
    }
}

/// A write to the trap port that did not come from hv-sim's `owner` entry.
fn stub_misuse(len: usize, data: u32, regs: &kvm_regs, owner: &'static str) -> PortError {
    Crash::NotFromStub {
        name: "trap",
        port: ports::TRAP,
        len,
        data,
        rax: regs.rax,
        rip: regs.rip,
        owner,
        why: None,
    }
    .into()
}

/// What hv-sim's #GP and #PF entries leave on the guest's stack: the
/// stub's saved rax, then the CPU's frame (error code, rip, cs, rflags,
/// rsp, ss).
#[derive(Clone, Copy)]
struct StubFrame {
    saved_rax: u64,
    error_code: u64,
    rip: u64,
    rflags: u64,
    rsp: u64,
}

impl StubFrame {
    /// The frame at `rsp` (`what` names the read in the error).
    fn read(mem: &PagingMemory<'_>, rsp: u64, what: &'static str) -> Result<StubFrame, PortError> {
        let mut frame = [0u8; 56];
        mem.read(rsp, &mut frame, Access::ImplicitRead)
            .map_err(PortError::guest_access(what, rsp))?;
        let f =
            |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        Ok(StubFrame {
            saved_rax: f(0),
            error_code: f(1),
            rip: f(2),
            rflags: f(4),
            rsp: f(5),
        })
    }

    /// The emulator's view of the vCPU at the faulting instruction: `regs`
    /// with the frame's rax, rip, rsp and rflags.
    fn cpu(&self, regs: kvm_regs, sregs: &kvm_sregs, dt: DtRegisters) -> TrapCpu {
        let mut cpu = TrapCpu::new(regs, sregs, dt);
        cpu.regs.rax = self.saved_rax;
        cpu.regs.rip = self.rip;
        cpu.regs.rsp = self.rsp;
        cpu.regs.rflags = self.rflags;
        cpu
    }
}

/// The guest's tables as a build of the real ones read them.
#[derive(PartialEq, Eq)]
struct GuestTables {
    dt: DtRegisters,
    cr3: u64,
    gdt: Vec<u64>,
    ldt: Vec<u64>,
    idt: Vec<u64>,
}

/// The personality's state during a boot.
pub(crate) struct TrapGuest {
    mem: GuestMemoryMmap,
    /// The guest's virtual descriptor-table registers.
    dt: DtRegisters,
    /// The report it keeps (its `boot`, `virtual_dt` and `write_protect`
    /// are filled in at the end).
    out: TrapBootReport,
    /// What the real tables hold (to write only changes).
    last_gdt: Vec<u64>,
    last_ldt: Vec<u64>,
    last_idt: Vec<(u64, u64)>,
    /// What the last build read.
    last_raw: Option<GuestTables>,
    /// The real TR and LDTR last installed: (selector, base, limit).
    last_tr: (u16, u64, u32),
    last_ldtr: (u16, u64, u32),
    /// Write-protect mode's state (`None`: shadowing).
    wp: Option<wp::Wp>,
}

impl TrapGuest {
    /// Lay out hv-sim's pages: page tables, its GDT entries and TSS, the
    /// #GP stub.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        cfg: &Config,
        mode: TrapMode,
    ) -> Result<TrapGuest, KvmError> {
        // The (empty) option-ROM window, so the kernel's VMI probe reads
        // zeros as on a plain machine; the stub page.
        layout::write_hv_ring3(mem, cfg.mem_size, true)?;
        mem.write_slice(&TRAP_STUB, GuestAddress(TRAP_TEXT))
            .map_err(KvmError::guest_write("the #GP entry", TRAP_TEXT))?;
        mem.write_slice(&PF_STUB, GuestAddress(wp::PF_STUB_AT))
            .map_err(KvmError::guest_write("the #PF entry", wp::PF_STUB_AT))?;
        // The virtual registers start as after reset: GDTR/IDTR base 0,
        // limit 0xffff; TR and LDTR null.
        let reset = DescriptorTablePointer {
            limit: 0xffff,
            base: 0,
        };
        let dt = DtRegisters {
            gdtr: reset,
            idtr: reset,
            ..DtRegisters::default()
        };
        Ok(TrapGuest {
            mem: mem.clone(),
            dt,
            out: TrapBootReport {
                boot: BootReport::default(),
                traps: 0,
                emulated: BTreeMap::new(),
                injected: Capped::new(MAX_RECORDS),
                bounced: Capped::new(MAX_RECORDS),
                restarts: 0,
                installs: 0,
                umip: false,
                handler_time: Duration::ZERO,
                emulate_time: Duration::ZERO,
                sync_time: Duration::ZERO,
                phases: Default::default(),
                virtual_dt: dt,
                final_segments: None,
                real_tr_ldtr: None,
                write_protect: None,
            },
            last_gdt: Vec::new(),
            last_ldt: Vec::new(),
            last_idt: vec![(0, 0); 256],
            last_raw: None,
            last_tr: (HV_TSS_SELECTOR, HV_TSS, 0x67),
            last_ldtr: (0, 0, 0),
            wp: (mode == TrapMode::WriteProtect).then(wp::Wp::default),
        })
    }

    /// The entry state: ring 3 on hv-sim's flat selectors, IOPL 3, UMIP,
    /// hv-sim's GDT/IDT/TR; the boot flags that say so.
    pub(crate) fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        regs.rdi |= super::boot_flags::DEPRIVILEGED;
        layout::hv_ring3_entry(regs, sregs);
        sregs.cr4 |= CR4_UMIP;
    }

    /// Before the guest runs: the #GP gate, and whether UMIP stuck.
    pub(crate) fn initial_tables(&mut self, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        let sregs = vcpu.sregs()?;
        self.out.umip = sregs.cr4 & CR4_UMIP != 0;
        self.sync(vcpu, sregs, true)
    }

    /// Build the real GDT, LDT and IDT from the guest's (through its
    /// virtual registers) and install changed registers. The guest's tables
    /// are read at every trap (it may have stored into them since); nothing
    /// is rebuilt while they, the virtual registers and CR3 are as at the
    /// last build.
    fn sync(
        &mut self,
        vcpu: &mut Vcpu<'_>,
        mut sregs: kvm_sregs,
        install: bool,
    ) -> Result<(), PortError> {
        let dt = self.dt;
        let w = |addr: u64, v: u64| {
            self.mem
                .write_obj(v, GuestAddress(addr))
                .map_err(PortError::hv_memory("writing", "hv-sim's page", addr))
        };
        let ldt_entries = ((u64::from(dt.ldtr_limit) + 1) / 8).min(REAL_LDT_ENTRIES);
        let gates = ((u64::from(dt.idtr.limit) + 1) / 16).min(256);
        let raw = self.guest_tables(sregs.cr3);
        if !install && self.last_raw.as_ref() == Some(&raw) {
            return Ok(());
        }

        // GDT: the guest's entries, compressed, below hv-sim's.
        let mut gdt: Vec<u64> = raw.gdt.iter().copied().map(compress).collect();
        let mut slot = |sel: Selector, pair: (u64, u64)| {
            let i = usize::from(sel.index());
            if i + 1 < gdt.len() {
                gdt[i] = pair.0;
                gdt[i + 1] = pair.1;
                true
            } else {
                false
            }
        };
        let hv_tss = pvops::SystemDescriptor::tss(HV_TSS, 0x67)?;
        let tr = if !dt.tr.is_null() && slot(dt.tr, (hv_tss.low | BUSY, hv_tss.high)) {
            (dt.tr.bits(), HV_TSS, 0x67)
        } else {
            (HV_TSS_SELECTOR, HV_TSS, 0x67)
        };
        let mut ldtr = (0, 0, 0);
        if !dt.ldtr.is_null() {
            let sd = pvops::SystemDescriptor::ldt(REAL_LDT, ldt_entries as u32)?;
            if slot(dt.ldtr, (sd.low, sd.high)) {
                ldtr = (dt.ldtr.bits(), REAL_LDT, (ldt_entries * 8 - 1) as u32);
            }
        }
        for i in 0..gdt.len().max(self.last_gdt.len()) {
            let d = gdt.get(i).copied().unwrap_or(0);
            if self.last_gdt.get(i) != Some(&d) {
                w(REAL_GDT + i as u64 * 8, d)?;
            }
        }
        self.last_gdt = gdt;

        // LDT: the guest's (at LDTR's cached base), compressed.
        let ldt: Vec<u64> = if ldtr.0 == 0 {
            Vec::new()
        } else {
            raw.ldt.iter().copied().map(compress).collect()
        };
        for (i, d) in ldt.iter().enumerate() {
            if self.last_ldt.get(i) != Some(d) {
                w(REAL_LDT + i as u64 * 8, *d)?;
            }
        }
        self.last_ldt = ldt;

        // IDT: the guest's gates, DPL 3, code selector RPL 3, no IST;
        // vector 13 always hv-sim's stub.
        for v in 0..256usize {
            let (low, high) = if (v as u64) < gates {
                (raw.idt[v * 2], raw.idt[v * 2 + 1])
            } else {
                (0, 0)
            };
            let g = real_gate(v, low, high, self.wp.is_some());
            if self.last_idt[v] != g {
                w(REAL_IDT + v as u64 * 16, g.0)?;
                w(REAL_IDT + v as u64 * 16 + 8, g.1)?;
                self.last_idt[v] = g;
            }
        }

        if install || tr != self.last_tr || ldtr != self.last_ldtr {
            self.install_tr_ldtr(vcpu, &mut sregs, tr, ldtr);
        }
        Ok(())
    }

    /// The guest's GDT, LDT and IDT as its virtual registers name them,
    /// read through its page tables (`cr3`); what is not mapped reads as 0.
    fn guest_tables(&self, cr3: u64) -> GuestTables {
        let mem = PagingMemory::new(&self.mem, cr3);
        let dt = self.dt;
        let n = ((u64::from(dt.gdtr.limit) + 1) / 8).min(u64::from(FIRST_HV_GDT_ENTRY));
        let ldt_entries = ((u64::from(dt.ldtr_limit) + 1) / 8).min(REAL_LDT_ENTRIES);
        let gates = ((u64::from(dt.idtr.limit) + 1) / 16).min(256);
        GuestTables {
            dt,
            cr3,
            gdt: mem.read_u64s_or_zero(dt.gdtr.base, n),
            ldt: if dt.ldtr.is_null() {
                Vec::new()
            } else {
                mem.read_u64s_or_zero(dt.ldtr_base, ldt_entries)
            },
            idt: mem.read_u64s_or_zero(dt.idtr.base, gates * 2),
        }
    }

    /// Load the real TR and LDTR (selector, base, limit; an LDTR selector
    /// of 0: none) into the vCPU.
    fn install_tr_ldtr(
        &mut self,
        vcpu: &mut Vcpu<'_>,
        sregs: &mut kvm_sregs,
        tr: (u16, u64, u32),
        ldtr: (u16, u64, u32),
    ) {
        sregs.tr = kvm_segment {
            base: tr.1,
            limit: tr.2,
            selector: tr.0,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.ldt = if ldtr.0 == 0 {
            kvm_segment {
                unusable: 1,
                ..Default::default()
            }
        } else {
            kvm_segment {
                base: ldtr.1,
                limit: ldtr.2,
                selector: ldtr.0,
                type_: 2,
                present: 1,
                ..Default::default()
            }
        };
        vcpu.set_sregs(sregs);
        self.out.installs += 1;
        self.last_tr = tr;
        self.last_ldtr = ldtr;
    }

    /// hv-sim's #GP entry wrote the trap port: emulate the instruction, or
    /// deliver an exception to the guest's own handler.
    pub(crate) fn trap(
        &mut self,
        vm: &kvm_ioctls::VmFd,
        vcpu: &mut Vcpu<'_>,
        data: u32,
        len: usize,
    ) -> Result<(), PortError> {
        if len == 4 && data == 14 {
            return self.page_fault(vcpu);
        }
        let t0 = Instant::now();
        let regs = vcpu.regs()?;
        if len != 4 || data != 13 || regs.rax != 13 || regs.rip != TRAP_STUB_EXIT_RIP {
            return Err(stub_misuse(len, data, &regs, "hv-sim's #GP entry"));
        }
        self.out.traps += 1;
        let mut sregs = vcpu.sregs()?;
        let mem = PagingMemory::new(&self.mem, sregs.cr3);
        let frame = StubFrame::read(&mem, regs.rsp, "reading the #GP frame")?;
        let StubFrame {
            saved_rax,
            error_code,
            rip,
            ..
        } = frame;
        let mut cpu = frame.cpu(regs, &sregs, self.dt);
        // Ring 3 raises #GP(0) for every descriptor-table instruction before
        // any other check: a non-zero error code is some other fault.
        let outcome = if error_code != 0 {
            Outcome::NotEmulated(NotEmulated::Other(format!(
                "#GP({error_code:#x}) (not a privilege fault)"
            )))
        } else {
            let t = Instant::now();
            let (o, p) = emulate::profile::measure(|| {
                emulate::emulate(&mut cpu, &emulate::profile::Profiled(&mem))
            });
            self.out.emulate_time += t.elapsed();
            self.out.phases.add(&p);
            o
        };
        let dt_before = self.dt;
        let mut store = false;
        let r = match outcome {
            Outcome::Emulated { insn, len, .. } => {
                store = !insn.is_load();
                *self.out.emulated.entry(insn.name()).or_default() += 1;
                self.dt = cpu.dt;
                cpu.regs.rip = rip.wrapping_add(len as u64);
                vcpu.set_regs(&cpu.regs);
                Ok(false)
            }
            Outcome::Inject { insn, exception } => {
                self.out
                    .injected
                    .push_with(|| (insn.name(), exception.to_string()));
                self.deliver(vcpu, &mem, regs, &mut sregs, saved_rax, exception)
            }
            Outcome::NotEmulated(NotEmulated::Changed) => {
                // Re-execute whatever is at RIP now, as after the fault.
                self.out.restarts += 1;
                vcpu.set_regs(&cpu.regs);
                Ok(false)
            }
            Outcome::NotEmulated(why) => {
                self.out.bounced.push_with(|| Bounced {
                    rip,
                    error_code,
                    reason: why.to_string(),
                });
                self.deliver(
                    vcpu,
                    &mem,
                    regs,
                    &mut sregs,
                    saved_rax,
                    Exception::Gp(error_code as u16),
                )
            }
        };
        // A #PF's CR2 is installed with the tables.
        let cr2_changed = r?;
        // The guest may have changed its tables since the last trap
        // (write-protect mode: only if this instruction changed them).
        let t = Instant::now();
        if self.wp.is_none() || cr2_changed || store || self.dt != dt_before {
            self.sync(vcpu, sregs, cr2_changed)?;
            self.reprotect(vm, sregs.cr3)?;
        }
        self.out.sync_time += t.elapsed();
        self.out.handler_time += t0.elapsed();
        Ok(())
    }

    /// Deliver `exc` to the handler in the guest's IDT, on the frame the
    /// CPU built for the #GP (at `regs.rsp + 8`, past the stub's push).
    /// For a #PF, CR2 goes into `sregs` (installed by the caller): returns
    /// whether `sregs` changed.
    fn deliver(
        &self,
        vcpu: &mut Vcpu<'_>,
        mem: &PagingMemory<'_>,
        mut regs: kvm_regs,
        sregs: &mut kvm_sregs,
        saved_rax: u64,
        exc: Exception,
    ) -> Result<bool, PortError> {
        let v = u64::from(exc.vector());
        let idtr = self.dt.idtr;
        let mut g = [0u8; 16];
        let ok = v * 16 + 15 <= u64::from(idtr.limit)
            && mem
                .read(idtr.base.wrapping_add(v * 16), &mut g, Access::ImplicitRead)
                .is_ok();
        let low = u64::from_le_bytes(g[..8].try_into().unwrap_or_default());
        let high = u64::from_le_bytes(g[8..].try_into().unwrap_or_default());
        let typ = (low >> 40) & 0xf;
        if !ok || low & (1 << 47) == 0 || (typ != 0xe && typ != 0xf) {
            return Err(Crash::NoGate {
                exception: exc,
                base: idtr.base,
                limit: idtr.limit,
            }
            .into());
        }
        let handler = (low & 0xffff) | ((low >> 48) << 16) | (high << 32);
        let frame = regs.rsp.wrapping_add(8);
        let rflags: u64 = {
            let mut b = [0u8; 8];
            let at = frame.wrapping_add(24);
            mem.read(at, &mut b, Access::ImplicitRead)
                .map_err(PortError::guest_access(
                    "reading the exception frame's rflags",
                    at,
                ))?;
            u64::from_le_bytes(b)
        };
        match exc.error_code() {
            Some(code) => {
                mem.write(frame, &u64::from(code).to_le_bytes(), Access::ImplicitWrite)
                    .map_err(PortError::guest_access("writing the error code", frame))?;
                regs.rsp = frame;
            }
            // No error code: the frame starts at the saved rip.
            None => regs.rsp = frame.wrapping_add(8),
        }
        let mut changed = false;
        if let Exception::Pf(pf) = exc {
            sregs.cr2 = pf.addr;
            changed = true;
        }
        regs.rax = saved_rax;
        regs.rip = handler;
        regs.rflags = rflags & !(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF);
        if typ == 0xe {
            regs.rflags &= !RFLAGS_IF;
        }
        vcpu.set_regs(&regs);
        Ok(changed)
    }

    /// The guest wrote its exit status: record the vCPU's segments.
    pub(crate) fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        if let Ok(s) = vcpu.sregs() {
            self.out.final_segments = Some(FinalSegments::of(&s));
            let ldt = if s.ldt.unusable != 0 {
                (0, 0)
            } else {
                (s.ldt.selector, s.ldt.base)
            };
            self.out.real_tr_ldtr = Some(((s.tr.selector, s.tr.base), ldt));
        }
    }

    /// The outcome, once the guest has stopped.
    pub(crate) fn finish(self) -> TrapBootReport {
        TrapBootReport {
            virtual_dt: self.dt,
            write_protect: self.wp.map(|w| w.report),
            ..self.out
        }
    }
}

impl super::personality::Personality for TrapGuest {
    fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        TrapGuest::entry_state(self, regs, sregs)
    }

    fn initial_tables(
        &mut self,
        _: &kvm_ioctls::VmFd,
        vcpu: &mut Vcpu<'_>,
    ) -> Result<(), PortError> {
        TrapGuest::initial_tables(self, vcpu)
    }

    fn port(&mut self, w: PortWrite<'_, '_>) -> Option<Result<PortAction, PortError>> {
        (w.port == ports::TRAP).then(|| {
            self.trap(w.vm, w.vcpu, w.data, w.len)
                .map(|()| PortAction::Handled)
        })
    }

    fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        TrapGuest::at_exit(self, vcpu)
    }

    fn finish(self: Box<Self>) -> Option<super::Outcome> {
        Some(super::Outcome::Trap(Box::new(TrapGuest::finish(*self))))
    }
}
