//! The simulated VMI hypervisor: the option-ROM window, the guest's view and
//! the effective descriptor state, lazy batching and the trace.

use std::sync::{Mutex, MutexGuard};

use super::abi::{self, Reloc, call, lazy};
use super::invariants;
use super::policy::{self, GuestKind};
use super::rom::{self, ROM_SIZE, RomBuilder};
use super::trace::{VmiEvent, VmiTrace};
use pvops::{DescriptorTablePointer, Selector};

/// First guest-physical address of the modelled low memory (the option-ROM
/// window starts here).
pub const PHYS_START: u64 = abi::scan::START;
/// End of the modelled low memory (exclusive): 1 MiB.
pub const PHYS_END: u64 = 0x10_0000;
/// Where [`VmiHypervisor::new`] places the ROM.
pub const DEFAULT_ROM_BASE: u64 = 0xC8000;

/// The hypervisor's address of its effective GDT (64-bit guest): not the
/// guest's, so GetGDT must not report it.
pub const EFFECTIVE_GDT_64: u64 = 0xFFFF_8200_0000_0000;
/// The hypervisor's address of its effective IDT (64-bit guest).
pub const EFFECTIVE_IDT_64: u64 = 0xFFFF_8200_0001_0000;
/// Effective GDT of a 32-bit guest: inside the range above virtual_top.
pub const EFFECTIVE_GDT_32: u64 = 0xFFC0_0000;
/// Effective IDT of a 32-bit guest.
pub const EFFECTIVE_IDT_32: u64 = 0xFFC1_0000;
/// The hypervisor's own GDT entries, appended after the guest's in the
/// effective GDT: its ring-0 code and data segments.
pub const HV_RESERVED_GDT: [u64; 2] = [0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// EPERM.
pub const EPERM: i64 = 1;
/// EFAULT: the hypervisor could not read or write a guest pointer.
pub const EFAULT: i64 = 14;
/// EINVAL: a rule was broken (the trace names it).
pub const EINVAL: i64 = 22;
/// ENOSYS: a call this personality does not implement.
pub const ENOSYS: i64 = 38;

/// Guest linear memory as the hypervisor reads and writes it.
///
/// A safe trait: callers get bytes and a bool back, nothing they
/// dereference (an implementation must be sound for every address itself).
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `addr`; false if any is not accessible.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Write `data` at `addr`; false if any byte is not accessible.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// This process's memory: guest linear address = host pointer, for a guest
/// kernel running in-process (its tables are its own memory). Addresses
/// below 64 KiB are refused, so a small bogus pointer gets -EFAULT.
#[derive(Debug)]
pub struct HostGuestMemory {
    _private: (),
}

impl HostGuestMemory {
    /// # Safety
    /// Every pointer the guest passes in a call (tables, DTR operands) must
    /// be valid host memory for what the call reads or writes, and a table
    /// it loads (SetGDT, SetIDT, an LDT) stays valid while loaded: the
    /// in-process backend reads the table GetGDT reports.
    pub unsafe fn new() -> HostGuestMemory {
        HostGuestMemory { _private: () }
    }

    fn ok(addr: u64, len: usize) -> bool {
        addr >= 0x1_0000 && addr.checked_add(len as u64).is_some()
    }
}

impl GuestMemory for HostGuestMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if !Self::ok(addr, buf.len()) {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `new`'s contract: pointers the guest passes are valid.
            *b = unsafe { ((addr as usize + i) as *const u8).read_volatile() };
        }
        true
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        if !Self::ok(addr, data.len()) {
            return false;
        }
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as for `read`.
            unsafe { ((addr as usize + i) as *mut u8).write_volatile(b) };
        }
        true
    }
}

/// A block of simulated guest RAM at a chosen linear base (for 32-bit
/// guests and for tests that need exact addresses).
#[derive(Debug)]
pub struct RamMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl RamMemory {
    /// `size` zeroed bytes at linear address `base`.
    pub fn new(base: u64, size: usize) -> RamMemory {
        RamMemory {
            base,
            bytes: Mutex::new(vec![0; size]),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = off.checked_add(len)?;
        let size = self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len();
        (end <= size).then_some(off..end)
    }

    /// Read a u64 (0 if outside).
    pub fn read_u64(&self, addr: u64) -> u64 {
        let mut b = [0; 8];
        self.read(addr, &mut b);
        u64::from_le_bytes(b)
    }

    /// Write a u64 (ignored if outside).
    pub fn write_u64(&self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }
}

impl GuestMemory for RamMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(r) = self.range(addr, buf.len()) else {
            return false;
        };
        buf.copy_from_slice(&self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r]);
        true
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(r) = self.range(addr, data.len()) else {
            return false;
        };
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(data);
        true
    }
}

/// What the guest set, as it set it: GetGDT/GetIDT/GetLDT/GetTR answer
/// from here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    /// The DTR given to SetGDT.
    pub gdtr: Option<DescriptorTablePointer>,
    /// The DTR given to SetIDT.
    pub idtr: Option<DescriptorTablePointer>,
    /// The selector given to SetLDT.
    pub ldtr: Selector,
    /// The LDT it named: (linear base, entries).
    pub ldt: Option<(u64, u32)>,
    /// The selector given to SetTR.
    pub tr: Selector,
    /// UpdateKernelStack's (selector, sp0): the selector as passed, the
    /// kernel's stack segment (Linux: `__KERNEL_DS`) or the TSS selector
    /// (pvops-vmi's 64-bit convention).
    pub kernel_stack: Option<(Selector, u64)>,
    /// Current lazy mode (0 none, 1 MMU, 2 CPU).
    pub lazy_mode: u64,
}

