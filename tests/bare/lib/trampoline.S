// AP start-up: real-mode trampoline copied to SMP_TRAMPOLINE (0x10000) by smp_start_aps().
// SIPI vector 0x10 starts the AP at CS=0x1000, IP=0. Real mode -> 32-bit protected mode ->
// long mode with the library's GDT and page tables, then ap_entry64 in the image.
#define SMP_TRAMPOLINE 0x10000
#define T(x) ((x) - smp_trampoline_start + SMP_TRAMPOLINE)

        .section .rodata
        .globl smp_trampoline_start, smp_trampoline_end
        .code16
smp_trampoline_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   (tramp_gdtr - smp_trampoline_start)
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $T(tramp32)

        .code32
tramp32:
        movw    $0x18, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    %cr4, %eax
        orl     $0x20, %eax                     // PAE
        movl    %eax, %cr4
        movl    $lib_pml4, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx               // EFER.LME
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000000, %eax               // PG
        movl    %eax, %cr0
        ljmpl   $0x10, $T(tramp64)

        .code64
tramp64:
        movabsq $ap_entry64, %rax
        jmp     *%rax

        .balign 8
tramp_gdtr:
        .word   8 * 8 - 1                       // lib_gdt: 8 descriptors (entry.S)
        .long   lib_gdt
smp_trampoline_end:

// 64-bit AP entry in the image: segments, a stack by arrival index, then ap_main(index).
        .text
        .globl ap_entry64
ap_entry64:
        movl    $0x18, %eax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        lgdt    lib_gdtr(%rip)
        movl    $1, %eax
        lock xaddl %eax, smp_ap_arrived(%rip)
        incl    %eax                            // index 1, 2, ...
        movl    %eax, %edi
        cmpl    $63, %eax
        jbe     1f
        movl    $63, %eax                       // more APs than stacks: share the last one
1:      incq    %rax
        shlq    $13, %rax                       // 8 KiB per AP
        leaq    ap_stacks(%rip), %rsp
        addq    %rax, %rsp
        xorl    %ebp, %ebp
        call    ap_main
2:      cli
        hlt
        jmp     2b

        .bss
        .balign 4096
ap_stacks:
        .skip   64 * 8192

        .section .note.GNU-stack, "", @progbits
