//! Write-protect mode: the real tables kept current by trapping the
//! guest's stores into its descriptor-table pages (the second seed).
//!
//! With [`TrapMode::WriteProtect`] hv-sim clears W (and sets the
//! software-available bit [`PTE_HV_WP`], so that its own emulated accesses
//! still see a writable page) in the 4 KiB PTEs of every guest page that
//! holds part of the guest's GDT, IDT or LDT, as the virtual registers
//! name them; it re-protects whenever an emulated `lgdt`, `lidt`, `lldt`
//! or `ltr` changes them. Vector 14 of the real IDT goes to a second stub
//! ([`PF_STUB`]). On a write fault (error code P|W) to a protected page
//! hv-sim fetches and decodes the faulting instruction through CS and the
//! guest's paging ([`crate::emulate::fetch`]), computes the store's
//! address (`super::store`: `mov`, and the read-modify-write `add`, `sub`,
//! `and`, `or`, `xor`, `inc`, `dec` a `jiffies++` compiles to, 1–8 bytes,
//! flags as the CPU sets them; anything else stops the guest with an error
//! naming it), checks that the store covers CR2, re-fetches the
//! bytes with writers held off and compares them (the self-modifying-code
//! guard of [`crate::emulate::emulate`]: a change means nothing is done and
//! the guest re-executes what is there), then performs it. Every slot of
//! the GDT, IDT or LDT it touches is rebuilt in the real table at once by
//! the rules the shadowing build uses (code/data descriptors compressed to
//! DPL 3, TR/LDTR slots keep hv-sim's descriptors, gates DPL 3 with RPL 3
//! selectors): the real tables are never stale, so the rebuild at every
//! trap is not needed. Each such trap is **true** sharing if the store
//! touched a descriptor slot, **false** sharing if it only touched other
//! data on a protected page. Any other #PF (not present, a read, outside
//! the protected pages) goes to the guest's own handler with its CR2 and
//! error code (U cleared: the guest believes it runs in ring 0). So does
//! the #PF of a store that continues from a protected page into one the
//! guest cannot write (not present, read-only): CR2 the first byte of that
//! page, the error code of a write (P if present), nothing written to
//! either page, RIP at the store ([`WpReport::split_faults`]; SDM vol. 3A
//! 4.7 and 6.15: the faulting instruction is not executed, and a CPU
//! checks both pages of a split store before either part is written).
//! PVM reports such a store's write-protect fault on the first page
//! first, so this path is taken there (the workload's split-store check;
//! without protection the CPU's own #PF gives the kernel the same).
//!
//! PTE changes are made visible by re-registering guest memory
//! (`KVM_SET_USER_MEMORY_REGION` with size 0, then again): KVM drops every
//! mapping it derived from the old PTEs, under shadow paging (PVM) as with
//! nested paging; a protection change is rare (a table load).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_sregs;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::{Capped, Crash, PortError};
use super::cpu::TrapCpu;
use super::store::Store;
use super::{PagingMemory, TRAP_TEXT, TrapGuest};
use crate::emulate::profile::{Phase, Phases, Profiled, enter, measure};
use crate::emulate::{Access, CpuState, Exception, GuestMemory, Mode, PageFault, fetch};
use crate::kvm::layout::{PTE_P, PTE_RW, PTE_U};
use crate::kvm::ports;
use crate::kvm::regs::Vcpu;

/// How the trap-and-emulate personality keeps the real tables current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrapMode {
    /// Rebuild them from the guest's at every trap (see the module docs of
    /// [`super`], "Shadowing").
    #[default]
    Shadow,
    /// Write-protect the guest's table pages and apply each store as it
    /// happens (this module).
    WriteProtect,
}

/// A PTE software-available bit: W cleared by hv-sim, not by the guest.
pub const PTE_HV_WP: u64 = 1 << 9;
/// hv-sim's #PF entry: `push rax; mov eax, 14; out 0xE5, eax; ud2`, at
/// [`PF_STUB_AT`].
pub const PF_STUB: [u8; 10] = [0x50, 0xb8, 14, 0, 0, 0, 0xe7, ports::TRAP as u8, 0x0f, 0x0b];
/// Where [`PF_STUB`] lies in the stub page.
pub const PF_STUB_AT: u64 = TRAP_TEXT + 16;
/// RIP after its `out`.
pub const PF_STUB_EXIT_RIP: u64 = PF_STUB_AT + 8;
/// Most pages protected at once: a 64 KiB GDT and LDT and a 4 KiB IDT,
/// each possibly straddling one more page.
const MAX_PROTECTED: usize = 16 + 1 + 16 + 1 + 1 + 1;

