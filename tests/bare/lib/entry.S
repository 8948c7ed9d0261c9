// Entry stub, interrupt stubs, CPL3 entry/return, and the library's static GDT, TSS and page
// tables. Everything static lives in .data so no CPL0 loop has to build it (CPL0 is emulated on
// kvm_pvm, ~1 µs per instruction).
#define KERNEL_CS 0x10
#define KERNEL_DS 0x18
#define USER_DS 0x23
#define USER_CS 0x2b
#define TSS_SEL 0x30

        .section .text.entry, "ax"
        .code64
        .globl _start
_start:
        // Record the entry state for the entry test (a few instructions; CPL0 is emulated).
        movq    %rsp, entry_state+0(%rip)
        movq    %rdx, %r8
        rdtsc
        movl    %eax, entry_state+96(%rip)
        movl    %edx, entry_state+100(%rip)
        movq    %r8, %rdx
        pushfq
        popq    entry_state+8(%rip)
        cli
        cld
        movq    %rsi, entry_state+16(%rip)
        movq    %cr0, %rax
        movq    %rax, entry_state+24(%rip)
        movq    %cr3, %rax
        movq    %rax, entry_state+32(%rip)
        movq    %cr4, %rax
        movq    %rax, entry_state+40(%rip)
        movl    $0xc0000080, %ecx
        rdmsr
        movl    %eax, entry_state+48(%rip)
        movl    %edx, entry_state+52(%rip)
        movw    %cs, entry_state+56(%rip)
        movw    %ds, entry_state+58(%rip)
        movw    %es, entry_state+60(%rip)
        movw    %ss, entry_state+62(%rip)
        movw    %fs, entry_state+64(%rip)
        movw    %gs, entry_state+66(%rip)
        str     entry_state+68(%rip)
        sgdt    entry_state+70(%rip)
        sidt    entry_state+86(%rip)
        movq    %rsi, boot_params(%rip)
        leaq    boot_stack_top(%rip), %rsp
        xorl    %ebp, %ebp
        call    lib_init
        call    lib_main
1:      cli
        hlt
        jmp     1b

// ---- interrupt stubs: 256 of them, 16 bytes apart, each pushes (error code,) vector ----------
// They sit at the fixed address ISR_BASE (first in .text, see guest.ld) so the IDT below can be
// assembled with constant gate values: no CPL0 loop fills it at start-up.
#define ISR_BASE 0x200000
        .section .text.isr, "ax"
        .balign 16
        .globl isr_stubs
isr_stubs:
        .set vec, 0
        .rept 256
        .balign 16
        .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        pushq   $vec
        .else
        pushq   $0
        pushq   $vec
        .endif
        jmp     isr_common
        .set vec, vec + 1
        .endr

        .text
isr_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, %rdi
        cld
        call    isr_dispatch
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rbp
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rbx
        popq    %rax
        addq    $16, %rsp
        iretq

// ---- CPL3 ------------------------------------------------------------------------------------
// uint64_t enter_user(user_fn fn, uint64_t arg, unsigned flags)
        .globl enter_user
enter_user:
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, user_saved_rsp(%rip)
        movq    %rsp, lib_tss+4(%rip)           // TSS.RSP0: interrupt frames go below this
        movq    %rdi, %r12
        movq    %rsi, %r13
        movq    $0x3002, %rax                   // IOPL 3, IF 0
        testl   $1, %edx
        jz      1f
        orq     $0x200, %rax
1:      movl    $USER_DS, %ecx
        movw    %cx, %ds
        movw    %cx, %es
        pushq   $USER_DS                        // SS
        leaq    user_stack_top(%rip), %rcx
        pushq   %rcx                            // RSP
        pushq   %rax                            // RFLAGS
        pushq   $USER_CS                        // CS
        leaq    user_entry(%rip), %rcx
        pushq   %rcx                            // RIP
        iretq

// First CPL3 code: call fn(arg), then return to CPL0 through the DPL 3 gate. On kvm_pvm
// `int $0x80` from CPL3 does nothing (execution continues after it), so the ud2 after it is the
// way back there: isr_dispatch recognises #UD at user_exit_ud2 from CPL3.
user_entry:
        movq    %r13, %rdi
        callq   *%r12
        movq    %rax, %rdi
        .globl user_exit_int
user_exit_int:
        int     $0x80
        .globl user_exit_ud2
user_exit_ud2:
        ud2

// void user_return(uint64_t value): called from isr_dispatch (CPL0) for int $0x80 from CPL3.
// Drops the interrupt frame and returns from enter_user.
        .globl user_return
user_return:
        movq    %rdi, %rax
        movq    user_saved_rsp(%rip), %rsp
        movl    $KERNEL_DS, %ecx
        movw    %cx, %ds
        movw    %cx, %es
        movw    %cx, %ss
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        ret

