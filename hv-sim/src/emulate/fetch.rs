//! Instruction fetch through CS and the guest's paging, and decoding at
//! the bitness CS and EFER.LMA give (SDM vol. 3A 5.2.1 "Code-segment
//! descriptor in 64-bit mode", 5.3 "Limit checking"; vol. 1 3.6 "Operand-
//! size and address-size attributes").
//!
//! * Mode: EFER.LMA with CS.L is 64-bit mode; else CS.D selects 32- or
//!   16-bit default sizes (legacy protected mode, or compatibility mode
//!   with LMA). Real and virtual-8086 mode are not modelled.
//! * Outside 64-bit mode each byte's offset is EIP + k (wrapping at 4 GiB)
//!   and must lie within CS's limit, and CS must be an execute segment
//!   (#GP(0) otherwise); the linear address is CS.base + offset, wrapping
//!   at 4 GiB. In 64-bit mode each byte's address must be canonical.
//! * The bytes are read in runs that stop at page boundaries, so an
//!   instruction that crosses a page is fetched from both, each through the
//!   walk. A byte that can't be fetched ends the window; the decoder then
//!   says whether the instruction needed it: if so, the instruction's
//!   fetch faults (that byte's #GP or #PF), if not the instruction stands
//!   (the CPU never fetches past an instruction's last byte for it).

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use super::segment::{self, SegAccess};
use super::{Access, CpuState, Exception, GuestMemory, MAX_INSN_LEN, Segment};

/// The execution mode the emulator decodes and checks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// EFER.LMA: IA-32e mode (64-bit or compatibility mode): 16-byte
    /// system descriptors.
    pub ia32e: bool,
    /// The code size: 64 (64-bit mode), 32 or 16 (CS.D).
    pub bits: u32,
}

impl Mode {
    /// The mode `cpu` runs in.
    pub fn of<C: CpuState + ?Sized>(cpu: &C) -> Mode {
        let cs = cpu.segment(Segment::Cs);
        let ia32e = cpu.long_mode_active();
        let bits = if ia32e && cs.l {
            64
        } else if cs.db {
            32
        } else {
            16
        };
        Mode { ia32e, bits }
    }

    /// 64-bit mode.
    pub fn is_64(self) -> bool {
        self.bits == 64
    }
}

/// The bytes at RIP that could be fetched, and why the window ended early.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fetched {
    pub bytes: [u8; MAX_INSN_LEN],
    pub n: usize,
    /// The fault at byte `n`, if the window ended before 15 bytes.
    pub stop: Option<Exception>,
}

/// The linear address of the instruction byte at RIP + `k`.
pub(crate) fn byte_linear<C: CpuState + ?Sized>(
    cpu: &C,
    mode: Mode,
    k: u64,
) -> Result<u64, Exception> {
    if mode.is_64() {
        let a = cpu.rip().wrapping_add(k);
        return if pvops::table::is_canonical(a) {
            Ok(a)
        } else {
            Err(Exception::Gp(0))
        };
    }
    let cs = cpu.segment(Segment::Cs);
    let off = cpu.rip().wrapping_add(k) & 0xffff_ffff;
    segment::linear(Segment::Cs, &cs, off, 1, SegAccess::Fetch, false)
}

/// Fetch up to 15 bytes at CS:RIP.
pub(crate) fn fetch<C: CpuState + ?Sized, M: GuestMemory + ?Sized>(
    cpu: &C,
    mem: &M,
    mode: Mode,
) -> Fetched {
    let mut f = Fetched {
        bytes: [0; MAX_INSN_LEN],
        n: 0,
        stop: None,
    };
    let mut lin = [0u64; MAX_INSN_LEN];
    let mut ok = 0;
    for (k, l) in lin.iter_mut().enumerate() {
        match byte_linear(cpu, mode, k as u64) {
            Ok(a) => *l = a,
            Err(e) => {
                f.stop = Some(e);
                break;
            }
        }
        ok = k + 1;
    }
    let mut k = 0;
    while k < ok {
        let mut end = k + 1;
        while end < ok && lin[end] == lin[end - 1].wrapping_add(1) && lin[end] & 0xfff != 0 {
            end += 1;
        }
        if let Err(pf) = mem.read(lin[k], &mut f.bytes[k..end], Access::Fetch) {
            f.stop = Some(Exception::Pf(pf));
            ok = k;
            break;
        }
        k = end;
    }
    f.n = ok;
    f
}

/// Why decoding failed.
pub(crate) enum DecodeError {
    /// The instruction needs bytes past the fetch window: its fetch fault.
    Fetch(Exception),
    /// Not a valid instruction (the LOCK-prefixed form, if one of ours).
    Invalid(Option<Instruction>),
}

/// Decode the fetched bytes at `mode`'s bitness.
pub(crate) fn decode(f: &Fetched, rip: u64, mode: Mode) -> Result<Instruction, DecodeError> {
    let bytes = &f.bytes[..f.n];
    let mut d = Decoder::with_ip(mode.bits, bytes, rip, DecoderOptions::NONE);
    let i = d.decode();
    if !i.is_invalid() {
        return Ok(i);
    }
    if d.last_error() == DecoderError::NoMoreBytes
        && let Some(e) = f.stop
    {
        return Err(DecodeError::Fetch(e));
    }
    // A LOCK prefix makes a valid instruction invalid.
    let mut d = Decoder::with_ip(mode.bits, bytes, rip, DecoderOptions::NO_INVALID_CHECK);
    let j = d.decode();
    Err(DecodeError::Invalid(
        (!j.is_invalid() && j.has_lock_prefix()).then_some(j),
    ))
}
