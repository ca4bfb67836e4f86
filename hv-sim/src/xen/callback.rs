//! `arch/x86/pv/callback.c`: `do_set_trap_table`, the virtual IDT.

use super::*;

impl Inner {
    pub(super) fn set_trap_table(&mut self, v: usize, table: u64) -> Hc {
        if table == 0 {
            self.vcpus[v].trap_table = vec![TrapInfo::default(); 256];
            self.note(Change::TrapTableCleared);
            return Ok(0);
        }
        let size = match self.abi {
            Abi::Pv64 => 16,
            Abi::Pv32 => 8,
        };
        let krpl = self.abi.krpl() as u16;
        let mut i: u64 = 0;
        loop {
            let va = table.wrapping_add(i * size);
            let mut b = [0u8; 16];
            if self.load_bytes(va, &mut b[..size as usize]).is_err() {
                return Err(fail(
                    EFAULT,
                    format!(
                        "trap_info entry {i} at {va:#x} cannot be read ({i} entries installed)"
                    ),
                ));
            }
            let vector = b[0];
            let flags = b[1];
            let mut cs = u16::from_le_bytes([b[2], b[3]]);
            let address = match self.abi {
                Abi::Pv64 => u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])),
                Abi::Pv32 => u64::from(u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]))),
            };
            if address == 0 {
                return Ok(0);
            }
            if self.abi == Abi::Pv64 && !is_canonical(address) {
                return Err(fail(
                    EINVAL,
                    format!(
                        "trap_info entry {i} (vector {vector}) has non-canonical address {address:#x} ({i} entries installed)"
                    ),
                ));
            }
            if cs & 3 < krpl {
                cs = (cs & !3) | krpl;
            }
            let t = TrapInfo {
                vector,
                flags,
                cs,
                address,
            };
            self.vcpus[v].trap_table[vector as usize] = t;
            self.note(Change::Trap {
                vector,
                cs,
                address,
                flags,
            });
            i += 1;
            if self.preempt_check() {
                let next = table.wrapping_add(i * size);
                return Ok(self.continuation(nr::SET_TRAP_TABLE, [next, 0, 0, 0, 0, 0]));
            }
        }
    }
}
