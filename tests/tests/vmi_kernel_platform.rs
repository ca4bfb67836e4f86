//! The VMI kernel transport (`pvops_vmi::kernel::KernelPlatform`) against
//! code in an executable page: the SysV argument registers of a ROM call,
//! GetRelocationInfo's rax/rdx pair, and physical reads for the probe.

use pvops_vmi::kernel::KernelPlatform;
use pvops_vmi::{ReadPhys, VmiPlatform};

/// rax = rdi + 2*rsi + 4*rdx + 8*rcx; ret
const WEIGHTED_SUM: [u8; 13] = [
    0x48, 0x8d, 0x04, 0x77, // lea rax, [rdi + rsi*2]
    0x48, 0x8d, 0x04, 0x90, // lea rax, [rax + rdx*4]
    0x48, 0x8d, 0x04, 0xc8, // lea rax, [rax + rcx*8]
    0xc3, // ret
];
/// rax = rdi << 4 (the "eip"); edx = 1 (CALL_REL); ret
const RELOC: [u8; 13] = [
    0x48, 0x89, 0xf8, // mov rax, rdi
    0x48, 0xc1, 0xe0, 0x04, // shl rax, 4
    0xba, 0x01, 0x00, 0x00, 0x00, // mov edx, 1
    0xc3, // ret
];

fn exec_page(code: &[(usize, &[u8])]) -> *mut u8 {
    // SAFETY: fresh anonymous mapping, checked below.
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
    assert_ne!(p, libc::MAP_FAILED);
    for (off, bytes) in code {
        // SAFETY: offsets and lengths used below stay inside the page.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>().add(*off), bytes.len())
        };
    }
    p.cast()
}

#[test]
fn rom_calls_use_the_sysv_registers() {
    let page = exec_page(&[(0x100, &WEIGHTED_SUM), (0x88, &RELOC)]);
    let base = page as u64;
    // SAFETY: phys_offset 0 is never used to read here; the calls target
    // the stubs written above.
    let k = unsafe { KernelPlatform::new(0) };
    // SAFETY: the entry points are the stubs above.
    unsafe {
        assert_eq!(
            k.call(base + 0x100, [1, 10, 100, 1000]),
            1 + 20 + 400 + 8000
        );
        assert_eq!(k.get_reloc(base + 0x88, 11), (11 << 4, 1));
    }
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(page.cast(), 4096) };
}

#[test]
fn physical_reads_go_through_the_offset() {
    let mem: Vec<u8> = (0..=255u8).collect();
    // Map "physical" 0xC0000 onto the vector.
    // SAFETY: only physical 0xC0000..0xC0100 is read below.
    let k = unsafe { KernelPlatform::new((mem.as_ptr() as u64).wrapping_sub(0xC0000)) };
    let mut buf = [0u8; 4];
    assert!(k.read_phys(0xC0010, &mut buf));
    assert_eq!(buf, [16, 17, 18, 19]);
}

/// Issue 9: `read_phys` is safe, but `new`'s contract maps only the
/// option-ROM window, so a read outside it (or running past its end) must
/// be refused without touching memory. It used to dereference any address:
/// `read_phys(0x10, ..)` segfaulted here.
#[test]
fn physical_reads_outside_the_rom_window_are_refused() {
    let mem: Vec<u8> = vec![0xAB; 0x20000];
    // SAFETY: the window 0xC0000..0xE0000 is the vector's 128 KiB.
    let k = unsafe { KernelPlatform::new((mem.as_ptr() as u64).wrapping_sub(0xC0000)) };
    let mut buf = [0u8; 4];
    for addr in [
        0,
        0x10,
        0xBFFFF,
        0xDFFFD,
        0xE0000,
        0xFFFF_FFFF,
        u64::MAX - 1,
    ] {
        assert!(!k.read_phys(addr, &mut buf), "{addr:#x}");
    }
    assert!(k.read_phys(0xC0000, &mut buf));
    assert!(k.read_phys(0xDFFFC, &mut buf));
    assert_eq!(buf, [0xAB; 4]);
    // The probe over it finds nothing (no ROM signature), and says so.
    assert!(pvops_vmi::rom::probe(&k).is_err());
}
