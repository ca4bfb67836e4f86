//! The write-protect store emulation on guest memory and the personality's
//! page tables (no vCPU): a store that continues into a page the guest
//! cannot write raises #PF for that page and writes nothing.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::{TrapGuest, TrapMode};
use super::{StoreDone, TrapCpu};
use crate::emulate::PageFault;
use crate::kvm::Config;
use crate::kvm::layout::{PML4, PTE_RW, RING3_PT_BASE};
use crate::kvm::paging::PagingMemory;

/// Where the test puts the instruction (guest RAM, mapped U|RW).
const CODE: u64 = 0x20_0000;
/// A page the test makes read-only for the guest, after a writable one.
const READ_ONLY: u64 = 0x30_1000;
/// What every byte around the stores holds first.
const FILL: u8 = 0xaa;

struct T {
    mem: GuestMemoryMmap,
    g: TrapGuest,
}

fn setup() -> T {
    let cfg = Config {
        mem_size: 16 << 20,
        ..Config::default()
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), cfg.mem_size)]).expect("mmap");
    let g = TrapGuest::new(&mem, &cfg, TrapMode::WriteProtect).expect("layout");
    // READ_ONLY: RW cleared in its PTE (the guest's own protection).
    let pte = RING3_PT_BASE + (READ_ONLY >> 12) * 8;
    let e: u64 = mem.read_obj(GuestAddress(pte)).expect("pte");
    mem.write_obj(e & !PTE_RW, GuestAddress(pte)).expect("pte");
    for at in [0x7ff0, READ_ONLY - 16, 0x40_0ff0] {
        mem.write_slice(&[FILL; 32], GuestAddress(at))
            .expect("fill");
    }
    T { mem, g }
}

fn seg(typ: u8, l: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x33,
        type_: typ,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl T {
    /// Run `code` at [`CODE`] with rax = `addr`, rdx = the value, as the
    /// write fault at `cr2` hands it over.
    fn store(&mut self, code: &[u8], addr: u64, cr2: u64) -> (StoreDone, kvm_regs) {
        self.mem
            .write_slice(code, GuestAddress(CODE))
            .expect("code");
        let mut sregs = kvm_sregs {
            cr3: PML4,
            efer: (1 << 8) | (1 << 10),
            cs: seg(0xb, 1),
            ..Default::default()
        };
        (sregs.ds, sregs.es, sregs.ss) = (seg(3, 0), seg(3, 0), seg(3, 0));
        let regs = kvm_regs {
            rip: CODE,
            rax: addr,
            rdx: 0x1122_3344_5566_7788,
            rflags: 0x202,
            ..Default::default()
        };
        let mut cpu = TrapCpu::new(regs, &sregs, self.g.dt);
        let mem = PagingMemory::new(&self.mem, PML4);
        let done = self
            .g
            .emulate_store(&mut cpu, &sregs, &mem, cr2)
            .unwrap_or_else(|e| panic!("the guest stopped: {e}"));
        (done, cpu.regs)
    }

    fn bytes(&self, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.mem.read_slice(&mut b, GuestAddress(at)).expect("read");
        b
    }
}

/// `mov [rax], rdx`.
const MOV: [u8; 3] = [0x48, 0x89, 0x10];
/// `inc qword [rax]` (a read-modify-write).
const INC: [u8; 3] = [0x48, 0xff, 0x00];

/// Into the not-present page after the boot-stack page (0x8000 is not
/// mapped for the guest): #PF, CR2 = 0x8000, W (not P), for the plain
/// store and the read-modify-write alike; no byte of the first page
/// written, the registers as they were (RIP at the instruction).
#[test]
fn a_store_into_a_not_present_page_is_a_page_fault_for_it() {
    let mut t = setup();
    for code in [MOV, INC] {
        let (done, regs) = t.store(&code, 0x7ffc, 0x7ffc);
        match done {
            StoreDone::Faulted(pf) => assert_eq!(
                pf,
                PageFault {
                    addr: 0x8000,
                    error_code: 2
                },
                "{code:x?}"
            ),
            other => panic!("{code:x?}: {}", name(&other)),
        }
        assert_eq!(t.bytes(0x7ff0, 16), vec![FILL; 16], "nothing written");
        assert_eq!((regs.rip, regs.rflags), (CODE, 0x202));
    }
}

/// Into a present page the guest made read-only: #PF P|W, CR2 its first
/// byte, nothing written.
#[test]
fn a_store_into_a_read_only_page_is_a_protection_fault_for_it() {
    let mut t = setup();
    let (done, _) = t.store(&MOV, READ_ONLY - 2, READ_ONLY - 2);
    match done {
        StoreDone::Faulted(pf) => assert_eq!(
            pf,
            PageFault {
                addr: READ_ONLY,
                error_code: 3
            }
        ),
        other => panic!("{}", name(&other)),
    }
    assert_eq!(t.bytes(READ_ONLY - 16, 32), vec![FILL; 32]);
}

/// Across two writable pages, and within one: stored, RIP past it.
#[test]
fn a_store_the_guest_may_make_is_made() {
    let mut t = setup();
    let (done, regs) = t.store(&MOV, 0x40_0ffc, 0x40_0ffc);
    assert!(matches!(done, StoreDone::Stored(0, 3)), "{}", name(&done));
    assert_eq!(
        t.bytes(0x40_0ffc, 8),
        0x1122_3344_5566_7788u64.to_le_bytes()
    );
    assert_eq!(regs.rip, CODE, "the caller advances RIP");
    // (0x7ff0 lies in the reset GDTR's range: a slot counts as touched.)
    let (done, _) = t.store(&INC, 0x7ff0, 0x7ff0);
    assert!(matches!(done, StoreDone::Stored(_, 3)), "{}", name(&done));
    assert_eq!(t.bytes(0x7ff0, 8), 0xaaaa_aaaa_aaaa_aaabu64.to_le_bytes());
}

fn name(d: &StoreDone) -> String {
    match d {
        StoreDone::Changed => "changed".into(),
        StoreDone::Faulted(pf) => format!("faulted {pf:?}"),
        StoreDone::Stored(t, l) => format!("stored touched={t} len={l}"),
    }
}
