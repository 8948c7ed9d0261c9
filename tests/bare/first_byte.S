// first_byte: no library. Its first instruction writes '!' to COM1, so the host's time from
// exec to that byte is pier's exec -> first guest instruction (plus one I/O exit); then it prints
// the PASS line and powers off through S5.
        .section .text.entry, "ax"
        .code64
        .globl _start
_start:
        movw    $0x3f8, %dx
        movb    $'!', %al
        outb    %al, %dx
        leaq    msg(%rip), %rsi
        movl    $msg_end - msg, %ecx
        rep outsb
        movw    $0x600, %dx
        movb    $0x34, %al
        outb    %al, %dx
1:      cli
        hlt
        jmp     1b

        .section .rodata
msg:    .ascii  "\r\nPIER-TEST PASS first_byte\r\n"
msg_end:

        .section .note.GNU-stack, "", @progbits