/// What write-protect mode counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WpReport {
    /// Write faults on protected pages whose store touched a descriptor
    /// slot.
    pub true_traps: u64,
    /// Write faults on protected pages whose store touched only other data.
    pub false_traps: u64,
    /// hv-sim's handling time for true-sharing traps, summed.
    pub true_time: Duration,
    /// hv-sim's handling time for false-sharing traps, summed.
    pub false_time: Duration,
    /// Page faults delivered to the guest's own handler (those of
    /// [`split_faults`](WpReport::split_faults) included).
    pub delivered: u64,
    /// Stores into a protected page that continue into a page the guest
    /// cannot write (not present, read-only): the #PF injected for the
    /// second page, nothing written (the first 4096 kept, all counted).
    pub split_faults: Capped<PageFault>,
    /// Traps whose instruction bytes changed before the store was made.
    pub restarts: u64,
    /// Times the protected set changed (each a memory re-registration).
    pub reprotects: u64,
    /// The linear pages protected at the guest's exit.
    pub protected: Vec<u64>,
    /// Descriptor slots that stores touched (summed over the true-sharing
    /// traps; a slot rewritten with the same value counts too).
    pub slots_updated: u64,
    /// Where the store emulations' time went (commit: the real-table
    /// update).
    pub phases: Phases,
    /// Per trap, the first 4096: (hv-sim's handling time, the
    /// store emulation's phases), for medians that a preempted trap does
    /// not skew.
    pub samples: Vec<(Duration, Phases)>,
}

/// Most per-trap samples kept.
const MAX_SAMPLES: usize = 4096;

/// What [`TrapGuest::emulate_store`] did.
enum StoreDone {
    /// The instruction's bytes changed: nothing done (re-execute).
    Changed,
    /// The store continues into a page the guest cannot write: nothing
    /// written, this #PF for the guest.
    Faulted(PageFault),
    /// Stored: descriptor slots touched, instruction length.
    Stored(u64, usize),
}

/// Write-protect mode's state.
#[derive(Default)]
pub(super) struct Wp {
    /// Protected linear page → the guest-physical address of its PTE.
    pages: BTreeMap<u64, u64>,
    pub(super) report: WpReport,
}

