/* Long mode: load an IDT with limit 0, then `ud2`: the #UD cannot be delivered, nor the
   #DF after it, so the CPU shuts down (a triple fault). */
    .globl _start
_start:
    lidt empty_idt(%rip)
    ud2
empty_idt:
    .word 0
    .quad 0
