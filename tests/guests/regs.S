/* Long mode: hlt, then (when resumed) add 1 to each of rax..r15 (but rsp), hlt again. */
    .globl _start
_start:
    hlt
    inc %rax
    inc %rbx
    inc %rcx
    inc %rdx
    inc %rsi
    inc %rdi
    inc %rbp
    inc %r8
    inc %r9
    inc %r10
    inc %r11
    inc %r12
    inc %r13
    inc %r14
    inc %r15
    hlt
