//! The stores write-protect mode performs for the guest ([`super::wp`]):
//! `mov r/m, reg|imm` and the read-modify-write `add`, `sub`, `and`, `or`,
//! `xor` (reg or imm source), `inc`, `dec`, with a memory destination of
//! 1, 2, 4 or 8 bytes, and RFLAGS as the CPU leaves them (SDM vol. 2 ADD,
//! SUB, AND, OR, XOR, INC, DEC: OF SF ZF AF PF CF; INC/DEC keep CF; the
//! logical ones clear OF and CF, AF undefined: left clear here).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// What a store does to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Mov,
    Add,
    Sub,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

/// A decoded store.
#[derive(Clone, Copy, Debug)]
pub(super) struct Store {
    /// The destination's linear address.
    pub(super) addr: u64,
    /// Its size in bytes.
    pub(super) size: usize,
    op: Op,
    src: u64,
}

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

impl Store {
    /// The store `i` makes with the registers `regs` (None: not one of
    /// ours).
    pub(super) fn of(i: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<Store> {
        if i.op0_kind() != OpKind::Memory {
            return None;
        }
        let (op, size, src) = match i.code() {
            Code::Inc_rm8 => (Op::Inc, 1, 1),
            Code::Inc_rm16 => (Op::Inc, 2, 1),
            Code::Inc_rm32 => (Op::Inc, 4, 1),
            Code::Inc_rm64 => (Op::Inc, 8, 1),
            Code::Dec_rm8 => (Op::Dec, 1, 1),
            Code::Dec_rm16 => (Op::Dec, 2, 1),
            Code::Dec_rm32 => (Op::Dec, 4, 1),
            Code::Dec_rm64 => (Op::Dec, 8, 1),
            _ => {
                let op = match i.mnemonic() {
                    Mnemonic::Mov => Op::Mov,
                    Mnemonic::Add => Op::Add,
                    Mnemonic::Sub => Op::Sub,
                    Mnemonic::And => Op::And,
                    Mnemonic::Or => Op::Or,
                    Mnemonic::Xor => Op::Xor,
                    _ => return None,
                };
                let (size, src) = match i.op1_kind() {
                    OpKind::Register => gpr(i.op1_register(), regs)?,
                    OpKind::Immediate8 => (1, i.immediate(1)),
                    OpKind::Immediate16 | OpKind::Immediate8to16 => (2, i.immediate(1)),
                    OpKind::Immediate32 | OpKind::Immediate8to32 => (4, i.immediate(1)),
                    OpKind::Immediate32to64 | OpKind::Immediate8to64 => (8, i.immediate(1)),
                    _ => return None,
                };
                (op, size, src)
            }
        };
        if i.has_lock_prefix() && op == Op::Mov {
            return None;
        }
        let addr = i.virtual_address(0, 0, |r, _, _| match r {
            Register::FS => Some(sregs.fs.base),
            Register::GS => Some(sregs.gs.base),
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            r => gpr(r, regs).map(|(_, v)| v),
        })?;
        Some(Store {
            addr,
            size,
            op,
            src,
        })
    }

    /// The value to store over `old` (the destination's bytes, little
    /// endian, zero-extended) and RFLAGS after.
    pub(super) fn apply(&self, old: u64, rflags: u64) -> (u64, u64) {
        let bits = self.size as u32 * 8;
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let (a, b) = (old & mask, self.src & mask);
        let top = |v: u64| (v >> (bits - 1)) & 1 != 0;
        let (r, cf, of, af) = match self.op {
            Op::Mov => return (b, rflags),
            Op::Add | Op::Inc => {
                let r = a.wrapping_add(b) & mask;
                (r, r < a, top((a ^ r) & (b ^ r)), (a ^ b ^ r) & 0x10 != 0)
            }
            Op::Sub | Op::Dec => {
                let r = a.wrapping_sub(b) & mask;
                (r, a < b, top((a ^ b) & (a ^ r)), (a ^ b ^ r) & 0x10 != 0)
            }
            Op::And => (a & b, false, false, false),
            Op::Or => (a | b, false, false, false),
            Op::Xor => (a ^ b, false, false, false),
        };
        let mut f = rflags & !(PF | AF | ZF | SF | OF);
        if !matches!(self.op, Op::Inc | Op::Dec) {
            f = (f & !CF) | u64::from(cf);
        }
        let bit = |c: bool, b: u64| if c { b } else { 0 };
        f |= bit(of, OF)
            | bit(af, AF)
            | bit(r == 0, ZF)
            | bit(top(r), SF)
            | bit((r as u8).count_ones().is_multiple_of(2), PF);
        (r, f)
    }
}

/// A general-purpose register's (size in bytes, value) (the high-byte
/// registers shifted down).
fn gpr(r: Register, regs: &kvm_regs) -> Option<(usize, u64)> {
    let all = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    let n = r as u32;
    let in_range = |first: Register, last: Register| {
        (first as u32..=last as u32)
            .contains(&n)
            .then(|| (n - first as u32) as usize)
    };
    if let Some(k) = in_range(Register::AL, Register::R15L) {
        // AL CL DL BL AH CH DH BH SPL BPL SIL DIL R8L..R15L.
        return Some(match k {
            0..4 => (1, all[k]),
            4..8 => (1, all[k - 4] >> 8),
            _ => (1, all[k - 4]),
        });
    }
    [
        (2, Register::AX, Register::R15W),
        (4, Register::EAX, Register::R15D),
        (8, Register::RAX, Register::R15),
    ]
    .into_iter()
    .find_map(|(size, first, last)| in_range(first, last).map(|k| (size, all[k])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(bytes: &[u8], regs: &kvm_regs) -> Store {
        let i =
            iced_x86::Decoder::with_ip(64, bytes, 0x1000, iced_x86::DecoderOptions::NONE).decode();
        Store::of(&i, regs, &kvm_sregs::default()).expect("a store")
    }

    /// Flags checked against the SDM's definitions on edge values.
    #[test]
    fn arithmetic_flags_follow_the_sdm() {
        let regs = kvm_regs {
            rbx: 0x2000,
            rax: 0x7f,
            ..Default::default()
        };
        // inc qword [rbx]: 0xffff_ffff_ffff_ffff + 1 = 0, ZF PF AF, CF kept.
        let s = store(&[0x48, 0xff, 0x03], &regs);
        assert_eq!((s.addr, s.size), (0x2000, 8));
        assert_eq!(s.apply(u64::MAX, CF), (0, CF | ZF | PF | AF));
        // add byte [rbx], al: 0x01 + 0x7f = 0x80: OF SF AF, not CF.
        let s = store(&[0x00, 0x03], &regs);
        assert_eq!(s.size, 1);
        assert_eq!(s.apply(1, CF), (0x80, OF | SF | AF));
        // sub dword [rbx], 1 from 0: borrow (CF), SF, AF, PF (0xff parity even).
        let s = store(&[0x83, 0x2b, 0x01], &regs);
        assert_eq!(s.size, 4);
        assert_eq!(s.apply(0, 0), (0xffff_ffff, CF | SF | AF | PF));
        // mov qword [rip+0x10], rax: RIP-relative from the next instruction.
        let s = store(&[0x48, 0x89, 0x05, 0x10, 0, 0, 0], &regs);
        assert_eq!((s.addr, s.size), (0x1000 + 7 + 0x10, 8));
        assert_eq!(s.apply(5, OF), (0x7f, OF));
        // mov [rbx], ah.
        let regs = kvm_regs {
            rbx: 0x2000,
            rax: 0xab00,
            ..Default::default()
        };
        assert_eq!(store(&[0x88, 0x23], &regs).apply(0, 0), (0xab, 0));
    }

    /// The host CPU runs the same read-modify-write on the same values:
    /// result and OF SF ZF PF CF (AF too, except for the logical ones,
    /// where it is undefined) must agree.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn flags_agree_with_the_host_cpu() {
        macro_rules! host {
            ($insn:literal, $a:expr, $b:expr, $f0:expr) => {{
                let mut m: u64 = $a;
                let f: u64;
                // SAFETY: the instruction writes only `m` (a local) and
                // the flags, which are pushed and popped on the stack.
                unsafe {
                    core::arch::asm!(
                        "push {f0}", "popfq",
                        $insn,
                        "pushfq", "pop {f}",
                        f0 = in(reg) $f0,
                        b = in(reg) $b,
                        m = in(reg) &mut m as *mut u64,
                        f = lateout(reg) f,
                    );
                }
                (m, f & (CF | PF | AF | ZF | SF | OF))
            }};
        }
        let regs = kvm_regs {
            rbx: 0x2000,
            ..Default::default()
        };
        let edges = [
            0,
            1,
            0xf,
            0x10,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
            0x1234_5678_9abc_def0,
        ];
        let code = |op: u8| [0x48, op, 0x03]; // op qword [rbx], rax
        for &a in &edges {
            for &b in &edges {
                for f0 in [0u64, CF] {
                    let regs = kvm_regs { rax: b, ..regs };
                    let cases: [(&[u8], (u64, u64), bool); 7] = [
                        (
                            &code(0x01),
                            host!("add qword ptr [{m}], {b}", a, b, f0 | 2),
                            true,
                        ),
                        (
                            &code(0x29),
                            host!("sub qword ptr [{m}], {b}", a, b, f0 | 2),
                            true,
                        ),
                        (
                            &code(0x21),
                            host!("and qword ptr [{m}], {b}", a, b, f0 | 2),
                            false,
                        ),
                        (
                            &code(0x09),
                            host!("or qword ptr [{m}], {b}", a, b, f0 | 2),
                            false,
                        ),
                        (
                            &code(0x31),
                            host!("xor qword ptr [{m}], {b}", a, b, f0 | 2),
                            false,
                        ),
                        (
                            &[0x48, 0xff, 0x03],
                            host!("inc qword ptr [{m}] /* {b} */", a, b, f0 | 2),
                            true,
                        ),
                        (
                            &[0x48, 0xff, 0x0b],
                            host!("dec qword ptr [{m}] /* {b} */", a, b, f0 | 2),
                            true,
                        ),
                    ];
                    for (bytes, (want, wf), af_defined) in cases {
                        let (got, gf) = store(bytes, &regs).apply(a, f0);
                        let mask = if af_defined { !0 } else { !AF };
                        assert_eq!(
                            (got, gf & mask),
                            (want, wf & mask),
                            "{bytes:x?} a={a:#x} b={b:#x} f0={f0:#x}"
                        );
                    }
                }
            }
        }
    }
}
