//! The VMI-style personality on a real vCPU.
//!
//! [`boot_vmi`] boots a kernel with hv-sim's VMI option ROM in its
//! guest-physical memory. hv-sim:
//!
//! * builds the ROM image ([`crate::vmi::RomBuilder`]: API 3.0 header, PCI
//!   and PnP headers, `"GPL"`, checksum, one x86-64 stub `mov eax, n; out
//!   0xE6, eax; ret` per call at ROM + 0x100 + 16n, jump points at 0x80 and
//!   0x88) and places it at GPA [`ROM_BASE`] (0xC0000), mapped read-only
//!   and executable with the rest of the option-ROM window, so the kernel
//!   finds it with `pvops_vmi::rom::probe` over its identity map and calls
//!   the stubs for real;
//! * on each stub's write to [`ports::VMI`] checks that it came from a stub
//!   of the ROM (rip, eax = the port data), reads rdi, rsi, rdx and rcx,
//!   runs the *same* handler as in-process ([`VmiHypervisor`]: VMI_Init,
//!   GetRelocationInfo, calls 3–14 and SetLazyMode, validated by the
//!   personality's policy) over the guest's RAM with VA = GPA, writes rax
//!   (and rdx = the type for GetRelocationInfo), and poisons the other
//!   caller-saved registers, as a SysV callee may;
//! * after each call makes the **effective** state real on the vCPU: it
//!   builds the real GDT (the guest's entries after the policy's fix-ups,
//!   the personality's two reserved ring-0 entries after them, and hv-sim's
//!   own entries at the top), IDT (the fixed-up gates) and LDT (the fixed-up
//!   entries) in its own pages and installs them through the vCPU's system
//!   registers ([`super::regs`]), only when they changed. TR and LDTR hold the guest's selectors, but the descriptors they name in
//!   the real GDT point at hv-sim's copies (its TSS copy, whose rsp0 is the
//!   UpdateKernelStack value, and its LDT copy), as shadow descriptor tables
//!   do. Between SetLazyMode(2) and SetLazyMode(0) the effective changes are
//!   queued by the personality, so the vCPU keeps running on the old tables
//!   until the flush.
//!
//! The guest's own tables are never rewritten (unlike Xen's): GetGDT,
//! GetIDT, GetLDT and GetTR answer the guest's view, while `sgdt`, `sidt`
//! show hv-sim's tables.
//!
//! # Ring
//! The personality's policy for a 64-bit guest ([`GuestKind::Vmi64`]) is
//! ring compression to **ring 3** (long mode has no segment limits; only
//! paging's U/S bit keeps the guest out of the hypervisor's pages, as for
//! Xen's 64-bit PV guests): DPL 0 code/data segments become DPL 3 in the
//! effective tables and gates' code selectors get RPL 3. So the kernel runs
//! in ring 3, entered on hv-sim's ring-3 flat selectors
//! [`VMI_KERNEL_CS`]/[`VMI_KERNEL_SS`], with RFLAGS.IOPL = 3 (so its `out`s
//! to the report ports and the ROM stubs' `out 0xE6` work) and the U bit on
//! its pages. It loads DS/ES/FS/GS from its own GDT and LDT (DPL 3 after
//! the fix-ups), and exceptions enter its handlers in ring 3 through the
//! effective IDT, on the same stack.
//!
//! # CPUID
//! hv-sim answers leaf 0x4000_0000 with "VMwareVMware" (VMI was VMware's).
//! Where the guest's `cpuid` is not trapped (PVM: ring 3 without CPUID
//! faulting) the kernel sees the host's leaves instead; hv-sim then sets
//! the boot flag [`super::boot_flags::CPUID_SHOWS_HOST`] so the kernel does
//! not pick a backend from them, and the ROM probe decides.
//!
//! # Guest-physical layout (pages below 1 MiB are the hypervisor's)
//! | GPA | contents | guest access |
//! |---|---|---|
//! | 0x1000 / 0x2000 / 0x3000 | PML4, PDPT, PD | none |
//! | 0x7000–0x8000 | boot stack (rsp at entry) | read/write |
//! | 0x10000–0x50000 | page tables: 64 × 512 4 KiB entries (≤ 128 MiB RAM) | none |
//! | 0x50000–0x60000 | the real GDT: 8192 entries, hv-sim's from [`FIRST_HV_GDT_ENTRY`] | none |
//! | 0x60000 | the real IDT | none |
//! | 0x61000–0x71000 | the real LDT (hv-sim's copy of the effective LDT) | none |
//! | 0x71000 | hv-sim's TSS (TR until the guest's SetTR) | none |
//! | 0x72000 | hv-sim's copy of the guest's TSS (TR after SetTR) | none |
//! | 0xC0000–0x100000 | option-ROM window: the VMI ROM at 0xC0000, zeros after | read, execute |
//!
//! Above 1 MiB the pages are the guest's (read/write); only those may be
//! named in a call (anything else gets -EFAULT).

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::escape_audit::{self, Escape};
use super::personality::{PortAction, PortWrite};
use super::regs::Vcpu;
use super::xen::FinalSegments;
use super::{BootReport, Config, Crash, KvmError, PortError, layout, ports};
use crate::vmi::abi::call;
use crate::vmi::abi::port::{PSEUDO_GET_RELOC, PSEUDO_INIT};
use crate::vmi::{
    EffectiveState, GuestKind, GuestMemory, GuestView, RomBuilder, VmiEvent, VmiHypervisor,
    VmiTrace, abi,
};

