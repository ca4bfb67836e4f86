//! The checks every backend runs, one module per concern ([`gdt`], [`tss`],
//! [`idt`], [`ldt`], [`tls`], [`forbidden`]). Each takes the installed ops,
//! the tally, and a [`Personality`]: which backend runs them and what the
//! host allows (software interrupts, `lar`/`lsl`/`verr`, ring 3 under
//! trap-and-emulate, a PVM host). What differs between backends (the
//! tables the CPU really runs on, what the hypervisor refuses) is decided
//! there, from the personality, next to the check it changes; [`run`] puts
//! the concerns in each backend's order.

pub mod forbidden;
pub mod gdt;
pub mod idt;
pub mod ldt;
pub mod tls;
pub mod tss;

use core::sync::atomic::AtomicU64;

use pvops::{Descriptor, DescriptorOps, Gdt, Idt, Ldt, Ring};

use crate::report::Tally;
use crate::{GDT, IDT, LDT};

/// Which backend the checks run through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// Ring 0 on the CPU's own tables (or ring 3 under trap-and-emulate).
    Native,
    /// A 64-bit PV guest under Xen (hv-sim's personality or real Xen).
    Xen,
    /// A VMI guest calling hv-sim's VMI ROM.
    Vmi,
}

/// What the running backend and host imply for the checks.
#[derive(Clone, Copy, Debug)]
pub struct Personality {
    /// The backend the ops go through.
    pub backend: Backend,
    /// `int3` can run (the host delivers software interrupts).
    pub soft_int: bool,
    /// `lar`/`lsl`/`verr` give meaningful answers and are checked.
    pub inspect: bool,
    /// Ring 3 under a trap-and-emulate hypervisor (native backend only).
    pub deprivileged: bool,
    /// The host is PVM: reading segment registers shows the host's.
    pub pvm: bool,
}

impl Personality {
    /// Why `lar`/`lsl`/`verr` checks are skipped.
    pub fn no_inspect_reason(&self) -> &'static str {
        if self.deprivileged {
            "deprivileged: sensitive but unprivileged, they would read the hypervisor's ring-3 copy without trapping"
        } else {
            "not emulated by this host (PVM)"
        }
    }

    /// What `sldt` reads while the kernel's LDT is loaded: Xen loads it
    /// through its own LDT descriptor in the reserved GDT area.
    pub fn ldtr(&self) -> u16 {
        match self.backend {
            Backend::Xen => xen_sel::LDT,
            Backend::Native | Backend::Vmi => crate::LDT_SEL.bits(),
        }
    }

    /// Raw-read detail suffix on a PVM host.
    fn raw_reads(&self) -> &'static str {
        if self.pvm { " on this PVM host" } else { "" }
    }
}

/// Xen's selectors as a 64-bit PV guest sees them (`asm-x86/desc.h`): the
/// flat ring-3 code/data a PV kernel runs on, and the TSS and LDT
/// descriptors Xen keeps in its reserved GDT area (entries 7168+).
pub mod xen_sel {
    /// FLAT_RING3_CS64 (FLAT_KERNEL_CS for a 64-bit PV kernel).
    pub const FLAT_KERNEL_CS: u16 = 0xe033;
    /// FLAT_RING3_DS32 (FLAT_KERNEL_SS).
    pub const FLAT_KERNEL_SS: u16 = 0xe02b;
    /// TSS_ENTRY << 3.
    pub const TSS: u16 = 0xe040;
    /// LDT_ENTRY << 3.
    pub const LDT: u16 = 0xe050;
    /// GDT limit of Xen's per-vCPU GDT: (7168 + 512) * 8 - 1.
    pub const GDT_LIMIT: u16 = 0xefff;
    /// Xen's own ring-0 code selector (`__HYPERVISOR_CS`).
    pub const HYPERVISOR_CS: u16 = 0xe008;
}

/// The kernel's static tables, as the ops take them.
pub struct Tables {
    /// The GDT.
    pub gdt: Gdt,
    /// The IDT.
    pub idt: Idt,
    /// The LDT.
    pub ldt: Ldt,
}

/// The first kernel stack top the TSS checks record.
pub const SP0: u64 = 0x0000_0000_0090_0000;

/// A ring-0 data segment whose base is `p` (read back through FS:[0]).
pub fn probe_seg(p: &AtomicU64, limit: u32) -> Descriptor {
    Descriptor::data_segment(p as *const AtomicU64 as u64 as u32, limit, Ring::Ring0)
        .unwrap_or_default()
}

/// A TLS triple: the probe segment, a flat ring-3 data segment, null.
pub fn tls_with(p: &AtomicU64, limit: u32) -> [Descriptor; 3] {
    [
        probe_seg(p, limit),
        Descriptor::data_segment(0, 0xf_ffff, Ring::Ring3).unwrap_or_default(),
        Descriptor::NULL,
    ]
}

/// Run every check for `p.backend`, in that backend's order.
pub fn run<O: DescriptorOps>(ops: &O, t: &mut Tally, p: &Personality) {
    let (Ok(gdt), Ok(idt), Ok(ldt)) = (GDT.gdt(), IDT.idt(), LDT.ldt()) else {
        t.check("tables", false, format_args!("table storage rejected"));
        return;
    };
    let tb = Tables { gdt, idt, ldt };
    match p.backend {
        Backend::Native => {
            gdt::load(ops, t, p, &tb);
            tss::load(ops, t, p, &tb);
            idt::load(ops, t, p, &tb);
            idt::exceptions(t, p);
            ldt::load(ops, t, p, &tb);
            tls::context_switches(ops, t, p, &tb);
        }
        Backend::Xen => {
            t.check(
                "backend is xen",
                ops.name() == "xen",
                format_args!("{}", ops.name()),
            );
            gdt::load(ops, t, p, &tb);
            tss::load(ops, t, p, &tb);
            idt::load(ops, t, p, &tb);
            idt::exceptions(t, p);
            idt::xen_bounce_frame(t);
            ldt::load(ops, t, p, &tb);
            tls::context_switches(ops, t, p, &tb);
            forbidden::call_gate(ops, t, p, &tb);
            forbidden::direct_store_faults(t, &tb);
        }
        Backend::Vmi => {
            gdt::load(ops, t, p, &tb);
            idt::load(ops, t, p, &tb);
            gdt::data_segments(t, p, Ok(()));
            idt::exceptions(t, p);
            tss::load(ops, t, p, &tb);
            ldt::load(ops, t, p, &tb);
            tls::lazy_deferral(ops, t);
            tls::context_switches(ops, t, p, &tb);
            forbidden::call_gate(ops, t, p, &tb);
        }
    }
    ldt::free(ops, t, p, &tb);
}