/// What the CPU would really use: the hypervisor's copies after its
/// fix-ups ([`policy`]), at the hypervisor's own addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectiveState {
    /// Address of the effective GDT (the hypervisor's, not the guest's).
    pub gdt_base: u64,
    /// Effective GDT: the guest's entries fixed up, then [`HV_RESERVED_GDT`].
    pub gdt: Vec<u64>,
    /// Address of the effective IDT.
    pub idt_base: u64,
    /// Effective IDT gates (low, high); high is 0 for a 32-bit guest.
    pub idt: Vec<(u64, u64)>,
    /// Linear base of the loaded LDT (0 = none).
    pub ldt_base: u64,
    /// The selector of the loaded LDT (null = none).
    pub ldtr: Selector,
    /// Effective LDT entries.
    pub ldt: Vec<u64>,
    /// Task register.
    pub tr: Selector,
    /// TSS base.
    pub tss_base: u64,
    /// TSS limit.
    pub tss_limit: u32,
    /// Ring-0 (guest kernel) stack pointer.
    pub sp0: u64,
}

impl EffectiveState {
    /// The GDTR the CPU really holds.
    pub fn gdtr(&self) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.gdt.len() * 8).saturating_sub(1) as u16,
            base: self.gdt_base,
        }
    }

    /// The IDTR the CPU really holds (`gate_size` 16 or 8).
    pub fn idtr(&self, gate_size: u64) -> DescriptorTablePointer {
        DescriptorTablePointer {
            limit: (self.idt.len() as u64 * gate_size).saturating_sub(1) as u16,
            base: self.idt_base,
        }
    }
}

/// A change to the effective state (applied at once, or at the end of a
/// lazy batch).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Update {
    Gdt {
        base: u64,
        entries: Vec<u64>,
    },
    GdtSlot {
        index: u32,
        value: u64,
    },
    Idt {
        base: u64,
        gates: Vec<(u64, u64)>,
    },
    IdtSlot {
        vector: u32,
        gate: (u64, u64),
    },
    Ldt {
        sel: Selector,
        base: u64,
        entries: Vec<u64>,
    },
    LdtSlot {
        index: u32,
        value: u64,
    },
    Tr {
        sel: Selector,
        base: u64,
        limit: u32,
    },
    KernelStack {
        sp0: u64,
    },
}

const BUSY: u64 = 2 << 40;

/// Mark `d` busy if it is a present available TSS (S = 0, type 9); any
/// other descriptor is left alone (bit 41 is a code segment's R or a data
/// segment's W bit).
fn mark_busy(d: &mut u64) {
    if *d & (1 << 47) != 0 && (*d >> 40) & 0x1F == 0x9 {
        *d |= BUSY;
    }
}

impl Update {
    fn describe(&self) -> String {
        match self {
            Update::Gdt { base, entries } => format!(
                "effective GDT at {base:#x}: {} guest entries + {} reserved",
                entries.len(),
                HV_RESERVED_GDT.len()
            ),
            Update::GdtSlot { index, value } => {
                format!("effective GDT[{index}] = {value:#018x}")
            }
            Update::Idt { base, gates } => {
                format!("effective IDT at {base:#x}: {} gates", gates.len())
            }
            Update::IdtSlot { vector, gate } => {
                format!(
                    "effective IDT[{vector}] = {:#018x}:{:#018x}",
                    gate.1, gate.0
                )
            }
            Update::Ldt { base, entries, .. } if entries.is_empty() => {
                format!("effective LDT none (base {base:#x})")
            }
            Update::Ldt { sel, base, entries } => {
                format!(
                    "effective LDT {sel} at {base:#x}: {} entries",
                    entries.len()
                )
            }
            Update::LdtSlot { index, value } => {
                format!("effective LDT[{index}] = {value:#018x}")
            }
            Update::Tr { sel, base, limit } => {
                format!(
                    "effective TR = {sel} (TSS base {base:#x}, limit {limit:#x}), descriptor marked busy"
                )
            }
            Update::KernelStack { sp0 } => format!("effective sp0 = {sp0:#x}"),
        }
    }

    fn apply(self, e: &mut EffectiveState) {
        match self {
            Update::Gdt { base, entries } => {
                e.gdt_base = base;
                e.gdt = entries;
                e.gdt.extend_from_slice(&HV_RESERVED_GDT);
                let tr = e.tr.index() as usize;
                let guest_len = e.gdt.len() - HV_RESERVED_GDT.len();
                if !e.tr.is_null() && tr < guest_len {
                    mark_busy(&mut e.gdt[tr]);
                }
            }
            Update::GdtSlot { index, value } => {
                let guest_len = e.gdt.len().saturating_sub(HV_RESERVED_GDT.len());
                if (index as usize) < guest_len {
                    e.gdt[index as usize] = value;
                }
            }
            Update::Idt { base, gates } => {
                e.idt_base = base;
                e.idt = gates;
            }
            Update::IdtSlot { vector, gate } => {
                if let Some(g) = e.idt.get_mut(vector as usize) {
                    *g = gate;
                }
            }
            Update::Ldt { sel, base, entries } => {
                e.ldtr = sel;
                e.ldt_base = base;
                e.ldt = entries;
            }
            Update::LdtSlot { index, value } => {
                if let Some(d) = e.ldt.get_mut(index as usize) {
                    *d = value;
                }
            }
            Update::Tr { sel, base, limit } => {
                e.tr = sel;
                e.tss_base = base;
                e.tss_limit = limit;
                let guest_len = e.gdt.len().saturating_sub(HV_RESERVED_GDT.len());
                if (sel.index() as usize) < guest_len {
                    mark_busy(&mut e.gdt[sel.index() as usize]);
                }
            }
            Update::KernelStack { sp0 } => e.sp0 = sp0,
        }
    }
}

/// The effective state once the pending lazy batch is applied.
fn future_state(inner: &Inner) -> EffectiveState {
    let mut e = inner.eff.clone();
    for u in inner.pending.iter().cloned() {
        u.apply(&mut e);
    }
    e
}

