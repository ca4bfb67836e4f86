//! The VMI-style backend (pvops-vmi) in-process against hv-sim's VMI
//! personality: probe, VMI_Init and the relocation query, every op with the
//! hypervisor's state asserted (the guest's view and the effective tables),
//! lazy batching in the trace, and the NONE / NOP / wrong-entry paths.

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use hv_sim::vmi::machine::{EFFECTIVE_GDT_64, EFFECTIVE_IDT_64, HV_RESERVED_GDT};
use hv_sim::vmi::{GuestKind, HostGuestMemory, Reloc, VmiEvent, VmiHypervisor};
use pvops::descriptor::SystemType;
use pvops::*;
use pvops_native::NativeOps;
use pvops_vmi::{InitError, ReadPhys, RelocType, VmiOps, VmiPlatform};

/// VMI API 3.0 call numbers as literals from Linux `asm/vmi.h`: neither the
/// guest crate's nor hv-sim's constants, so a wrong number on either side
/// makes the backend and the hypervisor disagree here.
mod call {
    pub const SET_GDT: u32 = 3;
    pub const SET_LDT: u32 = 4;
    pub const SET_IDT: u32 = 5;
    pub const SET_TR: u32 = 6;
    pub const GET_GDT: u32 = 7;
    pub const GET_IDT: u32 = 9;
    pub const GET_TR: u32 = 10;
    pub const WRITE_GDT_ENTRY: u32 = 11;
    pub const WRITE_LDT_ENTRY: u32 = 12;
    pub const WRITE_IDT_ENTRY: u32 = 13;
    pub const UPDATE_KERNEL_STACK: u32 = 14;
    pub const SET_LAZY_MODE: u32 = 73;
    /// The calls the backend queries at init, in order.
    pub const USED: [u32; 13] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 73];
    /// The calls Linux's activate_vmi installs with para_wrap (2.6.25 on):
    /// SetLDT, SetTR, Write{GDT,LDT,IDT}Entry, UpdateKernelStack,
    /// SetLazyMode. A NOP answer leaves the native op in place.
    pub const WRAPPED: [u32; 7] = [
        SET_LDT,
        SET_TR,
        WRITE_GDT_ENTRY,
        WRITE_LDT_ENTRY,
        WRITE_IDT_ENTRY,
        UPDATE_KERNEL_STACK,
        SET_LAZY_MODE,
    ];
}

const LAYOUT: GdtLayout = GdtLayout::LINUX_X86_64;
type Hv = VmiHypervisor<HostGuestMemory>;
type Ops = VmiOps<&'static Hv, SoftCpu>;

struct Env {
    hv: &'static Hv,
    ops: Ops,
    gdt_store: &'static DescriptorStorage<16>,
    ldt_store: &'static DescriptorStorage<8>,
    idt_store: &'static IdtStorage<256>,
    /// The guest's TSS: 104 bytes (13 words), rsp0 at offset 4.
    tss: &'static TssStorage<Tss64>,
    gdt: Gdt,
    idt: Idt,
    ldt: Ldt,
}

fn native() -> NativeOps<SoftCpu> {
    // SAFETY: the CPU model is only given addresses of this test's leaked
    // tables.
    let mem = unsafe { HostMemory::new() };
    NativeOps::with_cpu(SoftCpu::new(mem, CpuMode::Long), LAYOUT)
}

fn hv() -> &'static Hv {
    // SAFETY: the guest (this test, through the backend) only passes
    // pointers to its leaked tables and to DTR operands on its stack.
    let mem = unsafe { HostGuestMemory::new() };
    Box::leak(Box::new(VmiHypervisor::new(GuestKind::Vmi64, mem)))
}

fn tables() -> (
    &'static DescriptorStorage<16>,
    &'static IdtStorage<256>,
    &'static DescriptorStorage<8>,
) {
    let init = presets::LINUX_X86_64_GDT;
    let mut gates = [IdtGate::MISSING; 256];
    for (v, g) in gates.iter_mut().enumerate().take(32) {
        *g = Gate64::interrupt(
            Selector(0x10),
            0xffff_ffff_8100_0000 + v as u64 * 16,
            Ring::Ring0,
        );
    }
    (
        Box::leak(Box::new(DescriptorStorage::new(init))),
        Box::leak(Box::new(IdtStorage::new(gates))),
        Box::leak(Box::new(DescriptorStorage::new([Descriptor::NULL; 8]))),
    )
}

