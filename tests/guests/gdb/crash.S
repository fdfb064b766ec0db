/* A 64-bit guest that dies: it loads a null IDT and divides by zero, so the #DE becomes a
   triple fault.  The gdb tests check gdb is told where. */
    .text
    .globl _start
_start:
    lidt null_idt(%rip)
    xor %ecx, %ecx
    .globl crash
crash:
    div %ecx
    hlt

    .data
null_idt: .word 0
    .quad 0
