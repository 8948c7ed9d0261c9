// PVH entry (Xen's direct-boot ABI, also what QEMU's `-kernel` uses for an ELF with this note
// and what pier uses when it finds it): 32-bit protected mode, paging off, flat CS/DS,
// EBX = guest-physical address of struct hvm_start_info. This stub switches to long mode with
// the library's static GDT and page tables, turns the start info into a zero page
// (pvh_boot_params in pvh.c) and joins the normal 64-bit entry `_start` with RSI pointing at it.
// Linked only into guests that carry the note (see CMakeLists.txt).
#define XEN_ELFNOTE_PHYS32_ENTRY 18

        .section .note.Xen, "a", @note
        .balign 4
        .long   4                               // namesz ("Xen\0")
        .long   4                               // descsz
        .long   XEN_ELFNOTE_PHYS32_ENTRY
        .asciz  "Xen"
        .balign 4
        .long   pvh_start32

        .text
        .code32
        .globl  pvh_start32
pvh_start32:
        cli
        cld
        movl    %ebx, pvh_start_info
        lgdt    lib_gdtr                        // 32-bit form: limit + low 32 bits of the base
        movl    $lib_pml4, %eax
        movl    %eax, %cr3
        movl    %cr4, %eax
        orl     $0x20, %eax                     // PAE
        movl    %eax, %cr4
        movl    $0xc0000080, %ecx               // EFER.LME
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax               // PG | PE
        movl    %eax, %cr0
        ljmp    $0x10, $pvh_start64

        .code64
pvh_start64:
        movl    $0x18, %eax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        leaq    boot_stack_top(%rip), %rsp
        call    pvh_boot_params
        movq    %rax, %rsi
        jmp     _start

        .section .note.GNU-stack, "", @progbits
