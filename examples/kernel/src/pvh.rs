//! PVH entry: how QEMU (`qemu-system-x86_64 -kernel`) and other PVH loaders
//! start this kernel.
//!
//! A PVH loader finds the 32-bit entry point in the `XEN_ELFNOTE_PHYS32_ENTRY`
//! (18) ELF note and jumps there in 32-bit protected mode with paging off
//! (ebx = physical address of `hvm_start_info`, unused here). `pvh_start`
//! builds an identity map of the first GiB with 2 MiB pages, enables PAE,
//! long mode and paging, loads a small GDT and far-jumps to 64-bit code,
//! which enters `_start` with boot flags 0 (a full CPU: every check runs)
//! and no start info (rsi 0).

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4            /* namesz: "Xen\0" */
    .long 4            /* descsz */
    .long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
    .popsection

    .pushsection .text.pvh, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB identity pages */
    movl $pvh_pdpt, %eax
    orl $3, %eax
    movl %eax, pvh_pml4
    movl $pvh_pd, %eax
    orl $3, %eax
    movl %eax, pvh_pdpt
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pvh_pd(,%ecx,8)
    movl $0, pvh_pd+4(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax          /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx   /* EFER */
    rdmsr
    orl $0x100, %eax         /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax    /* PG | PE */
    movl %eax, %cr0
    lgdt pvh_gdt_ptr
    ljmp $0x08, $pvh_long
    .code64
pvh_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %edi, %edi          /* boot flags: none */
    xorl %esi, %esi          /* no hv-sim start info */
    jmp _start
    .popsection

    .pushsection .rodata.pvh, "a"
    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00af9b000000ffff /* 64-bit code */
    .quad 0x00cf93000000ffff /* data */
pvh_gdt_ptr:
    .word 23
    .long pvh_gdt
    .popsection

    .pushsection .bss.pvh, "aw", @nobits
    .balign 4096
pvh_pml4: .skip 4096
pvh_pdpt: .skip 4096
pvh_pd:   .skip 4096
    .popsection
"#,
    options(att_syntax)
);