/// The guest-physical address of the 4 KiB PTE that maps `va` (None: not
/// mapped by a 4 KiB PTE, or out of RAM).
fn pte_gpa(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
    let mut table = cr3 & 0x000f_ffff_ffff_f000;
    for level in (1..4u32).rev() {
        let e: u64 = mem
            .read_obj(GuestAddress(table + ((va >> (12 + 9 * level)) & 511) * 8))
            .ok()?;
        if e & PTE_P == 0 || e & (1 << 7) != 0 {
            return None;
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    Some(table + ((va >> 12) & 511) * 8)
}

/// Can the guest write all of `[addr, addr + n)`? Else the #PF for the
/// first page that fails (CR2 its first byte in the range; the error code
/// of a supervisor write: the guest believes it runs in ring 0).
fn writable(mem: &PagingMemory<'_>, addr: u64, n: usize) -> Result<(), PageFault> {
    let mut va = addr;
    loop {
        mem.translate(va, Access::Write)?;
        let next = (va | 0xfff).wrapping_add(1);
        if next.wrapping_sub(addr) >= n as u64 {
            return Ok(());
        }
        va = next;
    }
}

/// The linear byte ranges of the guest's tables: (start, length).
fn table_ranges(g: &TrapGuest) -> [(u64, u64); 3] {
    let dt = g.dt;
    let gdt = (u64::from(dt.gdtr.limit) + 1).min(u64::from(super::FIRST_HV_GDT_ENTRY) * 8);
    let ldt = if dt.ldtr.is_null() {
        0
    } else {
        u64::from(dt.ldtr_limit) + 1
    };
    [
        (dt.gdtr.base, gdt),
        (dt.idtr.base, (u64::from(dt.idtr.limit) + 1).min(4096)),
        (dt.ldtr_base, ldt.min(super::REAL_LDT_ENTRIES * 8)),
    ]
}

impl TrapGuest {
    /// Protect exactly the pages of the guest's current tables.
    pub(super) fn reprotect(&mut self, vm: &VmFd, cr3: u64) -> Result<(), PortError> {
        let Some(wp) = self.wp.as_ref() else {
            return Ok(());
        };
        let mut want = BTreeMap::new();
        for (start, len) in table_ranges(self) {
            if len == 0 {
                continue;
            }
            let first = start & !0xfff;
            let last = start.wrapping_add(len - 1) & !0xfff;
            let mut p = first;
            while want.len() < MAX_PROTECTED {
                if let Some(pte) = pte_gpa(&self.mem, cr3, p) {
                    let e: u64 = self.mem.read_obj(GuestAddress(pte)).unwrap_or(0);
                    // Only the guest's own writable pages.
                    if e & (PTE_P | PTE_U) == PTE_P | PTE_U && e & (PTE_RW | PTE_HV_WP) != 0 {
                        want.insert(p, pte);
                    }
                }
                if p == last {
                    break;
                }
                p = p.wrapping_add(0x1000);
            }
        }
        if want == wp.pages {
            return Ok(());
        }
        let set = |pte: u64, protect: bool| -> Result<(), PortError> {
            let e: u64 = self.mem.read_obj(GuestAddress(pte)).unwrap_or(0);
            let e = if protect {
                (e & !PTE_RW) | PTE_HV_WP
            } else {
                (e | PTE_RW) & !PTE_HV_WP
            };
            self.mem
                .write_obj(e, GuestAddress(pte))
                .map_err(PortError::hv_memory("writing", "the guest's PTE", pte))
        };
        for (p, pte) in &wp.pages {
            if !want.contains_key(p) {
                set(*pte, false)?;
            }
        }
        for (p, pte) in &want {
            if !wp.pages.contains_key(p) {
                set(*pte, true)?;
            }
        }
        // SAFETY: `self.mem` is a clone (the same mapping) of the RAM the
        // runner's Machine registered as `vm`'s slot 0; the Machine keeps
        // it alive until after the VM is dropped.
        unsafe { crate::kvm::reload_slot(vm, &self.mem) }?;
        if let Some(wp) = self.wp.as_mut() {
            wp.report.reprotects += 1;
            wp.report.protected = want.keys().copied().collect();
            wp.pages = want;
        }
        Ok(())
    }

    /// hv-sim's #PF entry wrote the trap port.
    pub(super) fn page_fault(&mut self, vcpu: &mut Vcpu<'_>) -> Result<(), PortError> {
        let t0 = Instant::now();
        let regs = vcpu.regs()?;
        if regs.rax != 14 || regs.rip != PF_STUB_EXIT_RIP || self.wp.is_none() {
            return Err(super::stub_misuse(4, 14, &regs, "hv-sim's #PF entry"));
        }
        let mut sregs = vcpu.sregs()?;
        let gm = self.mem.clone();
        let mem = PagingMemory::new(&gm, sregs.cr3);
        let frame = super::StubFrame::read(&mem, regs.rsp, "reading the #PF frame")?;
        let super::StubFrame {
            saved_rax,
            error_code,
            rip,
            ..
        } = frame;
        let cr2 = sregs.cr2;
        let protected = self
            .wp
            .as_ref()
            .is_some_and(|wp| wp.pages.contains_key(&(cr2 & !0xfff)));
        if error_code & 3 != 3 || !protected {
            if let Some(wp) = self.wp.as_mut() {
                wp.report.delivered += 1;
            }
            let pf = crate::emulate::PageFault {
                addr: cr2,
                error_code: (error_code & !4) as u32,
            };
            let exc = crate::emulate::Exception::Pf(pf);
            if self.deliver(vcpu, &mem, regs, &mut sregs, saved_rax, exc)? {
                vcpu.set_sregs(&sregs);
            }
            return Ok(());
        }
        let mut cpu = frame.cpu(regs, &sregs, self.dt);
        let (done, phases) = measure(|| self.emulate_store(&mut cpu, &sregs, &mem, cr2));
        let (touched, len) = match done? {
            StoreDone::Stored(touched, len) => (touched, len),
            StoreDone::Changed => {
                if let Some(wp) = self.wp.as_mut() {
                    wp.report.restarts += 1;
                }
                vcpu.set_regs(&cpu.regs);
                return Ok(());
            }
            StoreDone::Faulted(pf) => {
                // As the CPU would: #PF for the second page, the
                // instruction not executed (SDM vol. 3A 6.15).
                if let Some(wp) = self.wp.as_mut() {
                    wp.report.delivered += 1;
                    wp.report.split_faults.push(pf);
                }
                if self.deliver(vcpu, &mem, regs, &mut sregs, saved_rax, Exception::Pf(pf))? {
                    vcpu.set_sregs(&sregs);
                }
                return Ok(());
            }
        };
        cpu.regs.rip = rip.wrapping_add(len as u64);
        vcpu.set_regs(&cpu.regs);
        let dt = t0.elapsed();
        if let Some(wp) = self.wp.as_mut() {
            wp.report.phases.add(&phases);
            if wp.report.samples.len() < MAX_SAMPLES {
                wp.report.samples.push((dt, phases));
            }
            if touched > 0 {
                wp.report.true_traps += 1;
                wp.report.true_time += dt;
                wp.report.slots_updated += touched;
            } else {
                wp.report.false_traps += 1;
                wp.report.false_time += dt;
            }
        }
        Ok(())
    }

    /// Fetch, decode and perform the store at the faulting RIP; update the
    /// real slots it touched.
    ///
    /// A store that continues past the protected page into one the guest
    /// cannot write faults as the CPU faults it: #PF for the first byte of
    /// the second page that fails, the error code of a write (also for a
    /// read-modify-write), and nothing written to either page. The SDM
    /// (vol. 3A 6.15, #PF, "Program State Change") says the faulting
    /// instruction is not executed; a CPU translates both pages of a split
    /// store before either part reaches memory. So every page is checked
    /// for the write before the operand is read or written.
    fn emulate_store(
        &mut self,
        cpu: &mut TrapCpu,
        sregs: &kvm_sregs,
        raw: &PagingMemory<'_>,
        cr2: u64,
    ) -> Result<StoreDone, PortError> {
        let mem = &Profiled(raw);
        let mode = Mode::of(cpu);
        let bytes = {
            let _p = enter(Phase::Fetch);
            fetch::fetch(cpu, mem, mode)
        };
        let p = enter(Phase::Decode);
        let i = fetch::decode(&bytes, cpu.rip(), mode)
            .map_err(|_| Crash::WpUndecodable { rip: cpu.rip() })?;
        let st = Store::of(&i, &cpu.regs, sregs).ok_or_else(|| Crash::WpUnsupported {
            mnemonic: format!("{:?}", i.mnemonic()),
            rip: cpu.rip(),
        })?;
        drop(p);
        let (addr, n) = (st.addr, st.size);
        if !(addr..addr.wrapping_add(n as u64)).contains(&cr2) {
            return Err(Crash::WpMismatch {
                mnemonic: format!("{:?}", i.mnemonic()),
                rip: cpu.rip(),
                size: n,
                addr,
                cr2,
            }
            .into());
        }
        let len = i.len();
        let at = fetch::byte_linear(cpu, mode, 0).unwrap_or(cpu.rip());
        let stored = mem.without_writers(at, len, || {
            let p = enter(Phase::Recheck);
            let again = fetch::fetch(cpu, mem, mode);
            if again.n < len || again.bytes[..len] != bytes.bytes[..len] {
                return Ok::<_, PortError>(StoreDone::Changed);
            }
            drop(p);
            let _p = enter(Phase::Execute);
            if let Err(pf) = writable(raw, addr, n) {
                return Ok(StoreDone::Faulted(pf));
            }
            let mut old = [0u8; 8];
            mem.read(addr, &mut old[..n], Access::Read)
                .map_err(PortError::guest_access("reading the operand", addr))?;
            let (new, rflags) = st.apply(u64::from_le_bytes(old), cpu.regs.rflags);
            mem.write(addr, &new.to_le_bytes()[..n], Access::Write)
                .map_err(PortError::guest_access("performing the store", addr))?;
            cpu.regs.rflags = rflags;
            Ok(StoreDone::Stored(0, len))
        })?;
        if !matches!(stored, StoreDone::Stored(..)) {
            return Ok(stored);
        }
        let _p = enter(Phase::Commit);
        Ok(StoreDone::Stored(
            self.update_slots(addr, n as u64, raw)?,
            len,
        ))
    }

    /// Rebuild the real slots of every table that `[addr, addr + n)`
    /// touches; how many.
    fn update_slots(
        &mut self,
        addr: u64,
        n: u64,
        mem: &PagingMemory<'_>,
    ) -> Result<u64, PortError> {
        let [gdt, idt, ldt] = table_ranges(self);
        let hits = |(base, len): (u64, u64), size: u64| {
            let lo = addr.wrapping_sub(base);
            let hi = addr.wrapping_add(n - 1).wrapping_sub(base);
            // Slots are `size` bytes; the store may start before the table.
            let first = if lo < len { lo / size } else { 0 };
            let last = if hi < len {
                hi / size
            } else {
                (len / size).max(1) - 1
            };
            (len > 0 && (lo < len || hi < len)).then_some(first..=last)
        };
        let mut touched = 0;
        if let Some(r) = hits(gdt, 8) {
            for i in r {
                touched += 1;
                self.update_gdt_slot(i, mem)?;
            }
        }
        if let Some(r) = hits(idt, 16) {
            for v in r {
                touched += 1;
                self.update_idt_slot(v, mem)?;
            }
        }
        if let Some(r) = hits(ldt, 8) {
            for i in r {
                touched += 1;
                self.update_ldt_slot(i, mem)?;
            }
        }
        Ok(touched)
    }

    fn read_guest_u64(mem: &PagingMemory<'_>, va: u64) -> u64 {
        let mut b = [0u8; 8];
        match mem.read(va, &mut b, Access::ImplicitRead) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    fn write_real(&self, gpa: u64, v: u64) -> Result<(), PortError> {
        self.mem
            .write_obj(v, GuestAddress(gpa))
            .map_err(PortError::hv_memory("writing", "hv-sim's page", gpa))
    }

    fn update_gdt_slot(&mut self, i: u64, mem: &PagingMemory<'_>) -> Result<(), PortError> {
        let idx = i as usize;
        // The TR and LDTR slots hold hv-sim's descriptors in the real GDT.
        let own = |sel: pvops::Selector| {
            !sel.is_null()
                && (idx == usize::from(sel.index()) || idx == usize::from(sel.index()) + 1)
        };
        if own(self.dt.tr) || own(self.dt.ldtr) || idx >= self.last_gdt.len() {
            return Ok(());
        }
        let d = super::compress(Self::read_guest_u64(
            mem,
            self.dt.gdtr.base.wrapping_add(i * 8),
        ));
        if self.last_gdt[idx] != d {
            self.write_real(super::REAL_GDT + i * 8, d)?;
            self.last_gdt[idx] = d;
        }
        Ok(())
    }

    fn update_idt_slot(&mut self, v: u64, mem: &PagingMemory<'_>) -> Result<(), PortError> {
        let base = self.dt.idtr.base.wrapping_add(v * 16);
        let g = super::real_gate(
            v as usize,
            Self::read_guest_u64(mem, base),
            Self::read_guest_u64(mem, base.wrapping_add(8)),
            true,
        );
        let Some(last) = self.last_idt.get_mut(v as usize) else {
            return Ok(());
        };
        if *last != g {
            *last = g;
            self.write_real(super::REAL_IDT + v * 16, g.0)?;
            self.write_real(super::REAL_IDT + v * 16 + 8, g.1)?;
        }
        Ok(())
    }

    fn update_ldt_slot(&mut self, i: u64, mem: &PagingMemory<'_>) -> Result<(), PortError> {
        let idx = i as usize;
        if self.last_ldtr.0 == 0 || idx >= self.last_ldt.len() {
            return Ok(());
        }
        let d = super::compress(Self::read_guest_u64(
            mem,
            self.dt.ldtr_base.wrapping_add(i * 8),
        ));
        if self.last_ldt[idx] != d {
            self.write_real(super::REAL_LDT + i * 8, d)?;
            self.last_ldt[idx] = d;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "wp_tests.rs"]
mod tests;
