//! A software model of the x86 descriptor-table registers and instructions.
//!
//! [`SoftCpu`] executes `lgdt`, `sgdt`, `lidt`, `sidt`, `ltr`, `str`,
//! `lldt` and `sldt` the way the SDM (vol. 2, and vol. 3 §7.2.4 for LTR)
//! and AMD's APM specify, including the checks that raise #GP/#NP and
//! LTR's write of the busy bit into the GDT. The LTR/LLDT checks are the
//! emulator's ([`crate::emulate::system`]), one copy for both models. It reads and writes the
//! descriptor tables through a [`LinearMemory`], so the same model serves
//! in-process tests (tables in this process's memory: [`HostMemory`]) and a
//! simulated guest address space.
//!
//! It implements [`pvops_native::Cpu`], so the native backend's logic runs
//! against it on the host, with every instruction recorded in a log. The
//! log is bounded: by default it keeps the last [`DEFAULT_LOG_CAPACITY`]
//! records and counts the ones it dropped ([`SoftCpu::log_dropped`]);
//! [`SoftCpu::with_full_log`] keeps everything, for a test that wants the
//! whole history of a short run.

use std::collections::VecDeque;
use std::sync::Mutex;

use pvops::{DescriptorTablePointer, PvError, Result, Selector};

use crate::emulate::Exception;
use crate::emulate::system::{self, SystemLoad};

/// Linear-address memory the CPU model reads descriptors from.
///
/// A safe trait: the model only copies the values it reads into its
/// registers and never dereferences them, so a wrong answer is a wrong
/// fault, not undefined behaviour. (What `SoftCpu` hands the native backend
/// is covered by `pvops_native::Cpu`'s contract, which it keeps whatever the
/// memory.) An implementation that dereferences addresses must itself be
/// sound for every address, as [`HostMemory`] is through its `unsafe`
/// constructor.
pub trait LinearMemory {
    /// Read 8 bytes at `addr`, or `None` if unmapped.
    fn read_u64(&self, addr: u64) -> Option<u64>;
    /// Write 8 bytes at `addr`; false if unmapped or read-only.
    fn write_u64(&self, addr: u64, value: u64) -> bool;
}

/// This process's own memory: linear address = host pointer.
///
/// Used when the "guest" code runs in-process (tests): its tables are host
/// memory, exactly as a kernel's tables are its own memory.
#[derive(Debug)]
pub struct HostMemory {
    _private: (),
}

impl HostMemory {
    /// # Safety
    /// Every address the CPU model is asked to touch (table bases from
    /// `lgdt`/`lidt` and the descriptors in them) must be valid, 8-byte
    /// aligned host memory for as long as the model is used, and other
    /// threads access those words only atomically (pvops' backends and
    /// `TableStorage::read` do).
    pub unsafe fn new() -> HostMemory {
        HostMemory { _private: () }
    }
}

impl LinearMemory for HostMemory {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        if addr == 0 || !addr.is_multiple_of(8) {
            return None;
        }
        // SAFETY: `HostMemory::new`'s contract: addresses given to the CPU
        // model are valid aligned host memory, accessed atomically by other
        // threads; one relaxed atomic load, as the CPU's own descriptor read.
        Some(unsafe { pvops::table::load_u64(addr) })
    }

    fn write_u64(&self, addr: u64, value: u64) -> bool {
        if addr == 0 || !addr.is_multiple_of(8) {
            return false;
        }
        // SAFETY: as for `read_u64`.
        unsafe { pvops::table::store_u64(addr, value) };
        true
    }
}

/// Operating mode of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// IA-32e 64-bit mode: 16-byte TSS/LDT descriptors, canonical checks.
    Long,
    /// 32-bit protected mode: 8-byte system descriptors.
    Protected,
}

/// One executed instruction, for logs and test assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsnRecord {
    /// Mnemonic.
    pub insn: &'static str,
    /// Operand (selector or table base).
    pub operand: u64,
    /// `None` if it completed, else the fault (vector, error code).
    pub fault: Option<(u8, u32)>,
}

/// Architectural state of the descriptor-table registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtRegisters {
    /// GDTR.
    pub gdtr: DescriptorTablePointer,
    /// IDTR.
    pub idtr: DescriptorTablePointer,
    /// TR selector.
    pub tr: Selector,
    /// TR hidden part: base.
    pub tr_base: u64,
    /// TR hidden part: limit (bytes).
    pub tr_limit: u32,
    /// LDTR selector.
    pub ldtr: Selector,
    /// LDTR hidden part: base.
    pub ldtr_base: u64,
    /// LDTR hidden part: limit (bytes).
    pub ldtr_limit: u32,
}

/// Records the instruction log keeps by default (the most recent ones).
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

