//! [`pvops_vmi::VmiPlatform`] for the simulated hypervisor: the in-process
//! transport. Only the guest crate's trait is used here; the pseudo-call
//! values the ROM's jump points exit with are hv-sim's ([`super::abi::port`]).
//!
//! `call(entry, args)` does what the CPU would do with the ROM's stub at
//! `entry`: it decodes the bytes there (`mov eax, n; out 0xE6, eax; ret`)
//! and performs the port exit for call `n` with the argument registers. An
//! address that is not the start of a stub in the ROM image gets `-EFAULT`
//! and a `BadEntry` trace event (on hardware it would crash the guest).

use pvops_vmi::VmiPlatform;

use super::abi::port::{PSEUDO_GET_RELOC, PSEUDO_INIT};

use super::machine::{EFAULT, GuestMemory, VmiHypervisor};

impl<M: GuestMemory> VmiPlatform for VmiHypervisor<M> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        VmiHypervisor::read_phys(self, addr, buf)
    }

    unsafe fn get_reloc(&self, jump_point: u64, nr: u32) -> (u64, u8) {
        match self.decode_entry(jump_point) {
            Ok(PSEUDO_GET_RELOC) => self.relocation(nr),
            Ok(v) => {
                self.bad_entry(
                    jump_point,
                    format!("the stub there exits with eax = {v:#x}, not GetRelocationInfo"),
                );
                (0, 0xFF)
            }
            Err(why) => {
                self.bad_entry(jump_point, why);
                (0, 0xFF)
            }
        }
    }

    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        match self.decode_entry(entry) {
            Ok(PSEUDO_INIT) => self.init(),
            Ok(PSEUDO_GET_RELOC) => self.relocation(args[0] as u32).0,
            Ok(nr) => self.vmi_call(nr, args),
            Err(why) => {
                self.bad_entry(entry, why);
                (-EFAULT) as u64
            }
        }
    }
}