/// CPUID 0x4000_0000 signature (VMware's).
pub const CPUID_SIGNATURE: [u8; 12] = *b"VMwareVMware";
/// Where hv-sim places its VMI ROM: the first slot the probe scans.
pub const ROM_BASE: u64 = abi::scan::START;
pub use super::layout::ring3::{
    FIRST_HV_GDT_ENTRY, HV_TSS, HV_TSS_SELECTOR, MAX_PTS, PT_BASE, REAL_GDT, REAL_GDT_ENTRIES,
    REAL_IDT, REAL_LDT, RESERVED_PAGES,
};
/// hv-sim's copy of the guest's TSS (what TR points at after SetTR).
pub const TSS_COPY: u64 = layout::ring3::OWN_PAGE;
/// hv-sim's ring-3 64-bit code segment: the guest kernel's CS.
pub const VMI_KERNEL_CS: u16 = layout::ring3::KERNEL_CS;
/// hv-sim's ring-3 flat data segment: the guest kernel's SS.
pub const VMI_KERNEL_SS: u16 = layout::ring3::KERNEL_SS;
/// Value left in rcx, rsi, rdi and r8–r11 after a ROM call (SysV lets the
/// callee clobber them; a kernel that relied on them would see this).
pub const CLOBBER: u64 = 0xdead_0000_c0de_0000;

use layout::TSS_BUSY as BUSY;

/// The guest's RAM as the VMI personality reads and writes it: guest
/// virtual = guest physical, and only the guest's pages (1 MiB up to the
/// end of RAM) — a pointer to hv-sim's pages or the ROM gets -EFAULT.
pub struct KvmGuestRam {
    mem: GuestMemoryMmap,
    end: u64,
}

impl KvmGuestRam {
    fn ok(&self, addr: u64, len: usize) -> bool {
        addr >= layout::KERNEL_MIN && addr.checked_add(len as u64).is_some_and(|e| e <= self.end)
    }
}

impl GuestMemory for KvmGuestRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.ok(addr, buf.len()) && self.mem.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.ok(addr, data.len()) && self.mem.write_slice(data, GuestAddress(addr)).is_ok()
    }
}

/// The tables the vCPU ran on at the guest's exit, as hv-sim installed
/// them (read back with `KVM_GET_SREGS` and from hv-sim's pages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealTables {
    /// GDTR (base, limit).
    pub gdtr: (u64, u16),
    /// IDTR (base, limit).
    pub idtr: (u64, u16),
    /// TR (selector, base, limit).
    pub tr: (u16, u64, u32),
    /// LDTR (selector, base, limit); selector 0 = none.
    pub ldtr: (u16, u64, u32),
    /// The real GDT's entries below hv-sim's reserved ones that were ever
    /// written (the guest's, fixed up, and the personality's reserved two).
    pub gdt: Vec<u64>,
    /// hv-sim's reserved entries at the top.
    pub hv_gdt: Vec<u64>,
    /// The real IDT's gates (low, high).
    pub idt: Vec<(u64, u64)>,
    /// rsp0 of the TSS TR points at.
    pub tss_rsp0: u64,
}

