//! Const descriptor presets, with the values Linux uses.
//!
//! The x86_64 values are those of Linux's `gdt_page` in
//! `arch/x86/kernel/cpu/common.c` (`GDT_ENTRY_INIT(0xa09b, 0, 0xfffff)` and
//! friends: accessed bit pre-set so the CPU never writes the GDT to set it);
//! the i386 values are Linux's 32-bit `gdt_page` (`GDT_ENTRY_INIT(0xc09a, 0,
//! 0xfffff)` and friends: accessed bit clear). The tests below compare each
//! preset, built from fields, with the literal 64-bit value.

use crate::descriptor::Descriptor;
use crate::selector::Ring;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn preset_fields_read_back() {
        assert!(KERNEL_CODE64.long_mode() && !KERNEL_CODE64.default_big());
        assert_eq!(KERNEL_CODE64.dpl(), Ring::Ring0);
        assert_eq!(USER_DATA.dpl(), Ring::Ring3);
        assert_eq!(KERNEL_DATA.effective_limit(), 0xffff_ffff);
        assert!(KERNEL_DATA.present() && KERNEL_DATA.is_code_or_data() && !KERNEL_DATA.is_code());
    }
}
