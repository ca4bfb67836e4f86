//! Const descriptor presets, with the values Linux uses.
//!
//! The x86_64 values are those of Linux's `gdt_page` in
//! `arch/x86/kernel/cpu/common.c` (`GDT_ENTRY_INIT(0xa09b, 0, 0xfffff)` and
//! friends: accessed bit pre-set so the CPU never writes the GDT to set it);
//! the i386 values are Linux's 32-bit `gdt_page` (`GDT_ENTRY_INIT(0xc09a, 0,
//! 0xfffff)` and friends: accessed bit clear). The tests below compare each
//! preset, built from fields, with the literal 64-bit value.
//!
//! [`LINUX_X86_64_GDT`] is the whole initial GDT of x86_64 Linux, and
//! [`KERNEL_CS`] & co. its selectors (`asm/segment.h`), so a kernel that
//! follows Linux's layout (which [`GdtLayout::LINUX_X86_64`] describes for
//! the backends) does not build it by hand:
//!
//! ```
//! use pvops::{DescriptorStorage, presets};
//!
//! static GDT: DescriptorStorage<16> = DescriptorStorage::new(presets::LINUX_X86_64_GDT);
//! assert_eq!(GDT.read(presets::KERNEL_CS.index() as usize), Some(presets::KERNEL_CODE64));
//! assert_eq!(presets::USER_CS.bits(), 0x33);
//! ```

use crate::builder::GdtBuilder;
use crate::descriptor::Descriptor;
use crate::ops::GdtLayout;
use crate::selector::{Ring, Selector};

/// 64-bit kernel code (`__KERNEL_CS` on x86_64): `0x00af9b000000ffff`.
pub const KERNEL_CODE64: Descriptor = Descriptor::code(Ring::Ring0, true).with_accessed();
/// 32-bit kernel code in a 64-bit kernel (`GDT_ENTRY_KERNEL32_CS`): `0x00cf9b000000ffff`.
pub const KERNEL_CODE32: Descriptor = Descriptor::code(Ring::Ring0, false).with_accessed();
/// Kernel data (`__KERNEL_DS` on x86_64): `0x00cf93000000ffff`.
pub const KERNEL_DATA: Descriptor = Descriptor::data(Ring::Ring0).with_accessed();
/// 64-bit user code (`__USER_CS`): `0x00affb000000ffff`.
pub const USER_CODE64: Descriptor = Descriptor::code(Ring::Ring3, true).with_accessed();
/// 32-bit user code in a 64-bit kernel (`__USER32_CS`): `0x00cffb000000ffff`.
pub const USER_CODE32: Descriptor = Descriptor::code(Ring::Ring3, false).with_accessed();
/// User data (`__USER_DS`): `0x00cff3000000ffff`.
pub const USER_DATA: Descriptor = Descriptor::data(Ring::Ring3).with_accessed();

/// i386 kernel code (`__KERNEL_CS` on 32-bit Linux): `0x00cf9a000000ffff`.
pub const I386_KERNEL_CODE: Descriptor = Descriptor::code(Ring::Ring0, false);
/// i386 kernel data: `0x00cf92000000ffff`.
pub const I386_KERNEL_DATA: Descriptor = Descriptor::data(Ring::Ring0);
/// i386 user code: `0x00cffa000000ffff`.
pub const I386_USER_CODE: Descriptor = Descriptor::code(Ring::Ring3, false);
/// i386 user data: `0x00cff2000000ffff`.
pub const I386_USER_DATA: Descriptor = Descriptor::data(Ring::Ring3);

