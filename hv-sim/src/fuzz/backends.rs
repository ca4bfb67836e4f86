//! Fuzz target: pvops-xen's ops (`XenOps`) over an in-process pv64 domain.
//!
//! A case builds a 32-page pv64 domain with a GDT (two pages), an IDT and
//! an LDT in its RAM, filled with descriptors shaped by Xen's rules, and
//! drives the backend for one vCPU through up to 32 ops with arbitrary
//! indices, entries, gates, selectors and stacks: `load_gdt` of any length
//! that fits its pages, `write_gdt_entry` (8- and 16-byte entries, any
//! index), `write_ldt_entry`, `write_idt_entry`, `load_idt`, `load_tr`,
//! `load_ldt` (and `None`), `load_tls`, `alloc_ldt`/`free_ldt`,
//! `load_kernel_stack`, the lazy-mode calls and every `store_*`, with the
//! guest writing its own tables natively in between.
//!
//! After every op: no panic, and `XenDomain::check_invariants` holds (the
//! backend can only ask; whatever it asks, the domain stays safe); a
//! successful `load_gdt` is what `store_gdt` reports.

use pvops::{
    Descriptor, DescriptorOps, Gate64, Gdt, GdtEntry, GdtLayout, Idt, Ldt, Selector,
    SystemDescriptor,
};

use super::{CaseStats, Source, descriptor, int, selector};
use crate::xen::XenDomain;

const PAGE: u64 = 4096;

/// One case (see the module documentation).
pub fn xen_case(s: &mut Source, st: &mut CaseStats) -> Result<(), String> {
    let dom = XenDomain::pv64(32, 1);
    let gdt_va = dom.alloc_pages(2);
    let idt_va = dom.alloc_pages(1);
    let ldt_va = dom.alloc_pages(1);
    let other_va = dom.alloc_pages(1);
    for i in 0..s.range(1, 32) {
        dom.host_write_u64(gdt_va + 8 * i, descriptor(s));
    }
    let layout = if s.chance(3, 4) {
        GdtLayout::LINUX_X86_64
    } else {
        GdtLayout::LINUX_I386
    };
    let ops = pvops_xen::XenOps::new(dom.vcpu_handle(0), layout);
    let tables = |s: &mut Source| -> (Gdt, Idt, Ldt) {
        let n = s.pick(&[1u32, 2, 16, 17, 256, 511, 512, 513, 1024]);
        let g =
            Gdt::new(gdt_va, n).unwrap_or(Gdt::new(gdt_va, 16).unwrap_or_else(|_| unreachable!()));
        let ni = s.pick(&[1u32, 32, 256]);
        let i = Idt::new(idt_va, ni).unwrap_or_else(|_| unreachable!());
        let nl = s.pick(&[1u32, 8, 16, 512]);
        let l = Ldt::new(ldt_va, nl).unwrap_or_else(|_| unreachable!());
        (g, i, l)
    };
    let (mut gdt, mut idt, mut ldt) = tables(s);
    for step in 0..s.range(1, 32) {
        if s.chance(1, 8) {
            (gdt, idt, ldt) = tables(s);
        }
        let k = s.below(16);
        let idx = if s.chance(3, 4) {
            s.below(40) as u32
        } else {
            int(s) as u32
        };
        st.calls += 1;
        // SAFETY: every table handle describes pages of the domain's RAM
        // (Gdt/Idt/Ldt::new above, at most the pages allocated for them),
        // which outlives `ops`; in-process pv64 guest addresses are this
        // process's addresses of those bytes. The kernel-side contracts
        // (live segments, handlers) concern a real CPU, which this is not.
        let r: Result<String, pvops::PvError> = unsafe {
            match k {
                0 => ops.load_gdt(&gdt).map(|()| {
                    let seen = ops.store_gdt();
                    format!("load_gdt; store_gdt = {seen:?}")
                }),
                1 | 2 => {
                    let e = if s.chance(2, 3) {
                        GdtEntry::Single(Descriptor(descriptor(s)))
                    } else {
                        GdtEntry::Double(SystemDescriptor {
                            low: descriptor(s),
                            high: if s.chance(1, 2) { 0 } else { int(s) },
                        })
                    };
                    ops.write_gdt_entry(&gdt, idx, e)
                        .map(|()| format!("write_gdt_entry({idx}, {e:?})"))
                }
                3 => {
                    let d = Descriptor(descriptor(s));
                    ops.write_ldt_entry(&ldt, idx, d)
                        .map(|()| format!("write_ldt_entry({idx}, {d:?})"))
                }
                4 => {
                    let g = Gate64 {
                        low: descriptor(s),
                        high: if s.chance(1, 2) { 0 } else { int(s) },
                    };
                    ops.write_idt_entry(&idt, idx as u8, g)
                        .map(|()| format!("write_idt_entry({idx}, {g:?})"))
                }
                5 => ops.load_idt(&idt).map(|()| "load_idt".into()),
                6 => {
                    let sel = Selector(selector(s) as u16);
                    ops.load_tr(sel).map(|()| format!("load_tr({sel:?})"))
                }
                7 => {
                    let which = s.chance(3, 4).then_some(&ldt);
                    ops.load_ldt(which).map(|()| format!("load_ldt({which:?})"))
                }
                8 => {
                    let tls = [
                        Descriptor(descriptor(s)),
                        Descriptor(descriptor(s)),
                        Descriptor(descriptor(s)),
                    ];
                    ops.load_tls(&tls).map(|()| format!("load_tls({tls:?})"))
                }
                9 => ops.alloc_ldt(&ldt).map(|()| "alloc_ldt".into()),
                10 => ops.free_ldt(&ldt).map(|()| "free_ldt".into()),
                11 => {
                    let sp = if s.chance(1, 2) {
                        other_va + s.below(PAGE)
                    } else {
                        int(s)
                    };
                    ops.load_kernel_stack(sp)
                        .map(|()| format!("load_kernel_stack({sp:#x})"))
                }
                12 => ops.enter_lazy_cpu().map(|()| "enter_lazy_cpu".into()),
                13 => ops.leave_lazy_cpu().map(|()| "leave_lazy_cpu".into()),
                14 => {
                    let _ = (
                        ops.store_gdt(),
                        ops.store_idt(),
                        ops.store_tr(),
                        ops.store_ldt(),
                    );
                    ops.flush_lazy().map(|()| "store_*; flush_lazy".into())
                }
                _ => {
                    // The guest writes its own tables natively.
                    let base = s.pick(&[gdt_va, gdt_va + PAGE, idt_va, ldt_va]);
                    dom.host_write_u64(base + s.below(512) * 8, descriptor(s));
                    Ok("native write".into())
                }
            }
        };
        st.outcome(0x5000 + k, i64::from(r.is_ok()));
        st.checks += 1;
        if let Err(e) = dom.check_invariants() {
            return Err(format!(
                "step {step}: op {k} = {r:?}: invariant broken: {e}"
            ));
        }
        if k == 0 && r.is_ok() && ops.store_gdt() != Ok(gdt.pointer()) {
            return Err(format!(
                "step {step}: load_gdt({gdt:?}) succeeded but store_gdt = {:?}",
                ops.store_gdt()
            ));
        }
    }
    Ok(())
}