/// `f` of the effective state once the pending lazy batch is applied
/// (without a copy when nothing is pending).
fn with_future<R>(inner: &Inner, f: impl FnOnce(&EffectiveState) -> R) -> R {
    if inner.pending.is_empty() {
        f(&inner.eff)
    } else {
        f(&future_state(inner))
    }
}

/// Is `low` a present interrupt/trap gate whose code selector names one of
/// the reserved entries of a GDT with `guest_len` guest entries?
/// (Delivery through it would enter the guest's handler in ring 0. Task
/// gates name a TSS and are not checked.)
fn gate_names_reserved(low: u64, guest_len: usize) -> bool {
    let present = low & (1 << 47) != 0;
    let task = (low >> 40) & 0x1F == 0x5;
    present && !task && invariants::names_reserved((low >> 16) & 0xFFFF, guest_len)
}

/// Refuse effective gate `low` for IDT[`v`] if it would name a reserved
/// entry of the GDT the guest has set (the one in effect once any pending
/// batch is applied, since the gate is applied with it).
fn reserved_gate(inner: &Inner, op: &str, v: u64, low: u64) -> Result<(), Fail> {
    let Some(p) = inner.guest.gdtr else {
        return Ok(());
    };
    let n = (p.limit as usize + 1) / 8;
    if gate_names_reserved(low, n) {
        return Err(fail(
            EINVAL,
            format!(
                "{op}: IDT[{v}]: gate selector {:#x} names GDT[{}], one of the hypervisor's reserved ring-0 entries that follow the guest's {n}",
                (low >> 16) & 0xFFFF,
                (low >> 19) & 0x1FFF
            ),
        ));
    }
    Ok(())
}

struct Fail {
    errno: i64,
    reason: String,
}

fn fail(errno: i64, reason: impl Into<String>) -> Fail {
    Fail {
        errno,
        reason: reason.into(),
    }
}

/// Outcome of a call: rax and the effective updates it makes.
type Outcome = Result<(u64, Vec<Update>), Fail>;

struct Inner {
    phys: Vec<u8>,
    rom_base: Option<u64>,
    answers: [Reloc; rom::STUB_COUNT],
    initialized: bool,
    guest: GuestView,
    eff: EffectiveState,
    pending: Vec<Update>,
    trace: VmiTrace,
    seq: u64,
    /// Where the effective GDT and IDT live, if not the defaults.
    eff_bases: Option<(u64, u64)>,
}

/// The simulated VMI hypervisor for one vCPU.
pub struct VmiHypervisor<M = HostGuestMemory> {
    kind: GuestKind,
    mem: M,
    inner: Mutex<Inner>,
}

/// The default relocation answers: CALL_REL for the descriptor calls 3–14
/// and SetLazyMode (73), which this personality implements; NOP for
/// IODelay (65), a no-op in a VM; NONE (trap and emulate the native
/// instruction) for everything else.
pub fn default_answers() -> [Reloc; rom::STUB_COUNT] {
    let mut a = [Reloc::None; rom::STUB_COUNT];
    for nr in call::IMPLEMENTED {
        a[nr as usize] = Reloc::CallRel;
    }
    a[call::IO_DELAY as usize] = Reloc::Nop;
    a
}

impl<M: GuestMemory> VmiHypervisor<M> {
    /// A hypervisor for a `kind` guest whose memory is `mem`, with the
    /// default ROM at [`DEFAULT_ROM_BASE`].
    pub fn new(kind: GuestKind, mem: M) -> Self {
        let hv = Self::without_rom(kind, mem);
        let placed = hv.place_rom(DEFAULT_ROM_BASE, &RomBuilder::default());
        debug_assert!(placed.is_ok());
        hv
    }

    /// No ROM at all (the probe must fail).
    pub fn without_rom(kind: GuestKind, mem: M) -> Self {
        VmiHypervisor {
            kind,
            mem,
            inner: Mutex::new(Inner {
                phys: vec![0; (PHYS_END - PHYS_START) as usize],
                rom_base: None,
                answers: default_answers(),
                initialized: false,
                guest: GuestView::default(),
                eff: EffectiveState::default(),
                pending: Vec::new(),
                trace: VmiTrace::default(),
                seq: 0,
                eff_bases: None,
            }),
        }
    }

    /// A hypervisor with the ROM `rom` at `base`, which must be a 2 KiB
    /// boundary inside the scan window 0xC0000..0xE0000 (the image must fit
    /// before 0xE0000).
    pub fn with_rom(kind: GuestKind, mem: M, base: u64, rom: &RomBuilder) -> Result<Self, String> {
        use abi::scan::{END as SCAN_END, START as SCAN_START, STEP as SCAN_STEP};
        if !(SCAN_START..SCAN_END).contains(&base) || base + ROM_SIZE as u64 > SCAN_END {
            return Err(format!(
                "ROM at {base:#x} ({ROM_SIZE:#x} bytes) is not inside the option-ROM window {SCAN_START:#x}..{SCAN_END:#x}"
            ));
        }
        if !base.is_multiple_of(SCAN_STEP) {
            return Err(format!("ROM at {base:#x} is not on a 2 KiB boundary"));
        }
        let hv = Self::without_rom(kind, mem);
        hv.place_rom(base, rom)?;
        Ok(hv)
    }

    /// Place a ROM anywhere in the modelled low memory (0xC0000..1 MiB),
    /// even where a guest will not find it (tests of the probe); it becomes
    /// the ROM this hypervisor answers calls from.
    pub fn place_rom(&self, base: u64, rom: &RomBuilder) -> Result<(), String> {
        self.place_bytes(base, &rom.build())?;
        self.lock().rom_base = Some(base);
        Ok(())
    }