fn env_with(hv: &'static Hv) -> Env {
    let (gdt_store, idt_store, ldt_store) = tables();
    let rom = pvops_vmi::rom::probe(hv).unwrap();
    // SAFETY: the ROM is hv-sim's, and passed the probe.
    let ops = unsafe { VmiOps::init(hv, rom, LAYOUT, native()) }.unwrap();
    Env {
        hv,
        ops,
        gdt: gdt_store.gdt().unwrap(),
        idt: idt_store.idt().unwrap(),
        idt_store,
        ldt: ldt_store.ldt().unwrap(),
        gdt_store,
        ldt_store,
        tss: Box::leak(Box::new(TssStorage::new(Tss64::new()))),
    }
}

fn env() -> Env {
    env_with(hv())
}

impl Env {
    fn tss_desc(&self) -> SystemDescriptor {
        self.tss.descriptor().unwrap()
    }
    fn tr(&self) -> Selector {
        Selector::gdt(LAYOUT.tss, Ring::Ring0)
    }
    fn boot(&self) {
        // SAFETY: leaked 'static tables.
        unsafe {
            self.ops.load_gdt(&self.gdt).unwrap();
            self.ops.load_idt(&self.idt).unwrap();
            self.ops
                .write_gdt_entry(&self.gdt, LAYOUT.tss as u32, self.tss_desc().into())
                .unwrap();
            self.ops.load_tr(self.tr()).unwrap();
        }
    }
    fn calls(&self) -> Vec<u32> {
        self.hv.trace().call_numbers()
    }
    /// TSS.rsp0 (bytes 4..12 of the guest's TSS).
    fn rsp0(&self) -> u64 {
        // SAFETY: the test's ops run on this thread: nothing writes the
        // TSS during the read.
        let tss = unsafe { self.tss.read() };
        let rsp = tss.rsp; // copied out of the packed struct
        rsp[0]
    }
}

/// Every test's hypervisor ends in a state that satisfies the model's
/// invariants (checked unless the test already failed).
impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking()
            && let Err(e) = self.hv.check_invariants()
        {
            panic!("hv-sim invariant broken: {e}\n{}", self.hv.trace());
        }
    }
}

