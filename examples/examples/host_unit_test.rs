//! Unit-testing kernel descriptor code on the host: run the example kernel's
//! `cpu_init` with the native backend over hv-sim's CPU model and inspect
//! the CPU state it leaves. `cargo run -p pvops-examples --example host_unit_test`

use hv_sim::softcpu::{CpuMode, HostMemory, SoftCpu};
use pvops::{DescriptorStorage, IdtGate, IdtStorage};
use pvops_examples::{INITIAL_GDT, LAYOUT, TSS_SELECTOR, cpu_init};
use pvops_native::NativeOps;

static GDT: DescriptorStorage<16> = DescriptorStorage::new(INITIAL_GDT);
static IDT: IdtStorage<256> = IdtStorage::new([IdtGate::MISSING; 256]);
static TSS: DescriptorStorage<13> = DescriptorStorage::new([pvops::Descriptor::NULL; 13]);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the CPU model is only handed the statics above.
    let cpu = SoftCpu::new(unsafe { HostMemory::new() }, CpuMode::Long);
    let ops = NativeOps::with_cpu(cpu, LAYOUT);
    let idt = IDT.idt()?;
    // SAFETY: all tables are statics.
    unsafe {
        cpu_init(
            &ops,
            &GDT.gdt()?,
            &idt,
            TSS.base(),
            &[(3, 0xffff_ffff_8100_0000), (14, 0xffff_ffff_8100_0100)],
            0xffff_c900_0000_8000,
        )?;
    }
    let regs = ops.cpu().registers();
    assert_eq!(regs.tr, TSS_SELECTOR);
    assert_eq!(regs.idtr, idt.pointer());
    println!("TR = {}, TSS base {:#x}", regs.tr, regs.tr_base);
    println!("IDT[14] = {}", IDT.read(14).expect("gate"));
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
