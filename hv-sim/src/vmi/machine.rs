//! The simulated VMI hypervisor: the option-ROM window, the call dispatch,
//! lazy batching and the trace. The calls themselves are one method each,
//! by concern, in private modules of [`super`]: `tables.rs` (Set*/Get*),
//! `entries.rs` (Write*Entry), `kstack.rs` (UpdateKernelStack), and
//! SetLazyMode here; `gates.rs` re-checks gates against the tables they
//! name whenever either changes.

use std::sync::{Mutex, MutexGuard};

use super::abi::{self, Reloc, call, lazy};
use super::error::{CheckedState, EntryError, InvariantError, RomError};
use super::invariants;
use super::policy::GuestKind;
use super::rom::{self, ROM_SIZE, RomBuilder};
use super::state::Update;
use super::trace::{Change, VmiEvent, VmiTrace};
use pvops::DescriptorTablePointer;

pub use super::memory::{GuestMemory, HostGuestMemory, HostWindow, RamMemory};
pub use super::state::{EffectiveState, GuestView};

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

/// A refused call: its errno and the rule it broke.
pub(super) struct Fail {
    pub(super) errno: i64,
    pub(super) reason: String,
}

pub(super) fn fail(errno: i64, reason: impl Into<String>) -> Fail {
    Fail {
        errno,
        reason: reason.into(),
    }
}

/// Outcome of a call: rax and the effective updates it makes.
pub(super) type Outcome = Result<(u64, Vec<Update>), Fail>;

pub(super) struct Inner {
    phys: Vec<u8>,
    rom_base: Option<u64>,
    answers: [Reloc; rom::STUB_COUNT],
    initialized: bool,
    pub(super) guest: GuestView,
    /// The applied effective state.
    eff: EffectiveState,
    /// `eff` with the pending lazy batch applied: `Some` exactly while a
    /// batch holds effective changes (made once, at its first change, so
    /// a check never rebuilds it).
    future: Option<EffectiveState>,
    /// The pending batch's changes, for the trace and [`VmiHypervisor::pending`].
    pending: Vec<Change>,
    trace: VmiTrace,
    seq: u64,
    /// Where the effective GDT and IDT live, if not the defaults.
    pub(super) eff_bases: Option<(u64, u64)>,
}

impl Inner {
    /// The effective state as it will be once any pending lazy batch is
    /// applied: what every check of a new call runs against, since the
    /// call's own changes are applied after the batch's.
    pub(super) fn future(&self) -> &EffectiveState {
        self.future.as_ref().unwrap_or(&self.eff)
    }
}

/// The simulated VMI hypervisor for one vCPU.
pub struct VmiHypervisor<M = HostGuestMemory> {
    pub(super) kind: GuestKind,
    pub(super) mem: M,
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
                future: None,
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
    pub fn with_rom(
        kind: GuestKind,
        mem: M,
        base: u64,
        rom: &RomBuilder,
    ) -> Result<Self, RomError> {
        use abi::scan::{END as SCAN_END, START as SCAN_START, STEP as SCAN_STEP};
        if !(SCAN_START..SCAN_END).contains(&base) || base + ROM_SIZE as u64 > SCAN_END {
            return Err(RomError::OutsideWindow {
                base,
                size: ROM_SIZE,
                start: SCAN_START,
                end: SCAN_END,
            });
        }
        if !base.is_multiple_of(SCAN_STEP) {
            return Err(RomError::Misaligned { base });
        }
        let hv = Self::without_rom(kind, mem);
        hv.place_rom(base, rom)?;
        Ok(hv)
    }

    /// Place a ROM anywhere in the modelled low memory (0xC0000..1 MiB),
    /// even where a guest will not find it (tests of the probe); it becomes
    /// the ROM this hypervisor answers calls from.
    pub fn place_rom(&self, base: u64, rom: &RomBuilder) -> Result<(), RomError> {
        self.place_bytes(base, &rom.build())?;
        self.lock().rom_base = Some(base);
        Ok(())
    }