/// What a VMI-style boot did.
#[derive(Clone, Debug)]
pub struct VmiBootReport {
    /// The guest's text, checks and exits.
    pub boot: BootReport,
    /// ROM calls the guest made through the stubs (VMI_Init and
    /// GetRelocationInfo included): each one a port exit hv-sim handled.
    pub rom_calls: u64,
    /// Every ROM call as the personality ran it.
    pub trace: VmiTrace,
    /// The guest's view at the end.
    pub guest: GuestView,
    /// The effective state at the end.
    pub effective: EffectiveState,
    /// Times the real tables were rebuilt and installed.
    pub installs: u64,
    /// The vCPU's segments at the guest's exit.
    pub final_segments: Option<FinalSegments>,
    /// The real tables at the guest's exit.
    pub real: Option<RealTables>,
    /// Times the tables the vCPU runs on were audited for a way above the
    /// guest's ring ([`super::escape_audit`]): after every install.
    pub audits: u64,
    /// What the audits found (at most [`MAX_ESCAPES`]); empty when the
    /// personality held.
    pub escapes: Vec<Escape>,
}

/// Most escapes a boot records.
pub const MAX_ESCAPES: usize = 16;

impl VmiBootReport {
    /// ROM calls by kind (VMI_Init, GetRelocationInfo, then each call's
    /// VMI name).
    pub fn calls_by_name(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for e in &self.trace.events {
            let name = match e {
                VmiEvent::Init => "VMI_Init",
                VmiEvent::Reloc { .. } => "GetRelocationInfo",
                VmiEvent::Call { nr, .. } => call::name(*nr).unwrap_or("undefined"),
                _ => continue,
            };
            *m.entry(name).or_default() += 1;
        }
        m
    }

