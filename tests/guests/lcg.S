/* Long mode: 200 steps of a 64-bit LCG.  Each step stores x into a 4 KiB ring at 0x300000,
   keeps a running sum in r12 and a step count in r13, OUTs the low 32 bits of x on port
   0xE9, and every 64 steps also stores the sum in a page of its own (0x400000 + 4096*k).  The
   state lives in registers and memory, so a restored guest must have both right. */
    .globl _start
_start:
    mov $0x2545F4914F6CDD1D, %rax
    mov $6364136223846793005, %rbx
    mov $1442695040888963407, %rcx
    mov $0x300000, %rsi
    xor %r12, %r12
    xor %r13, %r13
    mov $0xE9, %dx
1:  imul %rbx, %rax
    add %rcx, %rax
    mov %r13, %r8
    and $511, %r8
    mov %rax, (%rsi,%r8,8)
    add %rax, %r12
    inc %r13
    out %eax, %dx
    mov %r13, %r8
    and $63, %r8
    jnz 2f
    mov %r13, %r9
    shr $6, %r9
    shl $12, %r9
    mov %r12, 0x400000(%r9)
2:  cmp $200, %r13
    jne 1b
    hlt