    /// Write raw bytes into the modelled low memory (another option ROM, a
    /// corrupted byte).
    pub fn place_bytes(&self, addr: u64, bytes: &[u8]) -> Result<(), String> {
        let end = addr.checked_add(bytes.len() as u64);
        if addr < PHYS_START || end.is_none_or(|e| e > PHYS_END) {
            return Err(format!(
                "{:#x} bytes at {addr:#x} do not fit in the modelled low memory {PHYS_START:#x}..{PHYS_END:#x}",
                bytes.len()
            ));
        }
        let off = (addr - PHYS_START) as usize;
        self.lock().phys[off..off + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Place the effective GDT and IDT at `gdt` and `idt` instead of
    /// [`EFFECTIVE_GDT_64`]/[`EFFECTIVE_IDT_64`] (or the 32-bit ones): the
    /// addresses where a VMM running the guest on a real vCPU installs
    /// them (the KVM runner's pages, [`crate::kvm::vmi`]). Takes effect at
    /// the next SetGDT/SetIDT.
    pub fn set_effective_bases(&self, gdt: u64, idt: u64) {
        self.lock().eff_bases = Some((gdt, idt));
    }

    /// The guest kind.
    pub fn kind(&self) -> GuestKind {
        self.kind
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Where the active ROM is.
    pub fn rom_base(&self) -> Option<u64> {
        self.lock().rom_base
    }

    /// Change the relocation answer for call `nr` (< 128).
    pub fn set_answer(&self, nr: u32, typ: Reloc) {
        if let Some(a) = self.lock().answers.get_mut(nr as usize) {
            *a = typ;
        }
    }

    /// The guest's view.
    pub fn guest(&self) -> GuestView {
        self.lock().guest.clone()
    }

    /// The effective state (what is applied so far).
    pub fn effective(&self) -> EffectiveState {
        self.lock().eff.clone()
    }

    /// Effective updates waiting for the end of lazy mode, described.
    pub fn pending(&self) -> Vec<String> {
        self.lock().pending.iter().map(Update::describe).collect()
    }

    /// Check the model's invariants ([`super::invariants`]): the applied
    /// effective state, and the state the pending lazy batch will produce,
    /// give the guest no privilege it must not have (no present code/data
    /// segment below the guest kernel's ring, no gates in the GDT/LDT, no
    /// IDT gate into the hypervisor's reserved ring-0 segment, 16-byte
    /// system descriptors whole, reserved entries intact); outside a lazy
    /// batch the effective state agrees with the guest's view; lazy mode 0
    /// has nothing deferred. Err = the first violation, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let inner = self.lock();
        let k = self.kind;
        invariants::check_effective(k, &inner.eff).map_err(|e| format!("applied state: {e}"))?;
        if inner.pending.is_empty() {
            return invariants::check_view(k, &inner.guest, &inner.eff);
        }
        if inner.guest.lazy_mode == lazy::NONE {
            return Err(format!(
                "lazy mode 0 but {} update(s) still deferred",
                inner.pending.len()
            ));
        }
        let future = future_state(&inner);
        invariants::check_effective(k, &future)
            .map_err(|e| format!("after the pending lazy batch: {e}"))?;
        invariants::check_view(k, &inner.guest, &future)
            .map_err(|e| format!("after the pending lazy batch: {e}"))
    }

    /// The trace so far.
    pub fn trace(&self) -> VmiTrace {
        self.lock().trace.clone()
    }

    /// Read guest-physical memory of the ROM window.
    pub fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        let end = addr.checked_add(buf.len() as u64);
        if addr < PHYS_START || end.is_none_or(|e| e > PHYS_END) {
            return false;
        }
        let off = (addr - PHYS_START) as usize;
        buf.copy_from_slice(&self.lock().phys[off..off + buf.len()]);
        true
    }

    /// Decode the stub at `entry`: the value it puts in eax, or why the
    /// address is not a stub of the active ROM.
    pub fn decode_entry(&self, entry: u64) -> Result<u32, String> {
        let inner = self.lock();
        let Some(base) = inner.rom_base else {
            return Err("no ROM is installed".into());
        };
        let off = entry.wrapping_sub(base);
        if off >= ROM_SIZE as u64 {
            return Err(format!(
                "{entry:#x} is outside the ROM ({base:#x}..{:#x})",
                base + ROM_SIZE as u64
            ));
        }
        let img = &inner.phys[(base - PHYS_START) as usize..][..ROM_SIZE];
        rom::decode_stub(img, off as usize).ok_or_else(|| {
            format!(
                "{entry:#x} (ROM offset {off:#x}) is not the start of a call stub (mov eax, n; out {:#x}, eax; ret)",
                abi::port::VMI_PORT
            )
        })
    }

    pub(crate) fn bad_entry(&self, entry: u64, why: String) {
        self.lock()
            .trace
            .events
            .push(VmiEvent::BadEntry { entry, why });
    }

    /// VMI_Init.
    pub fn init(&self) -> u64 {
        let mut inner = self.lock();
        inner.initialized = true;
        inner.trace.events.push(VmiEvent::Init);
        0
    }

    /// The relocation answer for call `nr`: (eip, type byte).
    pub fn relocation(&self, nr: u32) -> (u64, u8) {
        let mut inner = self.lock();
        let typ = inner
            .answers
            .get(nr as usize)
            .copied()
            .unwrap_or(Reloc::None);
        let eip = match (typ, inner.rom_base, rom::stub_offset(nr)) {
            (Reloc::CallRel | Reloc::JumpRel, Some(base), Some(off)) => base + off as u64,
            _ => 0,
        };
        inner.trace.events.push(VmiEvent::Reloc {
            call: nr,
            eip,
            typ: typ.byte(),
        });
        (eip, typ.byte())
    }

    /// Execute VMI call `nr` with the 64-bit convention's four argument
    /// registers; returns rax (0 / selector, or `-errno`).
    pub fn vmi_call(&self, nr: u32, args: [u64; 4]) -> u64 {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let lazy_before = inner.guest.lazy_mode;
        let out = if !inner.initialized {
            Err(fail(EPERM, "VMI_Init has not been called"))
        } else {
            self.dispatch(&mut inner, nr, args)
        };
        let (result, reason, changes, deferred) = match out {
            Ok((rax, updates)) => {
                let changes: Vec<String> = updates.iter().map(Update::describe).collect();
                let deferred =
                    lazy_before != lazy::NONE && nr != call::SET_LAZY_MODE && !updates.is_empty();
                if deferred {
                    inner.pending.extend(updates);
                } else {
                    for u in updates {
                        u.apply(&mut inner.eff);
                    }
                }
                (rax as i64, None, changes, deferred)
            }
            Err(f) => (-f.errno, Some(f.reason), Vec::new(), false),
        };
        inner.trace.events.push(VmiEvent::Call {
            seq,
            nr,
            args,
            result,
            reason,
            deferred,
            changes,
        });
        result as u64
    }

    fn read(&self, addr: u64, buf: &mut [u8], what: &str) -> Result<(), Fail> {
        if self.mem.read(addr, buf) {
            Ok(())
        } else {
            Err(fail(EFAULT, format!("cannot read {what} at {addr:#x}")))
        }
    }

    fn read_u64(&self, addr: u64, what: &str) -> Result<u64, Fail> {
        let mut b = [0; 8];
        self.read(addr, &mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write(&self, addr: u64, data: &[u8], what: &str) -> Result<(), Fail> {
        if self.mem.write(addr, data) {
            Ok(())
        } else {
            Err(fail(EFAULT, format!("cannot write {what} at {addr:#x}")))
        }
    }

    fn read_dtr(&self, addr: u64) -> Result<DescriptorTablePointer, Fail> {
        let mut b = [0u8; 10];
        let n = self.kind.dtr_len();
        self.read(addr, &mut b[..n], "the DTR operand")?;
        let limit = u16::from_le_bytes([b[0], b[1]]);
        let mut base = [0u8; 8];
        base[..n - 2].copy_from_slice(&b[2..n]);
        Ok(DescriptorTablePointer {
            limit,
            base: u64::from_le_bytes(base),
        })
    }

    fn write_dtr(&self, addr: u64, p: Option<DescriptorTablePointer>) -> Result<(), Fail> {
        let p = p.unwrap_or_default();
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&p.limit.to_le_bytes());
        b[2..].copy_from_slice(&p.base.to_le_bytes());
        self.write(addr, &b[..self.kind.dtr_len()], "the DTR operand")
    }

    fn addr_ok(&self, a: u64) -> bool {
        match self.kind {
            GuestKind::Vmi64 => {
                let top = (a as i64) >> 47;
                top == 0 || top == -1
            }
            GuestKind::Vmi32 => a <= u32::MAX as u64,
        }
    }

    fn dispatch(&self, inner: &mut Inner, nr: u32, a: [u64; 4]) -> Outcome {
        let k = self.kind;
        match nr {
            call::SET_GDT => {
                let p = self.read_dtr(a[0])?;
                let bytes = p.limit as u64 + 1;
                if !bytes.is_multiple_of(8) {
                    return Err(fail(
                        EINVAL,
                        format!("SetGDT: limit {:#x} is not 8n-1", p.limit),
                    ));
                }
                if !self.addr_ok(p.base)
                    || !p
                        .base
                        .checked_add(bytes - 1)
                        .is_some_and(|end| self.addr_ok(end))
                {
                    return Err(fail(
                        EINVAL,
                        format!("SetGDT: base {:#x} is not a valid guest address", p.base),
                    ));
                }
                let n = (bytes / 8) as usize;
                let mut raw = vec![0u64; n];
                for (i, d) in raw.iter_mut().enumerate() {
                    *d = self.read_u64(p.base.wrapping_add(i as u64 * 8), "the GDT")?;
                }
                let mut eff = raw.clone();
                let mut i = 0;
                while i < n {
                    if policy::is_double(k, raw[i]) && raw[i] & (1 << 47) != 0 {
                        if i + 1 >= n {
                            return Err(fail(
                                EINVAL,
                                format!(
                                    "SetGDT: GDT[{i}] is a 16-byte descriptor but the GDT ends at entry {}",
                                    n - 1
                                ),
                            ));
                        }
                        let (lo, hi) = policy::check_gdt_entry(k, raw[i], Some(raw[i + 1]))
                            .map_err(|r| fail(EINVAL, format!("SetGDT: GDT[{i}]: {r}")))?;
                        eff[i] = lo;
                        eff[i + 1] = hi.unwrap_or(raw[i + 1]);
                        i += 2;
                    } else {
                        let (lo, _) = policy::check_gdt_entry(k, raw[i], None)
                            .map_err(|r| fail(EINVAL, format!("SetGDT: GDT[{i}]: {r}")))?;
                        eff[i] = lo;
                        i += 1;
                    }
                }
                // The gates in effect when this GDT takes effect (after the
                // pending batch) must not reach its reserved entries, which
                // follow the guest's n entries.
                let bad = with_future(inner, |e| {
                    e.idt
                        .iter()
                        .enumerate()
                        .find(|&(_, &(lo, _))| gate_names_reserved(lo, n))
                        .map(|(v, &(lo, _))| (v, (lo >> 16) & 0xFFFF))
                });
                if let Some((v, sel)) = bad {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetGDT: IDT[{v}]'s gate selector {sel:#x} would name GDT[{}], one of the hypervisor's reserved ring-0 entries that follow the guest's {n}",
                            sel >> 3
                        ),
                    ));
                }
                inner.guest.gdtr = Some(p);
                let base = match (inner.eff_bases, k) {
                    (Some((gdt, _)), _) => gdt,
                    (None, GuestKind::Vmi64) => EFFECTIVE_GDT_64,
                    (None, GuestKind::Vmi32) => EFFECTIVE_GDT_32,
                };
                Ok((0, vec![Update::Gdt { base, entries: eff }]))
            }
            call::SET_IDT => {
                let p = self.read_dtr(a[0])?;
                let gs = k.gate_size();
                let bytes = p.limit as u64 + 1;
                if !bytes.is_multiple_of(gs) || bytes / gs > 256 {
                    return Err(fail(
                        EINVAL,
                        format!("SetIDT: limit {:#x} is not {gs}n-1 with n <= 256", p.limit),
                    ));
                }
                if !self.addr_ok(p.base) {
                    return Err(fail(
                        EINVAL,
                        format!("SetIDT: base {:#x} is not a valid guest address", p.base),
                    ));
                }
                let mut gates = Vec::new();
                for v in 0..bytes / gs {
                    let lo = self.read_u64(p.base.wrapping_add(v * gs), "the IDT")?;
                    let hi = if gs == 16 {
                        self.read_u64(p.base.wrapping_add(v * gs + 8), "the IDT")?
                    } else {
                        0
                    };
                    let g = policy::check_gate(k, lo, hi)
                        .map_err(|r| fail(EINVAL, format!("SetIDT: IDT[{v}]: {r}")))?;
                    reserved_gate(inner, "SetIDT", v, g.0)?;
                    gates.push(g);
                }
                inner.guest.idtr = Some(p);
                let base = match (inner.eff_bases, k) {
                    (Some((_, idt)), _) => idt,
                    (None, GuestKind::Vmi64) => EFFECTIVE_IDT_64,
                    (None, GuestKind::Vmi32) => EFFECTIVE_IDT_32,
                };
                Ok((0, vec![Update::Idt { base, gates }]))
            }
            call::SET_LDT => {
                let sel = Selector(a[0] as u16);
                if a[0] > 0xFFFF {
                    return Err(fail(
                        EINVAL,
                        format!("SetLDT: {:#x} is not a selector", a[0]),
                    ));
                }
                if sel.is_null() && sel.ti() == pvops::TableIndicator::Gdt {
                    inner.guest.ldtr = Selector::NULL;
                    inner.guest.ldt = None;
                    return Ok((
                        0,
                        vec![Update::Ldt {
                            sel: Selector::NULL,
                            base: 0,
                            entries: Vec::new(),
                        }],
                    ));
                }
                let (lo, hi) = self.system_descriptor(inner, "SetLDT", sel)?;
                if (lo >> 40) & 0x1F != 0x2 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetLDT: selector {sel} names a descriptor of type {:#x} (S<<4|type), expected an LDT (type 2)",
                            (lo >> 40) & 0x1F
                        ),
                    ));
                }
                let d = pvops::Descriptor(lo);
                let base = d.base() as u64 | (hi << 32);
                let entries = ((d.effective_limit() as u64 + 1) / 8).min(8192) as u32;
                let mut eff = Vec::with_capacity(entries as usize);
                for i in 0..entries as u64 {
                    let raw = self.read_u64(base.wrapping_add(i * 8), "the LDT")?;
                    eff.push(
                        policy::check_ldt_entry(k, raw)
                            .map_err(|r| fail(EINVAL, format!("SetLDT: LDT[{i}]: {r}")))?,
                    );
                }
                inner.guest.ldtr = sel;
                inner.guest.ldt = Some((base, entries));
                Ok((
                    0,
                    vec![Update::Ldt {
                        sel,
                        base,
                        entries: eff,
                    }],
                ))
            }
            call::SET_TR => {
                let sel = Selector(a[0] as u16);
                if a[0] > 0xFFFF {
                    return Err(fail(
                        EINVAL,
                        format!("SetTR: {:#x} is not a selector", a[0]),
                    ));
                }
                let (lo, hi) = self.system_descriptor(inner, "SetTR", sel)?;
                let st = (lo >> 40) & 0x1F;
                if st != 0x9 {
                    let why = if st == 0xB {
                        "this one is busy (0xb)"
                    } else {
                        "expected an available TSS (type 9)"
                    };
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetTR: selector {sel} names a descriptor of type {st:#x} (S<<4|type): {why}"
                        ),
                    ));
                }
                let d = pvops::Descriptor(lo);
                let limit = d.effective_limit();
                let min = match k {
                    GuestKind::Vmi64 => 0x67,
                    GuestKind::Vmi32 => 0x67,
                };
                if limit < min {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetTR: TSS limit {limit:#x} is below {min:#x}, too small for a TSS"
                        ),
                    ));
                }
                inner.guest.tr = sel;
                Ok((
                    0,
                    vec![Update::Tr {
                        sel,
                        base: d.base() as u64 | (hi << 32),
                        limit,
                    }],
                ))
            }
            call::GET_GDT => {
                self.write_dtr(a[0], inner.guest.gdtr)?;
                Ok((0, Vec::new()))
            }
            call::GET_IDT => {
                self.write_dtr(a[0], inner.guest.idtr)?;
                Ok((0, Vec::new()))
            }
            call::GET_LDT => Ok((inner.guest.ldtr.bits() as u64, Vec::new())),
            call::GET_TR => Ok((inner.guest.tr.bits() as u64, Vec::new())),
            call::WRITE_GDT_ENTRY => {
                let (base, index) = (a[0], a[1]);
                let (low, high) = match k {
                    GuestKind::Vmi64 => (a[2], a[3]),
                    GuestKind::Vmi32 => ((a[2] & 0xFFFF_FFFF) | (a[3] << 32), 0),
                };
                let double = policy::is_double(k, low);
                if !double && k == GuestKind::Vmi64 && high != 0 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "WriteGDTEntry: an 8-byte descriptor takes rcx = 0 (got {high:#x}); only TSS/LDT descriptors are 16 bytes"
                        ),
                    ));
                }
                let slots = if double { 2 } else { 1 };
                if index.saturating_add(slots) > 8192 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "WriteGDTEntry: index {index} is past the largest GDT (8192 entries)"
                        ),
                    ));
                }
                let loaded = inner.guest.gdtr.filter(|p| p.base == base);
                if let Some(p) = loaded {
                    let n = (p.limit as u64 + 1) / 8;
                    if index.saturating_add(slots) > n {
                        return Err(fail(
                            EINVAL,
                            format!(
                                "WriteGDTEntry: {}-byte descriptor at index {index} does not fit in the loaded GDT ({n} entries)",
                                slots * 8
                            ),
                        ));
                    }
                }
                // Slot index - 1 of the effective GDT (as it will be once a
                // pending batch is applied) may be the lower half of a
                // present 16-byte descriptor: then slot index is its upper
                // half, and an 8-byte descriptor there would break it.
                if loaded.is_some() && index > 0 {
                    let prev = with_future(inner, |e| e.gdt.get(index as usize - 1).copied());
                    if let Some(prev) = prev
                        && prev & (1 << 47) != 0
                        && policy::is_double(k, prev)
                    {
                        return Err(fail(
                            EINVAL,
                            format!(
                                "WriteGDTEntry: GDT[{index}] is the upper half of the present 16-byte descriptor at GDT[{}]; write that descriptor whole (or clear it first)",
                                index - 1
                            ),
                        ));
                    }
                }
                let (elo, ehi) = policy::check_gdt_entry(k, low, double.then_some(high))
                    .map_err(|r| fail(EINVAL, format!("WriteGDTEntry: GDT[{index}]: {r}")))?;
                if double {
                    self.write(
                        base.wrapping_add((index + 1) * 8),
                        &high.to_le_bytes(),
                        "the GDT",
                    )?;
                }
                self.write(base.wrapping_add(index * 8), &low.to_le_bytes(), "the GDT")?;
                let mut ups = Vec::new();
                if loaded.is_some() {
                    ups.push(Update::GdtSlot {
                        index: index as u32,
                        value: elo,
                    });
                    if let Some(h) = ehi {
                        ups.push(Update::GdtSlot {
                            index: index as u32 + 1,
                            value: h,
                        });
                    }
                }
                Ok((0, ups))
            }
            call::WRITE_LDT_ENTRY => {
                let (base, index) = (a[0], a[1]);
                let d = match k {
                    GuestKind::Vmi64 => {
                        if a[3] != 0 {
                            return Err(fail(
                                EINVAL,
                                "WriteLDTEntry: rcx must be 0 (LDT entries are 8 bytes)",
                            ));
                        }
                        a[2]
                    }
                    GuestKind::Vmi32 => (a[2] & 0xFFFF_FFFF) | (a[3] << 32),
                };
                if index >= 8192 {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "WriteLDTEntry: index {index} is past the largest LDT (8192 entries)"
                        ),
                    ));
                }
                let loaded = inner.guest.ldt.filter(|&(b, _)| b == base);
                if let Some((_, n)) = loaded
                    && index >= n as u64
                {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "WriteLDTEntry: index {index} is past the end of the loaded LDT ({n} entries)"
                        ),
                    ));
                }
                let e = policy::check_ldt_entry(k, d)
                    .map_err(|r| fail(EINVAL, format!("WriteLDTEntry: LDT[{index}]: {r}")))?;
                self.write(base.wrapping_add(index * 8), &d.to_le_bytes(), "the LDT")?;
                let ups = if loaded.is_some() {
                    vec![Update::LdtSlot {
                        index: index as u32,
                        value: e,
                    }]
                } else {
                    Vec::new()
                };
                Ok((0, ups))
            }
            call::WRITE_IDT_ENTRY => {
                let (base, vector) = (a[0], a[1]);
                let gs = k.gate_size();
                let (lo, hi) = match k {
                    GuestKind::Vmi64 => (a[2], a[3]),
                    GuestKind::Vmi32 => ((a[2] & 0xFFFF_FFFF) | (a[3] << 32), 0),
                };
                if vector > 255 {
                    return Err(fail(
                        EINVAL,
                        format!("WriteIDTEntry: vector {vector} is above 255"),
                    ));
                }
                let loaded = inner.guest.idtr.filter(|p| p.base == base);
                if let Some(p) = loaded {
                    let n = (p.limit as u64 + 1) / gs;
                    if vector >= n {
                        return Err(fail(
                            EINVAL,
                            format!(
                                "WriteIDTEntry: vector {vector} is past the end of the loaded IDT ({n} gates)"
                            ),
                        ));
                    }
                }
                let g = policy::check_gate(k, lo, hi)
                    .map_err(|r| fail(EINVAL, format!("WriteIDTEntry: IDT[{vector}]: {r}")))?;
                if loaded.is_some() {
                    reserved_gate(inner, "WriteIDTEntry", vector, g.0)?;
                }
                if gs == 16 {
                    self.write(
                        base.wrapping_add(vector * gs + 8),
                        &hi.to_le_bytes(),
                        "the IDT",
                    )?;
                }
                self.write(base.wrapping_add(vector * gs), &lo.to_le_bytes(), "the IDT")?;
                let ups = if loaded.is_some() {
                    vec![Update::IdtSlot {
                        vector: vector as u32,
                        gate: g,
                    }]
                } else {
                    Vec::new()
                };
                Ok((0, ups))
            }
            call::UPDATE_KERNEL_STACK => {
                // The first argument: Linux's vmi_load_sp0 (vmi_load_esp0
                // before 2.6.25) passes __KERNEL_DS, the kernel's stack
                // segment, the value of the TSS's ss0; the 64-bit
                // convention of pvops-vmi passes the TSS selector. Either is
                // accepted; the value is recorded, the hypervisor's own
                // stack segment is what the CPU uses.
                let sp0 = a[1];
                if a[0] > 0xFFFF {
                    return Err(fail(
                        EINVAL,
                        format!("UpdateKernelStack: {:#x} is not a selector", a[0]),
                    ));
                }
                let sel = Selector(a[0] as u16);
                let tr = inner.guest.tr;
                let is_tr = !tr.is_null()
                    && sel.with_rpl(pvops::Ring::Ring0) == tr.with_rpl(pvops::Ring::Ring0);
                if !is_tr {
                    self.stack_segment(inner, sel)?;
                }
                if !self.addr_ok(sp0) {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "UpdateKernelStack: sp0 {sp0:#x} is not a valid {} address",
                            k.name()
                        ),
                    ));
                }
                inner.guest.kernel_stack = Some((sel, sp0));
                Ok((0, vec![Update::KernelStack { sp0 }]))
            }
            call::SET_LAZY_MODE => {
                let mode = a[0];
                let cur = inner.guest.lazy_mode;
                if ![lazy::NONE, lazy::MMU, lazy::CPU].contains(&mode) {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetLazyMode: mode {mode} is not {} (none), {} (MMU) or {} (CPU)",
                            lazy::NONE,
                            lazy::MMU,
                            lazy::CPU
                        ),
                    ));
                }
                if mode != lazy::NONE && cur != lazy::NONE {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetLazyMode({mode}): already in lazy mode {cur}; leave it with SetLazyMode(0) first"
                        ),
                    ));
                }
                inner.guest.lazy_mode = mode;
                if mode == lazy::NONE && cur != lazy::NONE {
                    let pending = std::mem::take(&mut inner.pending);
                    let applied: Vec<String> = pending.iter().map(Update::describe).collect();
                    for u in pending {
                        u.apply(&mut inner.eff);
                    }
                    inner.trace.events.push(VmiEvent::Flush { applied });
                }
                Ok((0, Vec::new()))
            }
            n => Err(fail(
                ENOSYS,
                format!(
                    "call {n} ({}) is not implemented by hv-sim's VMI personality",
                    call::name(n).unwrap_or("undefined")
                ),
            )),
        }
    }

    /// UpdateKernelStack's first argument when it is not the loaded TR: a
    /// stack segment, which must name a present writable data segment among
    /// the guest's entries of the GDT it set (Linux's `__KERNEL_DS` always
    /// does: cpu_init loads the GDT before its first load_sp0).
    ///
    /// Deliberately stricter than Linux's client needs (it never sends
    /// anything else): a selector that is not a writable data segment could
    /// not serve as the kernel's stack segment on the next entry into the
    /// guest kernel (#TS during delivery, inside the hypervisor's world
    /// switch), and the hypervisor's reserved entries, which follow the
    /// guest's, are not the guest's to name. Refusing here names the rule.
    fn stack_segment(&self, inner: &Inner, sel: Selector) -> Result<(), Fail> {
        let what = format!(
            "UpdateKernelStack: selector {sel} is not the loaded TR {}, so it must be the kernel's stack segment (Linux passes __KERNEL_DS)",
            inner.guest.tr
        );
        if sel.is_null() || sel.ti() != pvops::TableIndicator::Gdt {
            return Err(fail(
                EINVAL,
                format!("{what}: a GDT selector (not null, TI=0)"),
            ));
        }
        let Some(p) = inner.guest.gdtr else {
            return Err(fail(
                EINVAL,
                format!("{what}, but no GDT is loaded (SetGDT first)"),
            ));
        };
        let n = (p.limit as u64 + 1) / 8;
        let index = sel.index() as u64;
        if index >= n {
            return Err(fail(
                EINVAL,
                format!(
                    "{what}: GDT[{index}] is past the guest's {n} entries (the hypervisor's reserved entries follow them)"
                ),
            ));
        }
        let d = self.read_u64(p.base.wrapping_add(index * 8), "the GDT")?;
        // Present (47), S (44), data (type bit 3 clear), writable (bit 1).
        let data_rw = d & (1 << 47) != 0 && d & (1 << 44) != 0 && (d >> 40) & 0xA == 0x2;
        if !data_rw {
            return Err(fail(
                EINVAL,
                format!("{what}: GDT[{index}] = {d:#018x} is not a present writable data segment"),
            ));
        }
        Ok(())
    }

    /// Read the system descriptor `sel` names in the guest's GDT (both
    /// halves for a 64-bit guest) and check it against the policy.
    fn system_descriptor(
        &self,
        inner: &Inner,
        op: &str,
        sel: Selector,
    ) -> Result<(u64, u64), Fail> {
        if sel.is_null() || sel.ti() != pvops::TableIndicator::Gdt {
            return Err(fail(
                EINVAL,
                format!("{op}: selector {sel} must name a GDT entry (not null, TI=0)"),
            ));
        }
        let Some(p) = inner.guest.gdtr else {
            return Err(fail(EINVAL, format!("{op}: no GDT loaded (SetGDT first)")));
        };
        let n = (p.limit as u64 + 1) / 8;
        let index = sel.index() as u64;
        let slots = if self.kind == GuestKind::Vmi64 { 2 } else { 1 };
        if index + slots > n {
            return Err(fail(
                EINVAL,
                format!(
                    "{op}: selector {sel} names GDT[{index}] but its {}-byte descriptor does not fit in the GDT ({n} entries)",
                    slots * 8
                ),
            ));
        }
        let lo = self.read_u64(p.base.wrapping_add(index * 8), "the GDT")?;
        let hi = if slots == 2 {
            self.read_u64(p.base.wrapping_add(index * 8 + 8), "the GDT")?
        } else {
            0
        };
        if lo & (1 << 47) == 0 {
            return Err(fail(
                EINVAL,
                format!("{op}: selector {sel} names a not-present descriptor"),
            ));
        }
        policy::check_gdt_entry(self.kind, lo, (slots == 2).then_some(hi))
            .map_err(|r| fail(EINVAL, format!("{op}: GDT[{index}]: {r}")))?;
        Ok((lo, hi))
    }
}
