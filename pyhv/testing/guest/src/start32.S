/* start32.S - the start of every vCPU of a 32-bit ("protected") guest, and the entry of
   exception handlers (see exceptions.c, and start64.S for the 64-bit twin).
   The host starts each vCPU here with its index in %edi. */
#include <pyhv/guest.h>

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cmp $PYHV_MAX_CPUS, %edi
    jae 1f
    mov %edi, %eax
    inc %eax
    shl $PYHV_STACK_SHIFT, %eax
    lea pyhv_stacks(%eax), %esp
    xor %ebp, %ebp
    sub $12, %esp                  /* 16-byte alignment at the call, as gcc expects */
    push %edi
    call pyhv_start
1:  ud2
    jmp 1b
    .size _start, . - _start

/* save a 32-bit register into a 64-bit field of struct ex_regs */
.macro SAVE reg, offset
    mov %\reg, \offset(%esp)
    movl $0, \offset+4(%esp)
.endm

/* Entered by a return from the exception: ESP and EFLAGS are the interrupted ones, EDI
   points at this vCPU's pyhv_ex_slot, every other register is as the exception found it. */
    .text
    .globl pyhv_exception_entry
    .type pyhv_exception_entry, @function
pyhv_exception_entry:
    pushfl
    push %eax
    mov %esp, %eax                          /* eax: [saved eax, saved eflags], then the stack */
    sub $(PYHV_EX_SIZE + 16), %esp
    and $-16, %esp                          /* esp: struct ex_regs */
    SAVE ebx, PYHV_EX_RBX
    SAVE ecx, PYHV_EX_RCX
    SAVE edx, PYHV_EX_RDX
    SAVE esi, PYHV_EX_RSI
    SAVE ebp, PYHV_EX_RBP
    mov (%eax), %ebx
    SAVE ebx, PYHV_EX_RAX
    mov 4(%eax), %ebx
    SAVE ebx, PYHV_EX_RFLAGS
    lea 8(%eax), %ebx
    SAVE ebx, PYHV_EX_RSP
    mov PYHV_SLOT_RDI(%edi), %ebx
    SAVE ebx, PYHV_EX_RDI
    mov PYHV_SLOT_VECTOR(%edi), %ebx
    SAVE ebx, PYHV_EX_VECTOR
    mov PYHV_SLOT_ERROR_CODE(%edi), %ebx
    SAVE ebx, PYHV_EX_ERROR_CODE
    mov PYHV_SLOT_CR2(%edi), %ebx
    SAVE ebx, PYHV_EX_CR2
    mov PYHV_SLOT_RIP(%edi), %ebx
    SAVE ebx, PYHV_EX_RIP
    xor %ebx, %ebx                          /* no r8-r15 here */
    SAVE ebx, PYHV_EX_R8
    SAVE ebx, PYHV_EX_R9
    SAVE ebx, PYHV_EX_R10
    SAVE ebx, PYHV_EX_R11
    SAVE ebx, PYHV_EX_R12
    SAVE ebx, PYHV_EX_R13
    SAVE ebx, PYHV_EX_R14
    SAVE ebx, PYHV_EX_R15
    addl $1, PYHV_SLOT_DEPTH(%edi)
    adcl $0, PYHV_SLOT_DEPTH+4(%edi)
    mov %edi, %ebx                          /* callee-saved: the slot */
    mov %esp, %eax
    sub $12, %esp
    push %eax
    call pyhv_exception_dispatch
    add $16, %esp
    subl $1, PYHV_SLOT_DEPTH(%ebx)
    sbbl $0, PYHV_SLOT_DEPTH+4(%ebx)
    /* resume: EFLAGS and EIP go just below the new ESP, for popfl; ret */
    mov PYHV_EX_RSP(%esp), %eax
    sub $8, %eax
    mov PYHV_EX_RIP(%esp), %ebx
    mov %ebx, 4(%eax)
    mov PYHV_EX_RFLAGS(%esp), %ebx
    mov %ebx, (%eax)
    mov %eax, PYHV_EX_RSP(%esp)
    mov PYHV_EX_RBX(%esp), %ebx
    mov PYHV_EX_RCX(%esp), %ecx
    mov PYHV_EX_RDX(%esp), %edx
    mov PYHV_EX_RSI(%esp), %esi
    mov PYHV_EX_RDI(%esp), %edi
    mov PYHV_EX_RBP(%esp), %ebp
    mov PYHV_EX_RAX(%esp), %eax
    mov PYHV_EX_RSP(%esp), %esp
    popfl
    ret
    .size pyhv_exception_entry, . - pyhv_exception_entry

    .section .pyhv_stacks, "aw", @nobits
    .balign PYHV_STACK_SIZE
    .globl pyhv_stacks
pyhv_stacks:
    .skip PYHV_MAX_CPUS * PYHV_STACK_SIZE
    .size pyhv_stacks, . - pyhv_stacks

    .section .note.GNU-stack, "", @progbits