/// `__KERNEL32_CS` (`GDT_ENTRY_KERNEL32_CS` = 1): 0x08.
pub const KERNEL32_CS: Selector = Selector::gdt(1, Ring::Ring0);
/// `__KERNEL_CS` (`GDT_ENTRY_KERNEL_CS` = 2): 0x10.
pub const KERNEL_CS: Selector = Selector::gdt(2, Ring::Ring0);
/// `__KERNEL_DS` (`GDT_ENTRY_KERNEL_DS` = 3): 0x18.
pub const KERNEL_DS: Selector = Selector::gdt(3, Ring::Ring0);
/// `__USER32_CS` (`GDT_ENTRY_DEFAULT_USER32_CS` = 4, RPL 3): 0x23.
pub const USER32_CS: Selector = Selector::gdt(4, Ring::Ring3);
/// `__USER_DS` (`GDT_ENTRY_DEFAULT_USER_DS` = 5, RPL 3): 0x2b. (Linux's
/// `__USER32_DS` is the same selector.)
pub const USER_DS: Selector = Selector::gdt(5, Ring::Ring3);
/// `__USER_CS` (`GDT_ENTRY_DEFAULT_USER_CS` = 6, RPL 3): 0x33.
pub const USER_CS: Selector = Selector::gdt(6, Ring::Ring3);
/// The TSS selector of Linux's layout (`GDT_ENTRY_TSS` = 8, two slots):
/// 0x40, [`GdtLayout::LINUX_X86_64`]`.tss`.
pub const TSS_SELECTOR: Selector = Selector::gdt(GdtLayout::LINUX_X86_64.tss, Ring::Ring0);
/// The LDT selector of Linux's layout (`GDT_ENTRY_LDT` = 10, two slots):
/// 0x50, [`GdtLayout::LINUX_X86_64`]`.ldt`.
pub const LDT_SELECTOR: Selector = Selector::gdt(GdtLayout::LINUX_X86_64.ldt, Ring::Ring0);

