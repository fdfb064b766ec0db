/* User mode: add 1 to the qword at RDI forever (RDI set by the host). */
    .globl _start
_start:
    incq (%rdi)
    jmp _start
