//! Unit-testing kernel descriptor code on the host: run the example kernel's
//! `cpu_init` with the native backend over hv-sim's CPU model and inspect
//! the CPU state it leaves. `cargo run -p pvops-examples --example host_unit_test`

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use pvops::{DescriptorStorage, Exception, IdtGate, IdtStorage, Tss64, TssStorage};
use pvops_examples::{Handler, INITIAL_GDT, LAYOUT, TSS_SELECTOR, cpu_init};
use pvops_native::NativeOps;

static GDT: DescriptorStorage<16> = DescriptorStorage::new(INITIAL_GDT);
static IDT: IdtStorage<256> = IdtStorage::new([IdtGate::MISSING; 256]);
static TSS: TssStorage<Tss64> = TssStorage::new(Tss64::new());

// Stand-ins for the kernel's assembly entry stubs: the CPU model records
// the gates but never takes an interrupt.
extern "C" fn isr_breakpoint() {}
extern "C" fn isr_page_fault() {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the CPU model is only handed the statics above.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let ops = NativeOps::with_cpu(cpu, LAYOUT);
    let idt = IDT.idt()?;
    // One fn pointer per handler, used for the gate and the check below (two
    // coercions of one function need not give the same address).
    let (isr_breakpoint, isr_page_fault): (Handler, Handler) = (isr_breakpoint, isr_page_fault);
    // SAFETY: all tables are statics.
    unsafe {
        cpu_init(
            &ops,
            &GDT.gdt()?,
            &idt,
            TSS.base(),
            &[
                (Exception::Breakpoint.vector(), isr_breakpoint),
                (Exception::PageFault.vector(), isr_page_fault),
            ],
            0xffff_c900_0000_8000,
        )?;
    }
    let regs = ops.cpu().registers();
    assert_eq!(regs.tr, TSS_SELECTOR);
    assert_eq!(regs.idtr, idt.pointer());
    println!("TR = {}, TSS base {:#x}", regs.tr, regs.tr_base);
    let pf = IDT.read(14).expect("gate");
    assert_eq!(pf.offset(), isr_page_fault as *const () as usize as u64);
    println!("IDT[14] = {pf}");
    for r in ops.cpu().log() {
        println!(
            "  {} {:#x}{}",
            r.insn,
            r.operand,
            r.fault
                .map(|f| format!(" -> fault {f:?}"))
                .unwrap_or_default()
        );
    }
    // Reloading TR without rewriting the descriptor fails cleanly: the CPU
    // marked the TSS busy (on hardware this would be a #GP).
    // SAFETY: as above.
    let again = unsafe { pvops::DescriptorOps::load_tr(&ops, TSS_SELECTOR) };
    println!(
        "load_tr again: {}",
        again
            .map(|()| "ok".to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    assert!(again.is_err());
    Ok(())
}