    /// The refused calls: (name, result, reason).
    pub fn rejected(&self) -> Vec<(&'static str, i64, String)> {
        self.trace
            .events
            .iter()
            .filter_map(|e| match e {
                VmiEvent::Call {
                    nr, result, reason, ..
                } if *result < 0 => Some((
                    call::name(*nr).unwrap_or("undefined"),
                    *result,
                    reason.clone().unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Calls deferred in lazy mode, and the flushes that applied them.
    pub fn lazy_batches(&self) -> (usize, usize) {
        let mut deferred = 0;
        let mut flushes = 0;
        for e in &self.trace.events {
            match e {
                VmiEvent::Call { deferred: true, .. } => deferred += 1,
                VmiEvent::Flush { applied } if !applied.is_empty() => flushes += 1,
                _ => {}
            }
        }
        (deferred, flushes)
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        self.boot.summary_line("vmi", self.rom_calls)
    }
}

/// Boot `image` with the VMI-style personality and its correct ROM.
pub fn boot_vmi(image: &[u8], cfg: &Config) -> Result<VmiBootReport, KvmError> {
    boot_vmi_with_rom(image, cfg, &RomBuilder::default())
}

/// Boot `image` with the VMI-style personality and the ROM `rom` at
/// [`ROM_BASE`] (a [`RomBuilder`] broken on purpose tests the kernel's
/// probe on a real vCPU).
pub fn boot_vmi_with_rom(
    image: &[u8],
    cfg: &Config,
    rom: &RomBuilder,
) -> Result<VmiBootReport, KvmError> {
    let (boot, o) = super::personality::launch_ring3(
        "VMI",
        image,
        cfg,
        |entry, _| Ok((entry, super::Setup::Vmi(rom.clone()))),
        |o| match o {
            super::Outcome::Vmi(o) => Some(*o),
            _ => None,
        },
    )?;
    Ok(VmiBootReport {
        boot,
        rom_calls: o.rom_calls,
        trace: o.trace,
        guest: o.guest,
        effective: o.effective,
        installs: o.installs,
        final_segments: o.final_segments,
        real: o.real,
        audits: o.audits,
        escapes: o.escapes,
    })
}

/// What the personality did, handed back with the boot report.
pub(crate) struct VmiOutcome {
    rom_calls: u64,
    trace: VmiTrace,
    guest: GuestView,
    effective: EffectiveState,
    installs: u64,
    final_segments: Option<FinalSegments>,
    real: Option<RealTables>,
    audits: u64,
    escapes: Vec<Escape>,
}

/// The personality's state during a boot.
pub(crate) struct VmiGuest {
    hv: VmiHypervisor<KvmGuestRam>,
    mem: GuestMemoryMmap,
    rom_calls: u64,
    installs: u64,
    /// The effective state last installed.
    last: EffectiveState,
    /// Real GDT entries (below hv-sim's) written so far.
    gdt_written: usize,
    /// Gates written to the real IDT.
    idt_written: usize,
    final_segments: Option<FinalSegments>,
    real: Option<RealTables>,
    audits: u64,
    escapes: Vec<Escape>,
}

impl VmiGuest {
    /// Lay out hv-sim's pages, place the ROM, create the personality.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        cfg: &Config,
        rom: &RomBuilder,
    ) -> Result<VmiGuest, KvmError> {
        // The option-ROM window read-only, as ROM is; the TSS copy
        // supervisor-only.
        layout::write_hv_ring3(mem, cfg.mem_size, false)?;
        mem.write_slice(&rom.build(), GuestAddress(ROM_BASE))
            .map_err(KvmError::guest_write("the VMI ROM", ROM_BASE))?;
        let ram = KvmGuestRam {
            mem: mem.clone(),
            end: cfg.mem_size as u64,
        };
        let hv = VmiHypervisor::with_rom(GuestKind::Vmi64, ram, ROM_BASE, rom)?;
        hv.set_effective_bases(REAL_GDT, REAL_IDT);
        Ok(VmiGuest {
            hv,
            mem: mem.clone(),
            rom_calls: 0,
            installs: 0,
            last: EffectiveState::default(),
            gdt_written: 0,
            idt_written: 0,
            final_segments: None,
            real: None,
            audits: 0,
            escapes: Vec::new(),
        })
    }

    /// The entry state: ring 3 on hv-sim's flat selectors, IOPL 3, hv-sim's
    /// GDT/IDT/TR, no LDT.
    pub(crate) fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        regs.rsi = 0;
        layout::hv_ring3_entry(regs, sregs);
    }

    /// A ROM stub's port write: run the call, write the result, make its
    /// effects real. `Err` = the guest broke the ROM protocol.
    pub(crate) fn rom_call(
        &mut self,
        vcpu: &mut Vcpu<'_>,
        data: u32,
        len: usize,
    ) -> Result<(), PortError> {
        let mut regs = vcpu.regs()?;
        // The stub starts with the 5-byte `mov eax, imm32`, then the 2-byte
        // `out`. rip is at the `out` where KVM completes it on the next
        // KVM_RUN (hardware virtualization), or already past it (PVM, which
        // emulated it).
        let after = regs.rip.wrapping_sub(7);
        let entry = if self.hv.decode_entry(after) == Ok(data) {
            after
        } else {
            regs.rip.wrapping_sub(5)
        };
        let from_stub = self.hv.decode_entry(entry);
        if len != 4 || regs.rax != u64::from(data) || from_stub != Ok(data) {
            let crash = Crash::NotFromStub {
                name: "VMI",
                port: ports::VMI,
                len,
                data,
                rax: regs.rax,
                rip: regs.rip,
                owner: "the ROM's call stubs",
                why: Some(match from_stub {
                    Ok(v) => format!("the stub there exits with {v:#x}"),
                    Err(e) => e.to_string(),
                }),
            };
            self.hv.bad_entry(entry, crash.to_string());
            return Err(crash.into());
        }
        self.rom_calls += 1;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.rcx];
        for r in [
            &mut regs.rcx,
            &mut regs.rsi,
            &mut regs.rdi,
            &mut regs.r8,
            &mut regs.r9,
            &mut regs.r10,
            &mut regs.r11,
        ] {
            *r = CLOBBER;
        }
        match data {
            PSEUDO_INIT => {
                regs.rax = self.hv.init();
                regs.rdx = CLOBBER;
            }
            PSEUDO_GET_RELOC => {
                let (eip, typ) = self.hv.relocation(args[0] as u32);
                regs.rax = eip;
                regs.rdx = u64::from(typ);
            }
            nr => {
                regs.rax = self.hv.vmi_call(nr, args);
                regs.rdx = CLOBBER;
            }
        }
        vcpu.set_regs(&regs);
        // What the vCPU is about to run on must satisfy the personality's
        // invariants (a violation is hv-sim's bug, reported as such).
        self.hv
            .check_invariants()
            .map_err(|source| PortError::VmiInvariant { call: data, source })?;
        self.install(vcpu)
    }

    fn write(&self, addr: u64, v: u64) -> Result<(), PortError> {
        self.mem
            .write_obj(v, GuestAddress(addr))
            .map_err(PortError::hv_memory("writing", "hv-sim's page", addr))
    }

    fn read(&self, addr: u64) -> Result<u64, PortError> {
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(PortError::hv_memory("reading", "hv-sim's page", addr))
    }

    /// Make the effective state real on the vCPU (nothing to do while it is
    /// unchanged, e.g. during a lazy batch).
    fn install(&mut self, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        let eff = self.hv.effective();
        if eff == self.last {
            return Ok(());
        }
        let mut sregs = vcpu.sregs()?;

        // GDT: the effective entries (the guest's fixed up, then the
        // personality's reserved), with TR's and LDTR's descriptors pointing
        // at hv-sim's copies.
        let mut gdt = eff.gdt.clone();
        if gdt.len() > FIRST_HV_GDT_ENTRY as usize {
            return Err(PortError::GdtOverflow {
                entries: gdt.len(),
                first: FIRST_HV_GDT_ENTRY,
            });
        }
        let tr = if eff.tr.is_null() {
            layout::system_segment(HV_TSS_SELECTOR, HV_TSS, 0x67, 0xb)
        } else {
            let limit = eff.tss_limit.min(0xfff);
            if eff.tr != self.last.tr || eff.tss_base != self.last.tss_base {
                // A fresh copy of the guest's TSS.
                let mut page = vec![0u8; limit as usize + 1];
                self.mem
                    .read_slice(&mut page, GuestAddress(eff.tss_base))
                    .map_err(PortError::hv_memory(
                        "copying",
                        "the guest's TSS",
                        eff.tss_base,
                    ))?;
                self.mem
                    .write_slice(&page, GuestAddress(TSS_COPY))
                    .map_err(PortError::hv_memory("writing", "the TSS copy", TSS_COPY))?;
            }
            // TSS.rsp0 at offset 4.
            self.mem
                .write_obj(eff.sp0, GuestAddress(TSS_COPY + 4))
                .map_err(PortError::hv_memory(
                    "writing",
                    "the TSS copy",
                    TSS_COPY + 4,
                ))?;
            let sd = pvops::SystemDescriptor::tss(TSS_COPY, limit)?;
            let i = eff.tr.index() as usize;
            if i + 1 < gdt.len() {
                gdt[i] = sd.low | BUSY;
                gdt[i + 1] = sd.high;
            }
            layout::system_segment(eff.tr.bits(), TSS_COPY, limit, 0xb)
        };
        let ldt = if eff.ldtr.is_null() || eff.ldt.is_empty() {
            kvm_segment {
                unusable: 1,
                ..Default::default()
            }
        } else {
            if eff.ldt != self.last.ldt {
                for (i, d) in eff.ldt.iter().enumerate() {
                    self.write(REAL_LDT + i as u64 * 8, *d)?;
                }
            }
            let n = eff.ldt.len() as u32;
            let sd = pvops::SystemDescriptor::ldt(REAL_LDT, n)?;
            let i = eff.ldtr.index() as usize;
            if i + 1 < gdt.len() {
                gdt[i] = sd.low;
                gdt[i + 1] = sd.high;
            }
            layout::system_segment(eff.ldtr.bits(), REAL_LDT, n * 8 - 1, 0x2)
        };
        for i in 0..gdt.len().max(self.gdt_written) {
            let d = gdt.get(i).copied().unwrap_or(0);
            let at = REAL_GDT + i as u64 * 8;
            if self.read(at)? != d {
                self.write(at, d)?;
            }
        }
        self.gdt_written = self.gdt_written.max(gdt.len());

        // IDT: the effective gates.
        for v in 0..eff.idt.len().max(self.idt_written) {
            let (lo, hi) = eff.idt.get(v).copied().unwrap_or((0, 0));
            self.write(REAL_IDT + v as u64 * 16, lo)?;
            self.write(REAL_IDT + v as u64 * 16 + 8, hi)?;
        }
        self.idt_written = self.idt_written.max(eff.idt.len());

        sregs.gdt.base = REAL_GDT;
        sregs.gdt.limit = (REAL_GDT_ENTRIES * 8 - 1) as u16;
        sregs.idt.base = REAL_IDT;
        sregs.idt.limit = if eff.idt.is_empty() {
            256 * 16 - 1
        } else {
            (eff.idt.len() * 16 - 1) as u16
        };
        sregs.tr = tr;
        sregs.ldt = ldt;
        vcpu.set_sregs(&sregs);
        self.installs += 1;
        self.last = eff;
        self.audit(&sregs)
    }

    /// Audit the tables `sregs` names, as the vCPU will read them, for a
    /// way above ring 3 ([`super::escape_audit`]); record what it finds.
    fn audit(&mut self, s: &kvm_sregs) -> Result<(), PortError> {
        let quads = |base: u64, limit: u32| -> Result<Vec<u64>, PortError> {
            let mut bytes = vec![0u8; (limit as usize + 1) & !7];
            self.mem
                .read_slice(&mut bytes, GuestAddress(base))
                .map_err(PortError::hv_memory("auditing", "the real tables", base))?;
            Ok(bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect())
        };
        let gdt = quads(s.gdt.base, u32::from(s.gdt.limit))?;
        let ldt = if s.ldt.unusable != 0 {
            Vec::new()
        } else {
            quads(s.ldt.base, s.ldt.limit)?
        };
        let idt: Vec<(u64, u64)> = quads(s.idt.base, u32::from(s.idt.limit))?
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect();
        let found = escape_audit::RealTables {
            gdt: &gdt,
            ldt: &ldt,
            idt: &idt,
        }
        .escapes(3, MAX_ESCAPES);
        self.audits += 1;
        for e in found {
            if self.escapes.len() < MAX_ESCAPES && !self.escapes.contains(&e) {
                self.escapes.push(e);
            }
        }
        Ok(())
    }

    /// The guest wrote its exit status: record the vCPU's segments and the
    /// real tables.
    pub(crate) fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        let Ok(s) = vcpu.sregs() else {
            return;
        };
        self.final_segments = Some(FinalSegments::of(&s));
        let gdt = (0..self.gdt_written)
            .map(|i| self.read(REAL_GDT + i as u64 * 8).unwrap_or(0))
            .collect();
        let hv_gdt = (FIRST_HV_GDT_ENTRY..REAL_GDT_ENTRIES)
            .map(|i| self.read(REAL_GDT + u64::from(i) * 8).unwrap_or(0))
            .collect();
        let idt = (0..self.idt_written)
            .map(|v| {
                let a = REAL_IDT + v as u64 * 16;
                (self.read(a).unwrap_or(0), self.read(a + 8).unwrap_or(0))
            })
            .collect();
        let tss_rsp0 = self
            .mem
            .read_obj::<u64>(GuestAddress(s.tr.base + 4))
            .unwrap_or(0);
        self.real = Some(RealTables {
            gdtr: (s.gdt.base, s.gdt.limit),
            idtr: (s.idt.base, s.idt.limit),
            tr: (s.tr.selector, s.tr.base, s.tr.limit),
            ldtr: if s.ldt.unusable != 0 {
                (0, 0, 0)
            } else {
                (s.ldt.selector, s.ldt.base, s.ldt.limit)
            },
            gdt,
            hv_gdt,
            idt,
            tss_rsp0,
        });
    }

    /// The outcome, once the guest has stopped.
    pub(crate) fn finish(self) -> VmiOutcome {
        VmiOutcome {
            rom_calls: self.rom_calls,
            trace: self.hv.trace(),
            guest: self.hv.guest(),
            effective: self.hv.effective(),
            installs: self.installs,
            final_segments: self.final_segments,
            real: self.real,
            audits: self.audits,
            escapes: self.escapes,
        }
    }
}

impl super::personality::Personality for VmiGuest {
    fn cpuid_signature(&self, _: &Config) -> Option<[u8; 12]> {
        Some(CPUID_SIGNATURE)
    }

    fn entry_state(&mut self, regs: &mut kvm_regs, sregs: &mut kvm_sregs) {
        VmiGuest::entry_state(self, regs, sregs)
    }

    fn port(&mut self, w: PortWrite<'_, '_>) -> Option<Result<PortAction, PortError>> {
        (w.port == ports::VMI).then(|| {
            self.rom_call(w.vcpu, w.data, w.len)
                .map(|()| PortAction::Handled)
        })
    }

    fn at_exit(&mut self, vcpu: &mut Vcpu<'_>) {
        VmiGuest::at_exit(self, vcpu)
    }

    fn finish(self: Box<Self>) -> Option<super::Outcome> {
        Some(super::Outcome::Vmi(Box::new(VmiGuest::finish(*self))))
    }
}
