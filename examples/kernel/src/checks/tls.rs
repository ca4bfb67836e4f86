//! TLS and context switches: load_tls, load_kernel_stack and load_ldt in
//! lazy mode, checked through FS (and `lsl` where it may be used); VMI
//! also shows that lazy mode defers the effect to SetLazyMode(0).

use core::sync::atomic::Ordering;

use pvops::{DescriptorOps, Ring, Selector};

use super::{Backend, Personality, SP0, Tables, tls_with};
use crate::cpu::{lsl, raw_sldt, read_fs0};
use crate::report::Tally;
use crate::{LAYOUT, TLS_PROBE, TLS_PROBE2};

/// The first TLS slot's selector.
fn tls_sel() -> u16 {
    Selector::gdt(LAYOUT.tls_first, Ring::Ring0).bits()
}

/// 64 switches, each one lazy batch (under Xen one multicall), alternating
/// the LDT loaded and none, and growing the TLS segment's limit.
pub fn context_switches<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality, tb: &Tables) {
    let ldt = &tb.ldt;
    let mut ok = true;
    for i in 0..64u32 {
        let limit = 0xfff + i * 0x1000;
        let e = ops.enter_lazy_cpu();
        // SAFETY: static GDT/TSS/LDT.
        let r = unsafe {
            ops.load_tls(&tls_with(&TLS_PROBE, limit))
                .and_then(|()| ops.load_kernel_stack(SP0 + i as u64 * 0x1000))
                .and_then(|()| ops.load_ldt(if i % 2 == 0 { Some(ldt) } else { None }))
        };
        let l = ops.leave_lazy_cpu();
        ok &= e.is_ok()
            && r.is_ok()
            && l.is_ok()
            && (!p.inspect || lsl(tls_sel()) == Some(limit))
            && read_fs0(tls_sel()) == TLS_PROBE.load(Ordering::SeqCst)
            && raw_sldt() == if i % 2 == 0 { p.ldtr() } else { 0 };
    }
    let name = match p.backend {
        Backend::Native => {
            "64 context switches (load_tls via FS, load_kernel_stack, load_ldt) in lazy mode"
        }
        Backend::Xen => {
            "64 context switches (load_tls via FS, stack_switch, SET_LDT) in lazy mode as multicalls"
        }
        Backend::Vmi => {
            "64 context switches (load_tls via FS, UpdateKernelStack, SetLDT) in lazy mode"
        }
    };
    t.check(name, ok, format_args!(""));
}

/// Lazy mode (SetLazyMode 2/0): FS sees the new TLS base only after the
/// flush.
pub fn lazy_deferral<O: DescriptorOps>(ops: &O, t: &mut Tally) {
    // SAFETY: static GDT.
    let r = unsafe { ops.load_tls(&tls_with(&TLS_PROBE, 0xfff)) };
    let before = read_fs0(tls_sel());
    let e = ops.enter_lazy_cpu();
    // SAFETY: static GDT.
    let r2 = unsafe { ops.load_tls(&tls_with(&TLS_PROBE2, 0xfff)) };
    let during = read_fs0(tls_sel());
    let l = ops.leave_lazy_cpu();
    let after = read_fs0(tls_sel());
    t.check(
        "lazy mode (SetLazyMode 2/0) -> FS sees the new TLS base only after the flush",
        r.is_ok()
            && r2.is_ok()
            && e.is_ok()
            && l.is_ok()
            && before == TLS_PROBE.load(Ordering::SeqCst)
            && during == before
            && after == TLS_PROBE2.load(Ordering::SeqCst),
        format_args!("before {before:#x} during {during:#x} after {after:#x}"),
    );
}
