/* Any mode: spin forever. */
    .globl _start
_start:
    jmp _start