/// The instruction log: the most recent records, and how many were dropped.
struct InsnLog {
    records: VecDeque<InsnRecord>,
    /// Most records kept; `None` = keep everything.
    capacity: Option<usize>,
    dropped: u64,
}

impl InsnLog {
    fn push(&mut self, r: InsnRecord) {
        match self.capacity {
            Some(0) => {
                self.dropped += 1;
                return;
            }
            Some(cap) => {
                while self.records.len() >= cap && self.records.pop_front().is_some() {
                    self.dropped += 1;
                }
            }
            None => {}
        }
        self.records.push_back(r);
    }
}

/// The CPU model.
pub struct SoftCpu<M = HostMemory> {
    mem: M,
    mode: CpuMode,
    regs: Mutex<DtRegisters>,
    log: Mutex<InsnLog>,
}

const GP: u8 = 13;

use pvops::table::is_canonical as canonical;

impl<M: LinearMemory> SoftCpu<M> {
    /// A CPU in `mode` with all registers zero (as after reset, GDTR/IDTR
    /// base 0 limit 0... the real reset IDTR limit is 0xffff; irrelevant here).
    pub fn new(mem: M, mode: CpuMode) -> Self {
        SoftCpu {
            mem,
            mode,
            regs: Mutex::new(DtRegisters::default()),
            log: Mutex::new(InsnLog {
                records: VecDeque::new(),
                capacity: Some(DEFAULT_LOG_CAPACITY),
                dropped: 0,
            }),
        }
    }

    /// Keep only the last `n` records in the log (0 keeps none; the
    /// default is [`DEFAULT_LOG_CAPACITY`]). Older ones are dropped and
    /// counted.
    pub fn with_log_capacity(self, n: usize) -> Self {
        self.set_log_capacity(Some(n));
        self
    }

    /// Keep every record: the log grows with the run (opt-in, for tests
    /// that check a short run's whole history).
    pub fn with_full_log(self) -> Self {
        self.set_log_capacity(None);
        self
    }

    fn set_log_capacity(&self, capacity: Option<usize>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.capacity = capacity;
        if let Some(cap) = capacity {
            let excess = log.records.len().saturating_sub(cap);
            log.records.drain(..excess);
            log.dropped += excess as u64;
        }
    }

    /// Current register state.
    pub fn registers(&self) -> DtRegisters {
        *self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instructions executed so far, oldest first: all of them with
    /// [`with_full_log`](SoftCpu::with_full_log), else the most recent ones
    /// (see [`log_dropped`](SoftCpu::log_dropped)).
    pub fn log(&self) -> Vec<InsnRecord> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.records.iter().copied().collect()
    }

    /// How many records the bounded log dropped (0 with a full log).
    pub fn log_dropped(&self) -> u64 {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }

    /// The memory it reads tables from.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn record(&self, insn: &'static str, operand: u64, r: &Result<()>) {
        let fault = match r {
            Err(PvError::CpuFault {
                vector, error_code, ..
            }) => Some((*vector, *error_code)),
            _ => None,
        };
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(InsnRecord {
                insn,
                operand,
                fault,
            });
    }

    fn fault(insn: &'static str, vector: u8, error_code: u32) -> PvError {
        PvError::CpuFault {
            insn,
            vector,
            error_code,
        }
    }

    /// LTR/LLDT through the checks shared with the emulator
    /// ([`crate::emulate::system`]): locate, read the 8- or 16-byte
    /// descriptor through `M`, check, and (LTR) set the busy bit. A
    /// descriptor `M` cannot read or write is #PF(0)/#PF(2).
    fn load_system(&self, insn: &'static str, kind: SystemLoad, sel: Selector) -> Result<()> {
        let to_fault = |e: Exception| Self::fault(insn, e.vector(), e.error_code().unwrap_or(0));
        let ia32e = self.mode == CpuMode::Long;
        let regs = self.registers();
        let Some(at) = system::locate(kind, sel.bits(), regs.gdtr, ia32e).map_err(to_fault)? else {
            let mut r = self.regs.lock().unwrap_or_else(|e| e.into_inner());
            r.ldtr = sel;
            r.ldtr_base = 0;
            r.ldtr_limit = 0;
            return Ok(());
        };
        let low = self.mem.read_u64(at.addr).ok_or(Self::fault(insn, 14, 0))?;
        let high = if at.size == 16 {
            self.mem
                .read_u64(at.addr.wrapping_add(8))
                .ok_or(Self::fault(insn, 14, 0))?
        } else {
            0
        };
        let c = system::check(kind, sel.bits(), low, high, ia32e).map_err(to_fault)?;
        let mut r = self.regs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(busy) = c.busy_byte {
            // The busy bit: byte 5 of the descriptor (a locked
            // read-modify-write on hardware; `M` writes whole words).
            let new = (low & !(0xff << 40)) | u64::from(busy) << 40;
            if !self.mem.write_u64(at.addr, new) {
                return Err(Self::fault(insn, 14, 2));
            }
            r.tr = sel;
            r.tr_base = c.base;
            r.tr_limit = c.limit;
        } else {
            r.ldtr = sel;
            r.ldtr_base = c.base;
            r.ldtr_limit = c.limit;
        }
        Ok(())
    }

    fn check_dt_base(&self, insn: &'static str, p: &DescriptorTablePointer) -> Result<()> {
        let ok = match self.mode {
            CpuMode::Long => canonical(p.base),
            CpuMode::Protected => p.base <= u32::MAX as u64,
        };
        if ok {
            Ok(())
        } else {
            Err(Self::fault(insn, GP, 0))
        }
    }
}

