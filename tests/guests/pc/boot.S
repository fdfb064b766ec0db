/* The PC test kernel's entry (multiboot v1): the header, then the way to 64-bit long mode
   (kvm_pvm runs interrupts of 64-bit guests only), its own GDT, identity page tables for the
   first 4 GiB, interrupt stubs, and the real-mode code it copies below 1 MiB for application
   processors (the SIPI trampoline) and for the S3 resume.  C code is in pc.c. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003
#define CODE32 0x08
#define DATA 0x10
#define CODE64 0x18

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

    .text
    .code32
    .globl _start
_start:
    mov %ebx, %edi               /* multiboot information: kmain's argument */
    lgdt gdt_descriptor
    ljmp $CODE32, $1f
1:  mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $stack_top, %esp
    call enter_long_mode
    ljmp $CODE64, $start64

/* from 32-bit protected mode with paging off: PAE, our page tables, EFER.LME, paging */
enter_long_mode:
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ret

/* an AP arrives here from the trampoline, in 32-bit protected mode with our GDT */
ap_entry32:
    mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, ap_stack_index
    inc %eax
    shl $12, %eax
    add $ap_stacks, %eax
    mov %eax, %esp
    call enter_long_mode
    ljmp $CODE64, $ap_entry64

    .code64
start64:
    mov $DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    call kmain
2:  cli
    hlt
    jmp 2b

ap_entry64:
    call ap_main
3:  cli
    hlt
    jmp 3b

/* interrupt vectors 0x40-0x43: count them, let C acknowledge them */
.macro vector n
    .globl irq_stub_\n
irq_stub_\n:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov $\n, %edi
    call on_interrupt
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
.endm
    vector 0x40
    vector 0x41
    vector 0x42
    vector 0x43

/* any other vector (an exception): report it and stop */
    .globl fault_stub
fault_stub:
    call on_fault
4:  cli
    hlt
    jmp 4b

/* real-mode code copied to 0x8000: the SIPI vector 0x08 starts an AP here */
    .code16
    .globl trampoline_start, trampoline_end
trampoline_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (0x8000 + tramp_gdtr - trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $CODE32, $ap_entry32
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:

/* real-mode code copied to 0x9000, the S3 waking vector: report PM1 status (WAK_STS and
   RTC_STS, shifted down) through debug-exit, from real mode */
    .globl resume_start, resume_end
resume_start:
    mov $0x600, %dx
    in %dx, %ax
    shr $8, %ax
    and $0x84, %ax
    or $0x01, %ax                /* 0x85: woken (WAK_STS) by the RTC (RTC_STS) */
    mov $0xf4, %dx
    out %al, %dx
5:  hlt
    jmp 5b
resume_end:

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff     /* 0x08: flat 32-bit code */
    .quad 0x00cf93000000ffff     /* 0x10: flat data */
    .quad 0x00af9b000000ffff     /* 0x18: 64-bit code */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
ap_stack_index:
    .long 0

/* identity page tables: 4 GiB in 2 MiB pages */
    .balign 4096
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3, pd + 0x1003, pd + 0x2003, pd + 0x3003
    .fill 508, 8, 0
pd:
    i = 0
    .rept 2048
    .quad (i << 21) + 0x83
    i = i + 1
    .endr

    .bss
    .balign 4096
ap_stacks:
    .space 4096 * 8
    .balign 16
    .space 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
