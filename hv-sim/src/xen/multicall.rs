//! `common/multicall.c`: `do_multicall`, with the 4.17 and unstable
//! result-store rules.

use super::*;

impl Inner {
    pub(super) fn multicall(&mut self, v: usize, list: u64, nr: u64, depth: u32) -> Hc {
        if self.vcpus[v].in_multicall {
            return Err(fail(EINVAL, "multicall inside a multicall"));
        }
        let esize: u64 = match self.abi {
            Abi::Pv64 => 64,
            Abi::Pv32 => 32,
        };
        // 4.17: `do_multicall(..., uint32_t nr_calls)`: the count is cut to
        // 32 bits (master widened it to unsigned long, d2bbb0d455).
        let nr = match self.version {
            XenVersion::V4_17 => nr & 0xffff_ffff,
            XenVersion::Unstable => nr,
        };
        if !(nr < u64::MAX / esize && self.addr_ok(list)) {
            return Err(fail(
                EFAULT,
                format!("multicall list {list:#x} x {nr} is not a guest range"),
            ));
        }
        self.vcpus[v].in_multicall = true;
        let r = self.multicall_body(v, list, nr, depth, esize);
        self.vcpus[v].in_multicall = false;
        r
    }

    pub(super) fn multicall_body(
        &mut self,
        v: usize,
        list: u64,
        nr: u64,
        depth: u32,
        esize: u64,
    ) -> Hc {
        for i in 0..nr {
            let va = list.wrapping_add(i * esize);
            // `if ( i && hypercall_preempt_check() )`: the multicall goes
            // on from entry i when the guest re-executes it.
            if i > 0 && self.work >= PREEMPT_BUDGET {
                return Ok(self.continuation(nr::MULTICALL, [va, nr - i, 0, 0, 0, 0]));
            }
            self.work += 1;
            let mut b = [0u8; 64];
            if self.load_bytes(va, &mut b[..esize as usize]).is_err() {
                return Err(fail(
                    EFAULT,
                    format!("multicall entry {i} at {va:#x} cannot be read"),
                ));
            }
            let w = |k: usize| -> u64 {
                match esize {
                    64 => u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8])),
                    _ => u64::from(u32::from_le_bytes(
                        b[k * 4..k * 4 + 4].try_into().unwrap_or([0; 4]),
                    )),
                }
            };
            let op = w(0);
            // args[5] is ignored by Xen.
            let args = [w(2), w(3), w(4), w(5), w(6), 0];
            let result = self.dispatch(v, op, args, depth + 1);
            // The result field: 4.17 writes it with one 8-byte store (a
            // fault writes nothing); master does so only when it is 8-byte
            // aligned and otherwise copies bytes up to the fault (67a8e5721e).
            let whole = match self.version {
                XenVersion::V4_17 => true,
                XenVersion::Unstable => (va + 8).is_multiple_of(8),
            };
            let ok = match self.abi {
                Abi::Pv64 => self.store_bytes(va + 8, &result.to_le_bytes(), whole),
                Abi::Pv32 => self.store_bytes(va + 4, &(result as i32).to_le_bytes(), false),
            };
            // XSA-213: an iret sub-call ends the multicall; its result
            // (written back best effort) becomes the multicall's own.
            if op == nr::IRET {
                let rc = match self.abi {
                    Abi::Pv64 => result,
                    Abi::Pv32 => i64::from(result as i32),
                };
                self.note(Change::MulticallIret { entry: i, rc });
                return Ok(rc);
            }
            if ok.is_err() {
                self.preempted = None;
                return Err(fail(
                    EFAULT,
                    format!(
                        "result of multicall entry {i} cannot be written to {:#x} (the call took effect)",
                        va + esize / 8
                    ),
                ));
            }
            // A preempted sub-call: its continuation's arguments are copied
            // into the entry (the whole entry, in the guest's layout), and
            // the multicall continues from this entry.
            if let Some((_, cont)) = self.preempted.take() {
                let mut e = b;
                for (k, a) in cont.iter().enumerate() {
                    match esize {
                        64 => e[16 + k * 8..24 + k * 8].copy_from_slice(&a.to_le_bytes()),
                        _ => e[8 + k * 4..12 + k * 4].copy_from_slice(&(*a as u32).to_le_bytes()),
                    }
                }
                match esize {
                    64 => e[8..16].copy_from_slice(&result.to_le_bytes()),
                    _ => e[4..8].copy_from_slice(&(result as u32).to_le_bytes()),
                }
                if self.store_bytes(va, &e[..esize as usize], false).is_err() {
                    return Err(fail(
                        EFAULT,
                        format!(
                            "multicall entry {i} at {va:#x}: its continuation cannot be written back (the call is cancelled)"
                        ),
                    ));
                }
                return Ok(self.continuation(nr::MULTICALL, [va, nr - i, 0, 0, 0, 0]));
            }
        }
        Ok(0)
    }
}