/// x86_64 Linux's initial GDT (`gdt_page` in `arch/x86/kernel/cpu/common.c`,
/// `GDT_ENTRIES` = 16 slots): null, [`KERNEL_CODE32`], [`KERNEL_CODE64`],
/// [`KERNEL_DATA`], [`USER_CODE32`], [`USER_DATA`], [`USER_CODE64`], then
/// null slots for the TSS (8-9), the LDT (10-11), TLS (12-14) and the
/// per-CPU segment (15), which the kernel fills at run time (the TSS
/// descriptor needs the TSS's address; `load_ldt` and `load_tls` write the
/// others where [`GdtLayout::LINUX_X86_64`] says).
pub const LINUX_X86_64_GDT: [Descriptor; 16] = {
    let mut b = GdtBuilder::<16>::new();
    let layout = [
        (KERNEL32_CS, KERNEL_CODE32),
        (KERNEL_CS, KERNEL_CODE64),
        (KERNEL_DS, KERNEL_DATA),
        (USER32_CS, USER_CODE32),
        (USER_DS, USER_DATA),
        (USER_CS, USER_CODE64),
    ];
    let mut i = 0;
    while i < layout.len() {
        // Each push lands where Linux's selector says, or the build fails.
        match b.push(layout[i].1) {
            Ok(s) if s.bits() == layout[i].0.bits() => {}
            _ => panic!("Linux GDT layout"),
        }
        i += 1;
    }
    b.build()
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_x86_64_selectors() {
        // Literals from arch/x86/include/asm/segment.h (64-bit branch):
        // GDT_ENTRY_KERNEL32_CS 1, GDT_ENTRY_KERNEL_CS 2, GDT_ENTRY_KERNEL_DS 3,
        // GDT_ENTRY_DEFAULT_USER32_CS 4, GDT_ENTRY_DEFAULT_USER_DS 5,
        // GDT_ENTRY_DEFAULT_USER_CS 6, GDT_ENTRY_TSS 8, GDT_ENTRY_LDT 10,
        // GDT_ENTRY_TLS_MIN 12, GDT_ENTRIES 16; user selectors are `*8 + 3`.
        assert_eq!(KERNEL32_CS.bits(), 0x08);
        assert_eq!(KERNEL_CS.bits(), 0x10);
        assert_eq!(KERNEL_DS.bits(), 0x18);
        assert_eq!(USER32_CS.bits(), 0x23);
        assert_eq!(USER_DS.bits(), 0x2b);
        assert_eq!(USER_CS.bits(), 0x33);
        assert_eq!(TSS_SELECTOR.bits(), 0x40);
        assert_eq!(LDT_SELECTOR.bits(), 0x50);
        assert_eq!(GdtLayout::LINUX_X86_64.tls_first, 12);
        assert_eq!(LINUX_X86_64_GDT.len(), 16);
        // The SYSRET rule the layout exists for: USER_DS = USER32_CS + 8,
        // USER_CS = USER32_CS + 16.
        assert_eq!(USER_DS.bits(), USER32_CS.bits() + 8);
        assert_eq!(USER_CS.bits(), USER32_CS.bits() + 16);
    }

    #[test]
    fn linux_x86_64_gdt_contents() {
        let literal: [u64; 16] = [
            0,
            0x00cf_9b00_0000_ffff,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00cf_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        for (i, (d, l)) in LINUX_X86_64_GDT.iter().zip(literal).enumerate() {
            assert_eq!(d.0, l, "slot {i}");
        }
        // Each selector's RPL is its segment's DPL.
        for s in [
            KERNEL32_CS,
            KERNEL_CS,
            KERNEL_DS,
            USER32_CS,
            USER_DS,
            USER_CS,
        ] {
            assert_eq!(LINUX_X86_64_GDT[s.index() as usize].dpl(), s.rpl(), "{s}");
        }
    }

    #[test]
    fn x86_64_presets_match_linux() {
        // (preset, Linux GDT_ENTRY_INIT flags, literal value)
        let cases = [
            (KERNEL_CODE64, 0xa09b, 0x00af_9b00_0000_ffff_u64),
            (KERNEL_CODE32, 0xc09b, 0x00cf_9b00_0000_ffff),
            (KERNEL_DATA, 0xc093, 0x00cf_9300_0000_ffff),
            (USER_CODE64, 0xa0fb, 0x00af_fb00_0000_ffff),
            (USER_CODE32, 0xc0fb, 0x00cf_fb00_0000_ffff),
            (USER_DATA, 0xc0f3, 0x00cf_f300_0000_ffff),
        ];
        for (preset, flags, literal) in cases {
            assert_eq!(preset.0, literal, "{preset:?}");
            assert_eq!(Descriptor::from_linux_flags(flags, 0, 0xfffff).0, literal);
        }
    }

    #[test]
    fn i386_presets_match_linux() {
        let cases = [
            (I386_KERNEL_CODE, 0xc09a, 0x00cf_9a00_0000_ffff_u64),
            (I386_KERNEL_DATA, 0xc092, 0x00cf_9200_0000_ffff),
            (I386_USER_CODE, 0xc0fa, 0x00cf_fa00_0000_ffff),
            (I386_USER_DATA, 0xc0f2, 0x00cf_f200_0000_ffff),
        ];
        for (preset, flags, literal) in cases {
            assert_eq!(preset.0, literal, "{preset:?}");
            assert_eq!(Descriptor::from_linux_flags(flags, 0, 0xfffff).0, literal);
        }
    }

    #[test]
    fn linux_i386_layout() {
        // Literals from arch/x86/include/asm/segment.h (CONFIG_X86_32
        // branch): GDT_ENTRY_TLS_MIN 6, GDT_ENTRY_KERNEL_CS 12,
        // GDT_ENTRY_KERNEL_DS 13, GDT_ENTRY_DEFAULT_USER_CS 14,
        // GDT_ENTRY_DEFAULT_USER_DS 15, GDT_ENTRY_TSS 16, GDT_ENTRY_LDT 17.
        // The LDT slot was 15 (user DS) until issue 11's 32-bit kernel
        // found `load_ldt` overwriting its user data segment.
        let l = GdtLayout::LINUX_I386;
        assert_eq!((l.tls_first, l.tss, l.ldt), (6, 16, 17));
        let fixed = [l.tls_first, l.tls_first + 1, l.tls_first + 2, l.tss, l.ldt];
        for (i, a) in fixed.iter().enumerate() {
            assert!(!(12..=15).contains(a), "slot {a} holds a code/data segment");
            assert!(!fixed[i + 1..].contains(a), "slot {a} used twice");
        }
    }

    #[test]
    fn preset_fields_read_back() {
        assert!(KERNEL_CODE64.long_mode() && !KERNEL_CODE64.default_big());
        assert_eq!(KERNEL_CODE64.dpl(), Ring::Ring0);
        assert_eq!(USER_DATA.dpl(), Ring::Ring3);
        assert_eq!(KERNEL_DATA.effective_limit(), 0xffff_ffff);
        assert!(KERNEL_DATA.present() && KERNEL_DATA.is_code_or_data() && !KERNEL_DATA.is_code());
    }
}