// ---- GDT -------------------------------------------------------------------------------------
// void gdt_reload(void): lgdt, reload CS/DS/ES/SS/FS/GS.
        .globl gdt_reload
gdt_reload:
        lgdt    lib_gdtr(%rip)
        movl    $KERNEL_DS, %eax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        xorl    %eax, %eax
        movw    %ax, %fs
        movw    %ax, %gs
        popq    %rax                            // return address
        pushq   $KERNEL_CS
        pushq   %rax
        lretq

// ---- MSR access that survives #GP ------------------------------------------------------------
// int rdmsr_safe(uint32_t msr, uint64_t *val)
        .globl rdmsr_safe
rdmsr_safe:
        movl    %edi, %ecx
        leaq    1f(%rip), %rax
        movq    %rax, fault_fixup_rip(%rip)
        rdmsr
        movq    $0, fault_fixup_rip(%rip)
        shlq    $32, %rdx
        movl    %eax, %eax
        orq     %rdx, %rax
        movq    %rax, (%rsi)
        xorl    %eax, %eax
        ret
1:      movl    $-1, %eax
        ret

// int wrmsr_safe(uint32_t msr, uint64_t val)
        .globl wrmsr_safe
wrmsr_safe:
        movl    %edi, %ecx
        movl    %esi, %eax
        movq    %rsi, %rdx
        shrq    $32, %rdx
        leaq    1f(%rip), %r8
        movq    %r8, fault_fixup_rip(%rip)
        wrmsr
        movq    $0, fault_fixup_rip(%rip)
        xorl    %eax, %eax
        ret
1:      movl    $-1, %eax
        ret

// ---- static data -----------------------------------------------------------------------------
        .data
        .balign 16
        .globl lib_gdt, lib_gdt_end, lib_gdtr
lib_gdt:
        .quad   0                               // 0x00 null
        .quad   0x00cf9b000000ffff              // 0x08 32-bit code (AP trampoline)
        .quad   0x00af9b000000ffff              // 0x10 64-bit kernel code
        .quad   0x00cf93000000ffff              // 0x18 kernel data
        .quad   0x00cff3000000ffff              // 0x20 user data (DPL 3)
        .quad   0x00affb000000ffff              // 0x28 64-bit user code (DPL 3)
        .quad   0, 0                            // 0x30 TSS (filled by gdt_init)
lib_gdt_end:
        .balign 8
        .word   0, 0, 0
lib_gdtr:
        .word   lib_gdt_end - lib_gdt - 1
        .quad   lib_gdt

// IDT: 256 interrupt gates to the stubs, DPL 0 except the CPL3 return vector 0x80 (DPL 3).
        .balign 16
        .globl lib_idt
lib_idt:
        .set vec, 0
        .rept 256
        .word   (ISR_BASE + 16 * vec) & 0xffff
        .word   KERNEL_CS
        .byte   0
        .if vec == 0x80
        .byte   0xee
        .else
        .byte   0x8e
        .endif
        .word   ((ISR_BASE + 16 * vec) >> 16) & 0xffff
        .long   0
        .long   0
        .set vec, vec + 1
        .endr

// Page tables: PML4 -> PDPT -> 4 PDs of 2 MiB pages, identity 0-4 GiB, P|RW|US|PS; the last GiB
// (MMIO hole) also PWT|PCD. PDPT entries 4..63 are filled by map_high().
        .section .data.pagetables, "aw"
        .balign 4096
        .globl lib_pml4, lib_pdpt
lib_pml4:
        .quad   lib_pdpt + 0x7
        .fill   511, 8, 0
lib_pdpt:
        .quad   lib_pd + 0x7
        .quad   lib_pd + 0x1000 + 0x7
        .quad   lib_pd + 0x2000 + 0x7
        .quad   lib_pd + 0x3000 + 0x7
        .fill   508, 8, 0
lib_pd:
        .set pg, 0
        .rept 1536
        .quad   (pg << 21) | 0x87
        .set pg, pg + 1
        .endr
        .rept 512
        .quad   (pg << 21) | 0x9f
        .set pg, pg + 1
        .endr

        .bss
        .balign 16
        .globl entry_state
entry_state:
        .skip   104
        // 64-bit TSS (104 bytes) + I/O permission bitmap (8 KiB, all zero = every port allowed
        // in CPL3) + the 0xff terminator; gdt_init() sets RSP0/the map base/the terminator.
        // kvm_pvm ignores RFLAGS.IOPL in CPL3 but honours this bitmap.
        .balign 4096
        .globl lib_tss
lib_tss:
        .skip   104 + 8192 + 1
        .balign 4096
        .globl boot_stack_top, user_stack_top
        .skip   32768
boot_stack_top:
        .skip   65536
user_stack_top:
        .balign 8
        .globl user_saved_rsp, fault_fixup_rip
user_saved_rsp:
        .quad   0
fault_fixup_rip:
        .quad   0

        .section .note.GNU-stack, "", @progbits
