//! The real hypercall transport (`pvops_xen::hypercall_page::call`) against
//! a hypercall page built here, in an executable mapping: slot selection
//! (`page + nr * 32`) and the 64-bit argument registers (rdi, rsi, rdx, r10,
//! r8 — a transport passing the fifth argument in r9 fails this test).

use pvops_xen::XenPlatform;
use pvops_xen::hypercall_page::{KernelPlatform, STUB_SIZE, call};

/// rax = rdi + 2*rsi + 4*rdx + 8*r10 + 16*r8; ret
const WEIGHTED_SUM: [u8; 20] = [
    0x48, 0x8d, 0x04, 0x77, // lea rax, [rdi + rsi*2]
    0x48, 0x8d, 0x04, 0x90, // lea rax, [rax + rdx*4]
    0x4a, 0x8d, 0x04, 0xd0, // lea rax, [rax + r10*8]
    0x49, 0xc1, 0xe0, 0x04, // shl r8, 4
    0x4c, 0x01, 0xc0, // add rax, r8
    0xc3, // ret
];
/// mov rax, -38 (-ENOSYS); ret
const ENOSYS: [u8; 8] = [0x48, 0xc7, 0xc0, 0xda, 0xff, 0xff, 0xff, 0xc3];

struct Page(*mut u8);

impl Page {
    fn new() -> Page {
        // SAFETY: a fresh anonymous private mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of an executable page");
        let page = Page(p.cast());
        for nr in 0..(4096 / STUB_SIZE as usize) {
            page.put(nr, &ENOSYS);
        }
        page
    }

    fn put(&self, nr: usize, code: &[u8]) {
        // SAFETY: nr < 128 and code.len() <= 32 keep the copy in the page.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                self.0.add(nr * STUB_SIZE as usize),
                code.len(),
            )
        };
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.0.cast(), 4096) };
    }
}

#[test]
fn slot_and_argument_registers() {
    let page = Page::new();
    page.put(13, &WEIGHTED_SUM);
    let base = page.0 as u64;
    // SAFETY: the page holds valid stubs in every slot.
    unsafe {
        assert_eq!(
            call(base, 13, [1, 10, 100, 1000, 10000]),
            1 + 20 + 400 + 8000 + 160_000
        );
        assert_eq!(
            call(base, 14, [1, 2, 3, 4, 5]),
            -38,
            "other slots are separate"
        );
        assert_eq!(call(base, 0, [0; 5]), -38);
    }
}

#[test]
fn kernel_platform_translates_through_the_p2m() {
    let page = Page::new();
    page.put(2, &WEIGHTED_SUM);
    static P2M: [u64; 4] = [0x1d0, 0x1d3, 0x1d6, 0x1d9];
    let scratch = Box::leak(Box::new([0u64; 512])).as_mut_ptr() as u64;
    // SAFETY: `page` holds the test stubs a hypercall slot calls; the
    // scratch buffer is a leaked 4096-byte buffer of this process.
    let k =
        unsafe { KernelPlatform::new(page.0 as u64, &P2M, 0xffff_8880_0000_0000, (scratch, 4096)) };
    assert_eq!(k.virt_to_mfn(0xffff_8880_0000_2123), Some(0x1d6));
    assert_eq!(k.virt_to_mfn(0xffff_8880_0000_4000), None, "past the p2m");
    assert_eq!(k.virt_to_mfn(0x1000), None, "below the direct map");
    assert_eq!(k.scratch(), (scratch, 4096));
    // SAFETY: slot 2 holds the test stub.
    assert_eq!(unsafe { k.hypercall(2, [1, 1, 1, 1, 1]) }, 31);
}