#[test]
fn probe_init_and_relocation_query() {
    let hv = hv();
    // SAFETY: hv-sim's ROM.
    let ops: Ops = unsafe { VmiOps::probe_and_init(hv, LAYOUT, native()) }.unwrap();
    assert_eq!(ops.name(), "vmi");
    assert_eq!(ops.rom().base, 0xC8000);
    for nr in call::USED {
        let r = ops.relocation(nr).unwrap();
        assert_eq!(r.typ, RelocType::CallRel, "call {nr}");
        assert_eq!(r.eip, 0xC8000 + 0x100 + 16 * nr as u64, "call {nr}");
    }
    let t = hv.trace();
    assert_eq!(t.events[0], VmiEvent::Init);
    let queried: Vec<u32> = t
        .events
        .iter()
        .filter_map(|e| match e {
            VmiEvent::Reloc { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(queried, call::USED);
    // The other answers: NOP for IODelay, NONE for a trapped instruction.
    // SAFETY: the jump point of hv-sim's ROM.
    unsafe {
        assert_eq!(hv.get_reloc(0xC8088, 65), (0, 3));
        assert_eq!(hv.get_reloc(0xC8088, 0), (0, 0));
    }
}

#[test]
fn load_gdt_keeps_guest_view_while_effective_table_is_relocated_and_fixed() {
    let e = env();
    // SAFETY: leaked 'static table.
    unsafe { e.ops.load_gdt(&e.gdt).unwrap() };
    assert_eq!(e.calls(), [call::SET_GDT]);
    let g = e.hv.guest();
    assert_eq!(g.gdtr, Some(e.gdt.pointer()));
    let eff = e.hv.effective();
    // Relocated: the hypervisor's copy, with its two reserved entries.
    assert_eq!(eff.gdt_base, EFFECTIVE_GDT_64);
    assert_eq!(eff.gdt.len(), 16 + HV_RESERVED_GDT.len());
    assert_eq!(eff.gdtr().limit, (18 * 8 - 1) as u16);
    assert_eq!(&eff.gdt[16..], &HV_RESERVED_GDT);
    // Fixed: DPL 0 compressed to ring 3 in the effective table only.
    assert_eq!(Descriptor(eff.gdt[2]).dpl(), Ring::Ring3);
    assert_eq!(Descriptor(eff.gdt[3]).dpl(), Ring::Ring3);
    assert_eq!(e.gdt_store.read(2), Some(presets::KERNEL_CODE64));
    // GetGDT answers with what the guest set.
    let p = e.ops.store_gdt().unwrap();
    assert_eq!(p, e.gdt.pointer());
    assert_ne!(p, eff.gdtr());
    assert_eq!(e.calls(), [call::SET_GDT, call::GET_GDT]);
}

#[test]
fn load_idt_store_idt() {
    let e = env();
    // SAFETY: leaked 'static table.
    unsafe { e.ops.load_idt(&e.idt).unwrap() };
    assert_eq!(e.hv.guest().idtr, Some(e.idt.pointer()));
    let eff = e.hv.effective();
    assert_eq!(eff.idt_base, EFFECTIVE_IDT_64);
    assert_eq!(eff.idt.len(), 256);
    let g = Gate64 {
        low: eff.idt[3].0,
        high: eff.idt[3].1,
    };
    // The handler's selector gets the guest kernel's RPL.
    assert_eq!(g.selector(), Selector(0x13));
    assert_eq!(g.offset(), 0xffff_ffff_8100_0030);
    assert_eq!(e.ops.store_idt().unwrap(), e.idt.pointer());
    assert_eq!(e.calls(), [call::SET_IDT, call::GET_IDT]);
}

#[test]
fn write_gdt_entry_16_byte_tss_then_load_tr() {
    let e = env();
    e.boot();
    assert_eq!(
        e.calls(),
        [
            call::SET_GDT,
            call::SET_IDT,
            call::WRITE_GDT_ENTRY,
            call::SET_TR
        ]
    );
    // Guest memory holds the descriptor as written (available TSS)...
    let tss = e.tss_desc();
    assert_eq!(e.gdt_store.read(8), Some(Descriptor(tss.low)));
    assert_eq!(e.gdt_store.read(9), Some(Descriptor(tss.high)));
    assert_eq!(
        Descriptor(tss.low).system_type(),
        SystemType::Tss,
        "not busy in the guest's GDT"
    );
    // ...the effective GDT has it busy, and TR loaded.
    let eff = e.hv.effective();
    assert_eq!(Descriptor(eff.gdt[8]).system_type(), SystemType::TssBusy);
    assert_eq!(eff.gdt[9], tss.high);
    assert_eq!(eff.tr, e.tr());
    assert_eq!(eff.tss_base, e.tss.base());
    assert_eq!(eff.tss_limit, 0x67, "a 104-byte TSS (SDM 8.7)");
    assert_eq!(e.hv.guest().tr, e.tr());
    assert_eq!(e.ops.store_tr().unwrap(), e.tr());
    // The guest's descriptor is still available, so reloading TR works.
    // SAFETY: leaked tables.
    unsafe { e.ops.load_tr(e.tr()).unwrap() };
}

#[test]
fn load_ldt_writes_descriptor_then_set_ldt() {
    let e = env();
    e.boot();
    let before = e.calls().len();
    // SAFETY: leaked tables.
    unsafe { e.ops.load_ldt(Some(&e.ldt)).unwrap() };
    // The GDT loaded through the backend is remembered: no GetGDT round trip.
    assert_eq!(e.calls()[before..], [call::WRITE_GDT_ENTRY, call::SET_LDT]);
    let want = SystemDescriptor::ldt(e.ldt.base(), 8).unwrap();
    assert_eq!(e.gdt_store.read(10), Some(Descriptor(want.low)));
    assert_eq!(e.gdt_store.read(11), Some(Descriptor(want.high)));
    let g = e.hv.guest();
    assert_eq!(g.ldtr, Selector::gdt(10, Ring::Ring0));
    assert_eq!(g.ldt, Some((e.ldt.base(), 8)));
    let eff = e.hv.effective();
    assert_eq!(eff.ldt_base, e.ldt.base());
    assert_eq!(eff.ldt.len(), 8);
    assert_eq!(e.ops.store_ldt().unwrap(), Some(e.ldt));
    // No LDT: as Linux's vmi_set_ldt(NULL, 0), the descriptor
    // pack_descriptor makes of base 0 and limit 0 * 8 - 1 (its low 20 bits:
    // 0xfffff, byte granular), present LDT, DPL 0, then SetLDT(0).
    let before = e.calls().len();
    // SAFETY: disabling the LDT.
    unsafe { e.ops.load_ldt(None).unwrap() };
    assert_eq!(e.calls()[before..], [call::WRITE_GDT_ENTRY, call::SET_LDT]);
    let empty = 0x000f_8200_0000_ffffu64;
    let d = Descriptor(empty);
    assert_eq!(
        (d.base(), d.raw_limit(), d.system_type(), d.present()),
        (0, 0xf_ffff, SystemType::Ldt, true)
    );
    let args = e.hv.trace().events.iter().rev().find_map(|ev| match ev {
        VmiEvent::Call { nr: 11, args, .. } => Some(*args),
        _ => None,
    });
    assert_eq!(args, Some([e.gdt.base(), 10, empty, 0]));
    assert_eq!(e.gdt_store.read(10), Some(d));
    assert_eq!(e.gdt_store.read(11), Some(Descriptor::NULL));
    assert_eq!(e.hv.effective().gdt[10], empty);
    assert_eq!(e.hv.guest().ldtr, Selector::NULL);
    assert!(e.hv.effective().ldt.is_empty());
    assert_eq!(e.ops.store_ldt().unwrap(), None);
}

#[test]
fn write_ldt_entry_fixed_in_effective_ldt_only() {
    let e = env();
    e.boot();
    // SAFETY: leaked tables.
    unsafe { e.ops.load_ldt(Some(&e.ldt)).unwrap() };
    let d = presets::I386_KERNEL_DATA; // DPL 0, accessed clear
    // SAFETY: leaked tables.
    unsafe { e.ops.write_ldt_entry(&e.ldt, 1, d).unwrap() };
    assert_eq!(e.ldt_store.read(1), Some(d));
    let eff = Descriptor(e.hv.effective().ldt[1]);
    assert_eq!(eff.dpl(), Ring::Ring3);
    assert!(
        eff.segment_type()
            .contains(descriptor::SegmentType::ACCESSED)
    );
    // A TSS descriptor in an LDT is refused by the validation layer, as on
    // every backend, before the ROM is called.
    let tss = Descriptor(e.tss_desc().low);
    let events = e.hv.trace().events.len();
    // SAFETY: leaked tables.
    let err = unsafe { e.ops.write_ldt_entry(&e.ldt, 2, tss) }.unwrap_err();
    assert!(
        matches!(
            err,
            PvError::Invalid {
                op: "write_ldt_entry",
                at: Slot::Entry(TableKind::Ldt, 2),
                rule: Rule::NotAllowedHere { .. }
            }
        ),
        "{err:?}"
    );
    assert_eq!(e.hv.trace().events.len(), events);
    // A call gate is architecturally fine in an LDT, but this
    // personality's policy refuses it (only the hypervisor can judge):
    // WriteLDTEntry -EINVAL, with the rule in the trace and the slot in
    // the error.
    let gate = Gate64::call(Selector(0x10), 0xffff_ffff_8100_0000, Ring::Ring0);
    // SAFETY: leaked tables.
    let err = unsafe { e.ops.write_ldt_entry(&e.ldt, 2, Descriptor(gate.low)) }.unwrap_err();
    assert_eq!(
        err,
        PvError::Hypervisor {
            call: "WriteLDTEntry",
            errno: Errno::EINVAL,
            at: Slot::Entry(TableKind::Ldt, 2),
        }
    );
    let (ret, reason) =
        e.hv.trace()
            .last_call()
            .map(|(r, s)| (r, s.map(String::from)))
            .unwrap();
    assert_eq!(ret, -22);
    assert!(
        reason
            .unwrap()
            .contains("an LDT holds code and data segments only")
    );
    assert_eq!(
        e.ldt_store.read(2),
        Some(Descriptor::NULL),
        "nothing stored"
    );
}

#[test]
fn write_idt_entry_updates_loaded_idt() {
    let e = env();
    e.boot();
    let g = Gate64::trap(Selector(0x10), 0xffff_ffff_8123_4560, Ring::Ring3);
    // SAFETY: leaked tables.
    unsafe { e.ops.write_idt_entry(&e.idt, 0x80, g).unwrap() };
    let eff = e.hv.effective().idt[0x80];
    let eg = Gate64 {
        low: eff.0,
        high: eff.1,
    };
    assert_eq!(eg.offset(), g.offset());
    assert_eq!(eg.selector(), Selector(0x13));
    assert_eq!(eg.dpl(), Ring::Ring3);
    // A call gate is not an IDT gate: refused before the ROM is called.
    let bad = Gate64::call(Selector(0x10), 0x1000, Ring::Ring0);
    let events = e.hv.trace().events.len();
    // SAFETY: leaked tables.
    let err = unsafe { e.ops.write_idt_entry(&e.idt, 0x81, bad) }.unwrap_err();
    assert!(
        err.to_string().starts_with(
            "write_idt_entry: IDT vector 129: a present IDT entry must be an interrupt or trap gate"
        ),
        "{err}"
    );
    assert_eq!(e.hv.trace().events.len(), events);
    // Index rule checked before the call.
    let small = Idt::new(e.idt.base(), 16).unwrap();
    // SAFETY: leaked tables.
    let err = unsafe { e.ops.write_idt_entry(&small, 16, g) }.unwrap_err();
    assert!(matches!(err, PvError::IndexOutOfRange { .. }));
}

#[test]
fn set_gdt_refuses_a_call_gate() {
    let e = env();
    let gate = Gate32::call(Selector(0x10), 0x1000, Ring::Ring3, 0).unwrap();
    // The guest writes its table natively before loading it.
    // SAFETY: slot 7 of the leaked GDT storage.
    unsafe {
        e.gdt_store
            .as_mut_ptr()
            .add(7)
            .write_volatile(Descriptor(gate.0))
    };
    // SAFETY: leaked tables.
    let err = unsafe { e.ops.load_gdt(&e.gdt) }.unwrap_err();
    assert_eq!(
        err,
        PvError::Hypervisor {
            call: "SetGDT",
            errno: Errno::EINVAL,
            at: Slot::Table(TableKind::Gdt),
        }
    );
    let t = e.hv.trace();
    let (_, reason) = t.last_call().unwrap();
    assert!(reason.unwrap().contains("GDT[7]"), "{t}");
    assert_eq!(e.hv.guest().gdtr, None, "nothing loaded");
}

#[test]
fn load_tls_writes_only_changed_slots() {
    let e = env();
    e.boot();
    let tls = [
        Descriptor::data_segment(0x1000, 0xfff, Ring::Ring3).unwrap(),
        Descriptor::data_segment(0x2000, 0xfff, Ring::Ring3).unwrap(),
        Descriptor::data_segment(0x3000, 0xfff, Ring::Ring3).unwrap(),
    ];
    let writes = |e: &Env| {
        e.calls()
            .iter()
            .filter(|&&c| c == call::WRITE_GDT_ENTRY)
            .count()
    };
    let w0 = writes(&e);
    // SAFETY: leaked tables.
    unsafe { e.ops.load_tls(&tls).unwrap() };
    assert_eq!(writes(&e) - w0, 3);
    for (i, d) in tls.iter().enumerate() {
        assert_eq!(e.gdt_store.read(12 + i), Some(*d));
        let eff = Descriptor(e.hv.effective().gdt[12 + i]);
        assert!(
            eff.segment_type()
                .contains(descriptor::SegmentType::ACCESSED)
        );
    }
    // Same TLS again: nothing to write.
    // SAFETY: leaked tables.
    unsafe { e.ops.load_tls(&tls).unwrap() };
    assert_eq!(writes(&e) - w0, 3);
    // One slot changed: one write.
    let mut t2 = tls;
    t2[1] = Descriptor::data_segment(0x5000, 0xfff, Ring::Ring3).unwrap();
    // SAFETY: leaked tables.
    unsafe { e.ops.load_tls(&t2).unwrap() };
    assert_eq!(writes(&e) - w0, 4);
    let args = e.hv.trace().events.iter().rev().find_map(|ev| match ev {
        VmiEvent::Call { nr: 11, args, .. } => Some(*args),
        _ => None,
    });
    assert_eq!(args, Some([e.gdt.base(), 13, t2[1].0, 0]));
}

#[test]
fn load_kernel_stack_needs_tr() {
    let e = env();
    // SAFETY: leaked tables.
    unsafe { e.ops.load_gdt(&e.gdt).unwrap() };
    // SAFETY: a stack address (never used).
    let err = unsafe { e.ops.load_kernel_stack(0xffff_c900_0000_8000) }.unwrap_err();
    assert_eq!(
        err.to_string(),
        "hypervisor rejected UpdateKernelStack for the kernel stack (TSS.sp0): -EINVAL (-22)"
    );
    e.boot();
    // SAFETY: as above.
    unsafe { e.ops.load_kernel_stack(0xffff_c900_0000_8000).unwrap() };
    assert_eq!(
        e.hv.guest().kernel_stack,
        Some((e.tr(), 0xffff_c900_0000_8000))
    );
    assert_eq!(e.hv.effective().sp0, 0xffff_c900_0000_8000);
    // Non-canonical sp0 refused.
    // SAFETY: refused before use.
    assert!(unsafe { e.ops.load_kernel_stack(0x0000_8000_0000_0000) }.is_err());
}

#[test]
fn lazy_mode_batches_effective_updates_until_set_lazy_mode_0() {
    let e = env();
    e.boot();
    e.ops.enter_lazy_cpu().unwrap();
    assert_eq!(e.hv.guest().lazy_mode, 2);
    let tls = [Descriptor::data_segment(0x7000, 0xfff, Ring::Ring3).unwrap(); 3];
    // SAFETY: leaked tables; a stack address never used.
    unsafe {
        e.ops.load_kernel_stack(0xffff_c900_0001_0000).unwrap();
        e.ops.load_tls(&tls).unwrap();
        e.ops.load_ldt(Some(&e.ldt)).unwrap();
    }
    // The guest's view is current; the effective state waits.
    assert_eq!(e.hv.guest().ldtr, Selector::gdt(10, Ring::Ring0));
    assert_eq!(e.ops.store_ldt().unwrap(), Some(e.ldt));
    let eff = e.hv.effective();
    assert_eq!(eff.sp0, 0);
    assert_eq!(Descriptor(eff.gdt[12]), Descriptor::NULL);
    assert!(eff.ldt.is_empty());
    assert_eq!(e.hv.pending().len(), 1 + 3 + 2 + 1);
    e.ops.leave_lazy_cpu().unwrap();
    let eff = e.hv.effective();
    assert_eq!(eff.sp0, 0xffff_c900_0001_0000);
    assert_eq!(Descriptor(eff.gdt[12]).base(), 0x7000);
    assert_eq!(eff.ldt.len(), 8);
    assert!(e.hv.pending().is_empty());
    let t = e.hv.trace();
    let text = t.to_string();
    assert!(text.contains("SetLazyMode(73)(0x2"), "{text}");
    assert!(
        text.contains("deferred: effective sp0 = 0xffffc90000010000"),
        "{text}"
    );
    assert!(
        text.contains("flush: 7 deferred change(s) applied"),
        "{text}"
    );
    let deferred = t
        .events
        .iter()
        .filter(|ev| matches!(ev, VmiEvent::Call { deferred: true, .. }))
        .count();
    assert_eq!(
        deferred,
        1 + 3 + 2,
        "UpdateKernelStack, 3 TLS, LDT descriptor + SetLDT"
    );
    // Pairing is enforced.
    assert!(matches!(
        e.ops.leave_lazy_cpu(),
        Err(PvError::LazyModeMismatch { .. })
    ));
    e.ops.enter_lazy_cpu().unwrap();
    assert!(e.ops.enter_lazy_cpu().is_err());
    let n = e.calls().len();
    e.ops.flush_lazy().unwrap();
    assert_eq!(e.calls()[n..], [call::SET_LAZY_MODE, call::SET_LAZY_MODE]);
    assert_eq!(e.hv.guest().lazy_mode, 2);
    e.ops.leave_lazy_cpu().unwrap();
}

#[test]
fn none_answers_fall_back_to_native() {
    let hv = hv();
    for nr in [call::SET_GDT, call::GET_GDT, call::SET_TR, call::GET_TR] {
        hv.set_answer(nr, Reloc::None);
    }
    let e = env_with(hv);
    assert_eq!(e.ops.relocation(call::SET_TR).unwrap().typ, RelocType::None);
    e.boot();
    // lgdt and ltr ran on the CPU (the model), not through the ROM.
    let regs = e.ops.native().cpu().registers();
    assert_eq!(regs.gdtr, e.gdt.pointer());
    assert_eq!(regs.tr, e.tr());
    assert_eq!(e.ops.store_tr().unwrap(), e.tr());
    assert_eq!(e.ops.store_gdt().unwrap(), e.gdt.pointer());
    assert_eq!(e.calls(), [call::SET_IDT, call::WRITE_GDT_ENTRY]);
    assert_eq!(e.hv.guest().gdtr, None);
}

/// Linux's para_wrap installs nothing for a NOP answer, so the native op
/// stays; pvops-vmi runs it. The CPU model holds the GDT (SetGDT answered
/// NONE: `lgdt` ran natively), as a kernel whose `ltr`/`lldt` the
/// hypervisor traps would see it.
#[test]
fn nop_for_a_wrapped_call_runs_the_native_op() {
    let hv = hv();
    for nr in call::WRAPPED {
        hv.set_answer(nr, Reloc::Nop);
    }
    hv.set_answer(call::SET_GDT, Reloc::None);
    let e = env_with(hv);
    assert_eq!(pvops_vmi::call::WRAPPED, call::WRAPPED);
    for nr in call::WRAPPED {
        assert_eq!(e.ops.relocation(nr).unwrap().typ, RelocType::Nop, "{nr}");
    }
    // load_gdt (lgdt), load_idt (SetIDT), write_gdt_entry (a store), load_tr
    // (ltr): only SetIDT reaches the ROM.
    e.boot();
    assert_eq!(e.calls(), [call::SET_IDT]);
    let regs = e.ops.native().cpu().registers();
    assert_eq!(regs.tr, e.tr());
    assert_eq!(regs.tr_base, e.tss.base());
    let tss = e.tss_desc();
    assert_eq!(
        e.gdt_store.read(8),
        Some(Descriptor(tss.low | (2 << 40))),
        "stored natively, then marked busy by ltr"
    );
    assert_eq!(e.gdt_store.read(9), Some(Descriptor(tss.high)));
    // SAFETY: leaked 'static tables; a stack address never used.
    unsafe {
        // native_load_sp0: a store into the TSS.
        e.ops.load_kernel_stack(0xffff_c900_0000_8000).unwrap();
        assert_eq!(e.rsp0(), 0xffff_c900_0000_8000);
        // native_write_ldt_entry / native_write_idt_entry: stores.
        e.ops
            .write_ldt_entry(&e.ldt, 1, presets::USER_DATA)
            .unwrap();
        assert_eq!(e.ldt_store.read(1), Some(presets::USER_DATA));
        let g = Gate64::trap(Selector(0x10), 0xffff_ffff_8123_4560, Ring::Ring3);
        e.ops.write_idt_entry(&e.idt, 0x80, g).unwrap();
        assert_eq!(e.idt_store.read(0x80), Some(g));
        // native_set_ldt: the descriptor, then lldt; no LDT: lldt 0 alone.
        e.ops.load_ldt(Some(&e.ldt)).unwrap();
        let want = SystemDescriptor::ldt(e.ldt.base(), 8).unwrap();
        assert_eq!(e.gdt_store.read(10), Some(Descriptor(want.low)));
        let regs = e.ops.native().cpu().registers();
        assert_eq!(
            (regs.ldtr, regs.ldtr_base),
            (Selector::gdt(10, Ring::Ring0), e.ldt.base())
        );
        e.ops.load_ldt(None).unwrap();
        assert_eq!(e.ops.native().cpu().registers().ldtr, Selector::NULL);
        assert_eq!(
            e.gdt_store.read(10),
            Some(Descriptor(want.low)),
            "no empty descriptor without SetLDT"
        );
        // Lazy mode: the native op does nothing, the pairing still holds.
        e.ops.enter_lazy_cpu().unwrap();
        e.ops.load_tls(&[presets::USER_DATA; 3]).unwrap();
        e.ops.leave_lazy_cpu().unwrap();
        assert!(e.ops.leave_lazy_cpu().is_err());
    }
    assert_eq!(e.gdt_store.read(12), Some(presets::USER_DATA));
    assert_eq!(e.calls(), [call::SET_IDT], "nothing else reached the ROM");
    let insns: Vec<&str> = e
        .ops
        .native()
        .cpu()
        .log()
        .iter()
        .map(|r| r.insn)
        .filter(|i| ["lgdt", "ltr", "lldt"].contains(i))
        .collect();
    assert_eq!(insns, ["lgdt", "ltr", "lldt", "lldt"]);
    let g = e.hv.guest();
    assert_eq!(
        (g.gdtr, g.tr, g.ldtr, g.kernel_stack),
        (None, Selector::NULL, Selector::NULL, None),
        "the hypervisor saw none of the native ops"
    );
}

/// NOP for UpdateKernelStack alone: TR went through SetTR, so the CPU's own
/// TR is not the guest's; the native store finds the TSS through the
/// guest's GDT, as Linux's native_load_sp0 uses its own TSS.
#[test]
fn nop_update_kernel_stack_stores_into_the_guests_tss() {
    let hv = hv();
    hv.set_answer(call::UPDATE_KERNEL_STACK, Reloc::Nop);
    let e = env_with(hv);
    // Before any TSS descriptor is in the GDT: refused, nothing stored.
    // SAFETY: refused before anything is written.
    let err = unsafe { e.ops.load_kernel_stack(0x1234) }.unwrap_err();
    assert!(err.to_string().contains("load_kernel_stack"), "{err}");
    e.boot();
    assert!(e.ops.native().cpu().registers().tr.is_null());
    // SAFETY: the guest's TSS; a stack address never used.
    unsafe { e.ops.load_kernel_stack(0xffff_c900_0000_9000).unwrap() };
    assert_eq!(e.rsp0(), 0xffff_c900_0000_9000);
    assert!(!e.calls().contains(&call::UPDATE_KERNEL_STACK));
    assert_eq!(e.hv.guest().kernel_stack, None);
}

/// Linux's para_fill installs vmi_nop for a NOP answer: SetGDT and SetIDT
/// answered NOP do nothing at all, neither the call nor the instruction.
#[test]
fn nop_for_a_filled_call_does_nothing() {
    let hv = hv();
    hv.set_answer(call::SET_GDT, Reloc::Nop);
    hv.set_answer(call::SET_IDT, Reloc::Nop);
    let e = env_with(hv);
    // SAFETY: leaked 'static tables (nothing is loaded).
    unsafe {
        e.ops.load_gdt(&e.gdt).unwrap();
        e.ops.load_idt(&e.idt).unwrap();
    }
    assert!(e.calls().is_empty());
    let regs = e.ops.native().cpu().registers();
    assert_eq!(regs.gdtr, DescriptorTablePointer::default());
    assert_eq!(regs.idtr, DescriptorTablePointer::default());
    assert!(e.ops.native().cpu().log().is_empty());
    assert_eq!(e.hv.guest().gdtr, None);
}

#[test]
fn jump_rel_answer_refused_at_init() {
    let hv = hv();
    hv.set_answer(call::SET_GDT, Reloc::JumpRel);
    let rom = pvops_vmi::rom::probe(hv).unwrap();
    // SAFETY: hv-sim's ROM.
    let err = unsafe { Ops::init(hv, rom, LAYOUT, native()) }
        .err()
        .unwrap();
    assert!(matches!(
        err,
        InitError::BadRelocation {
            call: 3,
            typ: 2,
            ..
        }
    ));
    assert!(err.to_string().contains("SetGDT (3)"), "{err}");
}

/// A platform that calls one byte past every entry: a backend bug.
struct Skewed(&'static Hv, u64);

impl ReadPhys for Skewed {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(addr, buf)
    }
}

// SAFETY: forwards to hv-sim's platform; a skewed entry is refused there
// (-EFAULT), so every call still touches only what its arguments name.
unsafe impl VmiPlatform for Skewed {
    unsafe fn get_reloc(&self, jump_point: u64, nr: u32) -> (u64, u8) {
        // SAFETY: forwarded.
        unsafe { self.0.get_reloc(jump_point, nr) }
    }
    unsafe fn call(&self, entry: u64, args: [u64; 4]) -> u64 {
        let entry = if entry == self.1 { entry } else { entry + 1 };
        // SAFETY: forwarded (hv-sim checks the entry).
        unsafe { VmiPlatform::call(self.0, entry, args) }
    }
}

#[test]
fn calling_a_wrong_address_is_an_error_not_the_right_function() {
    let hv = hv();
    let rom = pvops_vmi::rom::probe(hv).unwrap();
    let (_, idt_store, _) = tables();
    // SAFETY: hv-sim's ROM.
    let ops = unsafe { VmiOps::init(Skewed(hv, rom.init_entry()), rom, LAYOUT, native()) }.unwrap();
    // SAFETY: leaked table.
    let err = unsafe { ops.load_idt(&idt_store.idt().unwrap()) }.unwrap_err();
    assert_eq!(
        err,
        PvError::Hypervisor {
            call: "SetIDT",
            errno: Errno::EFAULT,
            at: Slot::Table(TableKind::Idt),
        }
    );
    assert_eq!(hv.guest().idtr, None);
    let bad = hv.trace().events.into_iter().find_map(|e| match e {
        VmiEvent::BadEntry { entry, why } => Some((entry, why)),
        _ => None,
    });
    let (entry, why) = bad.unwrap();
    assert_eq!(entry, 0xC8000 + 0x100 + 16 * 5 + 1);
    assert!(why.contains("not the start of a call stub"), "{why}");
}

#[test]
fn calls_before_vmi_init_are_refused() {
    let hv = hv();
    // SAFETY: hv-sim's ROM; GetTR has no pointer argument.
    let ret = unsafe { VmiPlatform::call(hv, 0xC8000 + 0x100 + 16 * 10, [0; 4]) };
    assert_eq!(ret as i64, -1);
    assert!(
        hv.trace()
            .last_call()
            .unwrap()
            .1
            .unwrap()
            .contains("VMI_Init")
    );
}

#[test]
fn a_failed_load_gdt_forgets_the_cached_table() {
    let e = env();
    e.boot();
    // A GDT the hypervisor refuses (at an address that is not guest
    // memory): the next op must ask GetGDT again instead of trusting a
    // cache of the refused table.
    let bad = Gdt::new(0x1000, 16).unwrap();
    // SAFETY: the call is refused before anything is read by the backend.
    let r = unsafe { e.ops.load_gdt(&bad) };
    let before = e.calls().len();
    // SAFETY: leaked tables.
    let _ = unsafe { e.ops.load_ldt(Some(&e.ldt)) };
    assert!(r.is_err(), "hv-sim must refuse a GDT outside guest memory");
    assert_eq!(e.calls()[before], call::GET_GDT);
}

/// VMI uses the trait's default `alloc_ldt`/`free_ldt`: success, and no
/// call reaches the ROM (VMI does not protect LDT pages).
#[test]
fn alloc_and_free_ldt_are_the_trait_defaults() {
    let e = env();
    e.boot();
    let before = e.calls().len();
    // SAFETY: the test's leaked LDT, not loaded.
    unsafe {
        e.ops.alloc_ldt(&e.ldt).unwrap();
        e.ops.free_ldt(&e.ldt).unwrap();
    }
    assert_eq!(e.calls().len(), before);
}
