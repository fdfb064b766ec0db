/* start64.S - the start of every vCPU of a 64-bit guest ("long" at ring 0, "user" at ring 3),
   and the entry of exception handlers (see exceptions.c).
   The host starts each vCPU here with its index in %edi (0 when nobody says otherwise,
   as under `pyhv run`); its stack is pyhv_stacks[index]. */
#include <pyhv/guest.h>

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cmp $PYHV_MAX_CPUS, %edi
    jae 1f
    mov %edi, %eax
    inc %eax
    shl $PYHV_STACK_SHIFT, %rax
    lea pyhv_stacks(%rip), %rsp
    add %rax, %rsp
    xor %ebp, %ebp                 /* the end of gdb's backtraces */
    call pyhv_start
1:  ud2                            /* more vCPUs than stacks */
    jmp 1b
    .size _start, . - _start

/* Entered by a return from the exception: RSP and RFLAGS are the interrupted ones, RDI
   points at this vCPU's pyhv_ex_slot, every other register is as the exception found it. */
    .text
    .globl pyhv_exception_entry
    .type pyhv_exception_entry, @function
pyhv_exception_entry:
    pushfq
    push %rax
    mov %rsp, %rax                          /* rax: [saved rax, saved rflags], then the stack */
    sub $(PYHV_EX_SIZE + 16), %rsp
    and $-16, %rsp                          /* rsp: struct ex_regs */
    mov %rbx, PYHV_EX_RBX(%rsp)
    mov %rcx, PYHV_EX_RCX(%rsp)
    mov %rdx, PYHV_EX_RDX(%rsp)
    mov %rsi, PYHV_EX_RSI(%rsp)
    mov %rbp, PYHV_EX_RBP(%rsp)
    mov %r8, PYHV_EX_R8(%rsp)
    mov %r9, PYHV_EX_R9(%rsp)
    mov %r10, PYHV_EX_R10(%rsp)
    mov %r11, PYHV_EX_R11(%rsp)
    mov %r12, PYHV_EX_R12(%rsp)
    mov %r13, PYHV_EX_R13(%rsp)
    mov %r14, PYHV_EX_R14(%rsp)
    mov %r15, PYHV_EX_R15(%rsp)
    mov (%rax), %rbx
    mov %rbx, PYHV_EX_RAX(%rsp)
    mov 8(%rax), %rbx
    mov %rbx, PYHV_EX_RFLAGS(%rsp)
    lea 16(%rax), %rbx
    mov %rbx, PYHV_EX_RSP(%rsp)
    mov PYHV_SLOT_RDI(%rdi), %rbx
    mov %rbx, PYHV_EX_RDI(%rsp)
    mov PYHV_SLOT_VECTOR(%rdi), %rbx
    mov %rbx, PYHV_EX_VECTOR(%rsp)
    mov PYHV_SLOT_ERROR_CODE(%rdi), %rbx
    mov %rbx, PYHV_EX_ERROR_CODE(%rsp)
    mov PYHV_SLOT_CR2(%rdi), %rbx
    mov %rbx, PYHV_EX_CR2(%rsp)
    mov PYHV_SLOT_RIP(%rdi), %rbx
    mov %rbx, PYHV_EX_RIP(%rsp)
    incq PYHV_SLOT_DEPTH(%rdi)              /* the host refuses to nest too deep */
    mov %rdi, %rbx                          /* callee-saved: the slot */
    mov %rsp, %rdi
    call pyhv_exception_dispatch
    decq PYHV_SLOT_DEPTH(%rbx)
    /* resume: RFLAGS and RIP go just below the new RSP, for popfq; ret */
    mov PYHV_EX_RSP(%rsp), %rax
    sub $16, %rax
    mov PYHV_EX_RIP(%rsp), %rbx
    mov %rbx, 8(%rax)
    mov PYHV_EX_RFLAGS(%rsp), %rbx
    mov %rbx, (%rax)
    mov %rax, PYHV_EX_RSP(%rsp)
    mov PYHV_EX_RBX(%rsp), %rbx
    mov PYHV_EX_RCX(%rsp), %rcx
    mov PYHV_EX_RDX(%rsp), %rdx
    mov PYHV_EX_RSI(%rsp), %rsi
    mov PYHV_EX_RDI(%rsp), %rdi
    mov PYHV_EX_RBP(%rsp), %rbp
    mov PYHV_EX_R8(%rsp), %r8
    mov PYHV_EX_R9(%rsp), %r9
    mov PYHV_EX_R10(%rsp), %r10
    mov PYHV_EX_R11(%rsp), %r11
    mov PYHV_EX_R12(%rsp), %r12
    mov PYHV_EX_R13(%rsp), %r13
    mov PYHV_EX_R14(%rsp), %r14
    mov PYHV_EX_R15(%rsp), %r15
    mov PYHV_EX_RAX(%rsp), %rax
    mov PYHV_EX_RSP(%rsp), %rsp
    popfq
    ret
    .size pyhv_exception_entry, . - pyhv_exception_entry

/* one stack per vCPU, at the end of .bss */
    .section .pyhv_stacks, "aw", @nobits
    .balign PYHV_STACK_SIZE
    .globl pyhv_stacks
pyhv_stacks:
    .skip PYHV_MAX_CPUS * PYHV_STACK_SIZE
    .size pyhv_stacks, . - pyhv_stacks

    .section .note.GNU-stack, "", @progbits