    /// Write raw bytes into the modelled low memory (another option ROM, a
    /// corrupted byte).
    pub fn place_bytes(&self, addr: u64, bytes: &[u8]) -> Result<(), RomError> {
        let end = addr.checked_add(bytes.len() as u64);
        if addr < PHYS_START || end.is_none_or(|e| e > PHYS_END) {
            return Err(RomError::OutsideLowMemory {
                addr,
                len: bytes.len(),
                start: PHYS_START,
                end: PHYS_END,
            });
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
        self.lock().pending.iter().map(Change::to_string).collect()
    }

    /// Check the model's invariants ([`super::invariants`]): the applied
    /// effective state, and the state the pending lazy batch will produce,
    /// give the guest no privilege it must not have (no slot a selector can
    /// name is a present code/data segment below the guest kernel's ring or
    /// a gate, no IDT gate targets the hypervisor's reserved entries or a
    /// code segment below the guest's ring, 16-byte system descriptors
    /// whole and their upper halves type 0, reserved entries intact, table
    /// sizes, TR/LDTR, TSS and LDT bases and sp0 valid); outside a lazy
    /// batch the effective state agrees with the guest's view; lazy mode 0
    /// has nothing deferred. Err = the first violation, described.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        use CheckedState::{AfterLazyBatch, Applied};
        let unsafe_in = |state| move |violation| InvariantError::Unsafe { state, violation };
        let disagrees = |state| move |violation| InvariantError::Disagrees { state, violation };
        let inner = self.lock();
        let k = self.kind;
        invariants::check_effective(k, &inner.eff).map_err(unsafe_in(Applied))?;
        let Some(future) = &inner.future else {
            if !inner.pending.is_empty() {
                return Err(InvariantError::DeferredWithoutState {
                    changes: inner.pending.len(),
                });
            }
            return invariants::check_view(k, &inner.guest, &inner.eff).map_err(disagrees(Applied));
        };
        if inner.guest.lazy_mode == lazy::NONE {
            return Err(InvariantError::DeferredOutsideLazyMode {
                changes: inner.pending.len(),
            });
        }
        invariants::check_effective(k, future).map_err(unsafe_in(AfterLazyBatch))?;
        invariants::check_view(k, &inner.guest, future).map_err(disagrees(AfterLazyBatch))
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
    pub fn decode_entry(&self, entry: u64) -> Result<u32, EntryError> {
        let inner = self.lock();
        let Some(base) = inner.rom_base else {
            return Err(EntryError::NoRom);
        };
        let off = entry.wrapping_sub(base);
        if off >= ROM_SIZE as u64 {
            return Err(EntryError::OutsideRom {
                entry,
                base,
                end: base + ROM_SIZE as u64,
            });
        }
        let img = &inner.phys[(base - PHYS_START) as usize..][..ROM_SIZE];
        rom::decode_stub(img, off as usize).ok_or(EntryError::NotAStub {
            entry,
            offset: off,
            port: u16::from(abi::port::VMI_PORT),
        })
    }

    pub(crate) fn bad_entry(&self, entry: u64, why: String) {
        self.lock().trace.push(VmiEvent::BadEntry { entry, why });
    }

    /// VMI_Init.
    pub fn init(&self) -> u64 {
        let mut inner = self.lock();
        inner.initialized = true;
        inner.trace.push(VmiEvent::Init);
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
        inner.trace.push(VmiEvent::Reloc {
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
                let changes: Vec<Change> = updates.iter().map(Update::change).collect();
                let deferred =
                    lazy_before != lazy::NONE && nr != call::SET_LAZY_MODE && !updates.is_empty();
                if deferred {
                    let Inner {
                        eff,
                        future,
                        pending,
                        ..
                    } = &mut *inner;
                    let future = future.get_or_insert_with(|| eff.clone());
                    for u in updates {
                        u.apply(future);
                    }
                    pending.extend_from_slice(&changes);
                } else {
                    for u in updates {
                        u.apply(&mut inner.eff);
                    }
                }
                (rax as i64, None, changes, deferred)
            }
            Err(f) => (-f.errno, Some(f.reason), Vec::new(), false),
        };
        inner.trace.push(VmiEvent::Call {
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

    pub(super) fn read(&self, addr: u64, buf: &mut [u8], what: &str) -> Result<(), Fail> {
        if self.mem.read(addr, buf) {
            Ok(())
        } else {
            Err(fail(EFAULT, format!("cannot read {what} at {addr:#x}")))
        }
    }

    pub(super) fn read_u64(&self, addr: u64, what: &str) -> Result<u64, Fail> {
        let mut b = [0; 8];
        self.read(addr, &mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn write(&self, addr: u64, data: &[u8], what: &str) -> Result<(), Fail> {
        if self.mem.write(addr, data) {
            Ok(())
        } else {
            Err(fail(EFAULT, format!("cannot write {what} at {addr:#x}")))
        }
    }

    pub(super) fn read_dtr(&self, addr: u64) -> Result<DescriptorTablePointer, Fail> {
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

    pub(super) fn write_dtr(
        &self,
        addr: u64,
        p: Option<DescriptorTablePointer>,
    ) -> Result<(), Fail> {
        let p = p.unwrap_or_default();
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&p.limit.to_le_bytes());
        b[2..].copy_from_slice(&p.base.to_le_bytes());
        self.write(addr, &b[..self.kind.dtr_len()], "the DTR operand")
    }

    pub(super) fn addr_ok(&self, a: u64) -> bool {
        match self.kind {
            GuestKind::Vmi64 => pvops::table::is_canonical(a),
            GuestKind::Vmi32 => a <= u32::MAX as u64,
        }
    }

    /// One method per call (the handlers check everything first and write
    /// guest memory last, in one all-or-nothing write, so a refused call
    /// changes nothing).
    fn dispatch(&self, inner: &mut Inner, nr: u32, a: [u64; 4]) -> Outcome {
        match nr {
            call::SET_GDT => self.set_gdt(inner, a[0]),
            call::SET_IDT => self.set_idt(inner, a[0]),
            call::SET_LDT => self.set_ldt(inner, a[0]),
            call::SET_TR => self.set_tr(inner, a[0]),
            call::GET_GDT => self.get_gdt(inner, a[0]),
            call::GET_IDT => self.get_idt(inner, a[0]),
            call::GET_LDT => Ok((inner.guest.ldtr.bits() as u64, Vec::new())),
            call::GET_TR => Ok((inner.guest.tr.bits() as u64, Vec::new())),
            call::WRITE_GDT_ENTRY => self.write_gdt_entry(inner, a),
            call::WRITE_LDT_ENTRY => self.write_ldt_entry(inner, a),
            call::WRITE_IDT_ENTRY => self.write_idt_entry(inner, a),
            call::UPDATE_KERNEL_STACK => self.update_kernel_stack(inner, a[0], a[1]),
            call::SET_LAZY_MODE => self.set_lazy_mode(inner, a[0]),
            n => Err(fail(
                ENOSYS,
                format!(
                    "call {n} ({}) is not implemented by hv-sim's VMI personality",
                    call::name(n).unwrap_or("undefined")
                ),
            )),
        }
    }

    /// SetLazyMode(mode): 0 leaves lazy mode and applies the pending
    /// batch (the trace shows it as one `flush:`); 1 (MMU) and 2 (CPU)
    /// enter it, from mode 0 only.
    fn set_lazy_mode(&self, inner: &mut Inner, mode: u64) -> Outcome {
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
            if let Some(future) = inner.future.take() {
                inner.eff = future;
            }
            let applied = std::mem::take(&mut inner.pending);
            inner.trace.push(VmiEvent::Flush { applied });
        }
        Ok((0, Vec::new()))
    }
}
