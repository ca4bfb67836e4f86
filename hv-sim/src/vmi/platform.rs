//! [`pvops_vmi::VmiPlatform`] for the simulated hypervisor: the in-process
//! transport. Only the guest crate's trait is used here; the pseudo-call
//! values the ROM's jump points exit with are hv-sim's ([`super::abi::port`]).
//!
//! `call(entry, args)` ([`VmiHypervisor::call_entry`]) does what the CPU would do with the ROM's stub at
//! `entry`: it decodes the bytes there (`mov eax, n; out 0xE6, eax; ret`)
//! and performs the port exit for call `n` with the argument registers. An
//! address that is not the start of a stub in the ROM image gets `-EFAULT`
//! and a `BadEntry` trace event (on hardware it would crash the guest).

//!
//! The probe ([`ReadPhys`]) works over any [`GuestMemory`]. The backend
//! itself ([`VmiPlatform`]) only over [`HostGuestMemory`]: it dereferences
//! the table GetGDT reports, which is a host address only there.

use pvops_vmi::{ReadPhys, VmiPlatform};

use super::abi::port::{PSEUDO_GET_RELOC, PSEUDO_INIT};

use super::machine::{EFAULT, VmiHypervisor};
use super::{GuestMemory, HostGuestMemory};

impl<M: GuestMemory> ReadPhys for VmiHypervisor<M> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        VmiHypervisor::read_phys(self, addr, buf)
    }
}

// SAFETY: guest linear address = host address (`HostGuestMemory`), and
// `HostGuestMemory::new`'s contract makes every pointer the guest passes in
// a call valid host memory for what the call reads or writes, including
// the tables SetGDT/SetIDT load, which GetGDT/GetIDT report back unchanged
// (hv-sim's virtual registers change only through those calls). hv-sim
// touches guest memory only through that `GuestMemory`, so a call reads and
// writes only what its arguments name; `get_reloc` answers CALL_REL only
// with the ROM's own stubs, which `call` decodes (anything else is -EFAULT).
// Over another memory (`RamMemory`, a KVM guest's RAM) GetGDT reports
// guest-physical addresses, so those get `ReadPhys` only.
unsafe impl VmiPlatform for VmiHypervisor<HostGuestMemory> {
    unsafe fn get_reloc(&self, jump_point: u64, nr: u32) -> (u64, u8) {
        self.reloc_query(jump_point, nr)
    }

    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        self.call_entry(entry, args)
    }
}

/// The in-process transport over any memory: what [`VmiPlatform`] does, as
/// safe methods (hv-sim decodes the entry instead of jumping to it, and
/// touches guest memory only through `M`, so no argument is dangerous).
impl<M: GuestMemory> VmiHypervisor<M> {
    /// GetRelocationInfo through the jump point `jump_point`:
    /// `(eip, type byte)`, or `(0, 0xFF)` and a `BadEntry` trace event if
    /// `jump_point` is not the ROM's GetRelocationInfo stub.
    pub fn reloc_query(&self, jump_point: u64, nr: u32) -> (u64, u8) {
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
                self.bad_entry(jump_point, why.to_string());
                (0, 0xFF)
            }
        }
    }

    /// Call the ROM entry point `entry`: rax, or `-EFAULT` and a `BadEntry`
    /// trace event if `entry` is not the start of one of the ROM's stubs.
    pub fn call_entry(&self, entry: u64, args: [u64; 4]) -> u64 {
        match self.decode_entry(entry) {
            Ok(PSEUDO_INIT) => self.init(),
            Ok(PSEUDO_GET_RELOC) => self.relocation(args[0] as u32).0,
            Ok(nr) => self.vmi_call(nr, args),
            Err(why) => {
                self.bad_entry(entry, why.to_string());
                (-EFAULT) as u64
            }
        }
    }
}