// SAFETY: the getters return exactly what the setters stored (zero at
// reset): `sgdt`/`sidt` the pointer given to the unsafe `lgdt`/`lidt`,
// `str`/`sldt` the selector the unsafe `ltr`/`lldt` loaded, or null. No
// other code can change the registers. So every table the native backend
// reads through them was loaded by a caller that promised it stays valid
// while loaded. The model touches memory only through `M`, which is sound
// on its own (`LinearMemory` is a safe trait).
unsafe impl<M: LinearMemory> pvops_native::Cpu for SoftCpu<M> {
    unsafe fn lgdt(&self, p: &DescriptorTablePointer) -> Result<()> {
        let r = self.check_dt_base("lgdt", p).map(|()| {
            self.regs.lock().unwrap_or_else(|e| e.into_inner()).gdtr = *p;
        });
        self.record("lgdt", p.base, &r);
        r
    }

    fn sgdt(&self) -> DescriptorTablePointer {
        self.record("sgdt", 0, &Ok(()));
        self.registers().gdtr
    }

    unsafe fn lidt(&self, p: &DescriptorTablePointer) -> Result<()> {
        let r = self.check_dt_base("lidt", p).map(|()| {
            self.regs.lock().unwrap_or_else(|e| e.into_inner()).idtr = *p;
        });
        self.record("lidt", p.base, &r);
        r
    }

    fn sidt(&self) -> DescriptorTablePointer {
        self.record("sidt", 0, &Ok(()));
        self.registers().idtr
    }

    unsafe fn ltr(&self, sel: Selector) -> Result<()> {
        let r = self.load_system("ltr", SystemLoad::Ltr, sel);
        self.record("ltr", sel.bits() as u64, &r);
        r
    }

    fn str(&self) -> Selector {
        self.record("str", 0, &Ok(()));
        self.registers().tr
    }

    unsafe fn lldt(&self, sel: Selector) -> Result<()> {
        let r = self.load_system("lldt", SystemLoad::Lldt, sel);
        self.record("lldt", sel.bits() as u64, &r);
        r
    }

    fn sldt(&self) -> Selector {
        self.record("sldt", 0, &Ok(()));
        self.registers().ldtr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvops_native::Cpu;

    /// Memory that maps nothing: the model never dereferences anything.
    struct NoMemory;

    impl LinearMemory for NoMemory {
        fn read_u64(&self, _: u64) -> Option<u64> {
            None
        }
        fn write_u64(&self, _: u64, _: u64) -> bool {
            false
        }
    }

    #[test]
    fn the_log_keeps_the_last_records_and_counts_the_rest() {
        let cpu = SoftCpu::new(NoMemory, CpuMode::Long).with_log_capacity(3);
        for _ in 0..5 {
            cpu.sgdt();
        }
        cpu.str();
        let log = cpu.log();
        assert_eq!(log.len(), 3);
        assert_eq!(log.last().map(|r| r.insn), Some("str"));
        assert_eq!(cpu.log_dropped(), 3);

        let cpu = SoftCpu::new(NoMemory, CpuMode::Long);
        for _ in 0..DEFAULT_LOG_CAPACITY + 10 {
            cpu.sldt();
        }
        assert_eq!(cpu.log().len(), DEFAULT_LOG_CAPACITY);
        assert_eq!(cpu.log_dropped(), 10);

        let cpu = SoftCpu::new(NoMemory, CpuMode::Long).with_full_log();
        for _ in 0..DEFAULT_LOG_CAPACITY + 10 {
            cpu.sidt();
        }
        assert_eq!(cpu.log().len(), DEFAULT_LOG_CAPACITY + 10);
        assert_eq!(cpu.log_dropped(), 0);

        let cpu = SoftCpu::new(NoMemory, CpuMode::Long).with_log_capacity(0);
        cpu.sgdt();
        assert!(cpu.log().is_empty());
        assert_eq!(cpu.log_dropped(), 1);
    }
}
