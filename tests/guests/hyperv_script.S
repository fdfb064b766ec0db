/* The Hyper-V test guest: a small interpreter of "scripts" that the tests write into guest
   memory, one per vCPU, so that each test says what the guest does (RDMSR, WRMSR, hypercalls,
   CPUID, waiting for interrupts, clock checks) without an assembler file of its own.

   Long mode, CPL0, entered at 0x1000 on every vCPU.  Each vCPU finds its area from its APIC
   ID (CPUID 1 EBX[31:24]):  BASE = 0x100000 + id * 0x40000

     BASE + 0x00000  script: ops of 4 u64 (op, a, b, c), up to 1024
     BASE + 0x08000  results: 4 u64 per op (r0..r3)
     BASE + 0x10000  interrupt counts: u32 per vector
     BASE + 0x10400  u32 done (set when the script ends); +0x10404 u32 ready (set up)
     BASE + 0x11000  SIMP (the scripts map the SynIC message page here)
     BASE + 0x12000  SIEFP (the event flags page)
     BASE + 0x13000  hypercall input page;  BASE + 0x14000 output page
     BASE + 0x18000  message log: u32 count; entries of 256 bytes from +0x100 (up to 255)
     BASE + 0x40000  top of the stack

   Shared: IDT at 0x10000; interrupt behaviour per vector (u8) at 0x11000; u32 vCPU count
   at 0x11100; u32 "there is an in-kernel LAPIC" at 0x11104; hypercall page at 0x12000; reference TSC page at 0x13000.

   Interrupt behaviour bits: 1 EOI through the LAPIC (MMIO), 2 EOI through HV_X64_MSR_EOI,
   4 take SynIC messages: copy every full slot of this vCPU's SIMP to the log, free it and
   write EOM if its "pending" flag is set (what a Hyper-V guest's ISR does).

   The run ends with `out %al, $0xF4` (debug-exit): 0 once vCPU 0's script is done and every
   vCPU's too; 0x80 + vector on an unexpected exception (#GP at an RDMSR/WRMSR is expected:
   it sets the op's fault result and skips the instruction). */

#define AREA 0x100000
#define AREA_SHIFT 18
#define RESULTS 0x8000
#define COUNTS 0x10000
#define DONE 0x10400
#define READY 0x10404
#define SIMP 0x11000
#define LOG 0x18000
#define STACK_TOP 0x40000
#define IDT 0x10000
#define ISR_MODE 0x11000
#define NCPUS 0x11100
#define HAS_LAPIC 0x11104
#define HCPAGE 0x12000
#define TSCPAGE 0x13000
#define LAPIC 0xFEE00000
#define TIME_REF_COUNT 0x40000020
#define HV_EOI 0x40000070
#define HV_EOM 0x40000084

    .code64
    .globl _start
_start:
    cli
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %rbx, %rbp                  /* rbp: my APIC ID */
    shl $AREA_SHIFT, %rbx
    add $AREA, %rbx
    mov %rbx, %r14                  /* r14: my area */
    lea STACK_TOP(%r14), %rsp
    call build_idt
    lidt idtr(%rip)
    cmpl $0, HAS_LAPIC
    je 1f
    mov $LAPIC, %eax
    movl $0x1FF, 0xF0(%rax)         /* software-enable the LAPIC, spurious vector 0xFF */
1:  movl $1, READY(%r14)            /* my LAPIC takes interrupts now */
    mov %r14, %r12                  /* r12: the next op */
    lea RESULTS(%r14), %r13         /* r13: its results */

next_op:
    mov (%r12), %rax
    mov 8(%r12), %rdi
    mov 16(%r12), %rsi
    mov 24(%r12), %rdx
    cmp $0, %rax;  je op_end
    cmp $1, %rax;  je op_rdmsr
    cmp $2, %rax;  je op_wrmsr
    cmp $3, %rax;  je op_hypercall
    cmp $4, %rax;  je op_cpuid
    cmp $5, %rax;  je op_wait_irqs
    cmp $6, %rax;  je op_wait_u32
    cmp $7, %rax;  je op_store
    cmp $8, %rax;  je op_rdtsc
    cmp $9, %rax;  je op_load
    cmp $10, %rax; je op_outl
    cmp $12, %rax; je op_clock_check
    cmp $13, %rax; je op_cli
    cmp $14, %rax; je op_sti
    cmp $15, %rax; je op_delay
    cmp $16, %rax; je op_times
    cmp $17, %rax; je op_load32
    cmp $18, %rax; je op_wrmsr_ref
    mov $0x7F, %al                   /* unknown op */
    out %al, $0xF4
    jmp .

op_done:
    add $32, %r12
    add $32, %r13
    jmp next_op

op_rdmsr:                            /* r0 = MSR a, r1 = 1 if it raised #GP */
    xor %r15, %r15
    mov %edi, %ecx
    xor %eax, %eax
    xor %edx, %edx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%r13)
    mov %r15, 8(%r13)
    jmp op_done

op_wrmsr:                            /* MSR a = b; r1 = 1 if it raised #GP */
    xor %r15, %r15
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
    mov %r15, 8(%r13)
    jmp op_done

op_hypercall:                        /* RCX = a, RDX = b, R8 = c through the page; r0 = RAX */
    mov %rdi, %rcx
    mov %rdx, %r8
    mov %rsi, %rdx
    mov $HCPAGE, %eax
    call *%rax
    mov %rax, (%r13)
    jmp op_done

op_cpuid:                            /* EAX = a, ECX = b; r0..r3 = EAX, EBX, ECX, EDX */
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    mov %rax, (%r13)
    mov %rbx, 8(%r13)
    mov %rcx, 16(%r13)
    mov %rdx, 24(%r13)
    jmp op_done

op_wait_irqs:                        /* wait (sti; hlt) until vector a has come b times */
    lea COUNTS(%r14,%rdi,4), %rbx
1:  cli
    mov (%rbx), %eax
    cmp %rsi, %rax
    jae 2f
    sti
    hlt
    jmp 1b
2:  mov %rax, (%r13)
    jmp op_done

op_wait_u32:                         /* spin until the u32 at a equals b */
1:  mov (%rdi), %eax
    cmp %esi, %eax
    je op_done
    pause
    jmp 1b

op_store:                            /* u64 at a = b */
    mov %rsi, (%rdi)
    mfence
    jmp op_done

op_rdtsc:                            /* r0 = TSC */
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%r13)
    jmp op_done

op_load:                             /* r0 = u64 at a */
    mov (%rdi), %rax
    mov %rax, (%r13)
    jmp op_done

op_wrmsr_ref:                        /* MSR a = TIME_REF_COUNT + b; r0 = that value */
    mov $TIME_REF_COUNT, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    add %rsi, %rax
    mov %rax, (%r13)
    mov %rax, %rdx
    shr $32, %rdx
    mov %edi, %ecx
    wrmsr
    jmp op_done

op_load32:                           /* r0 = u32 at a (LAPIC registers take 4-byte reads) */
    mov (%rdi), %eax
    mov %rax, (%r13)
    jmp op_done

op_outl:                             /* outl b to port a */
    mov %edi, %edx
    mov %esi, %eax
    out %eax, %dx
    jmp op_done

op_cli:
    cli
    jmp op_done

op_sti:
    sti
    jmp op_done

op_delay:                            /* a rounds of pause */
1:  test %rdi, %rdi
    jz op_done
    pause
    dec %rdi
    jmp 1b

op_times:                            /* r0 = reference time by the TSC page, r1 by the MSR */
    call page_time
    mov %rax, (%r13)
    mov $TIME_REF_COUNT, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, 8(%r13)
    jmp op_done

op_clock_check:                      /* a rounds of: page, MSR, page.  r0 = rounds where the
                                        MSR fell outside the two page readings, r1 = rounds
                                        where either went backwards, r2 = last MSR value */
    xor %r8, %r8                     /* drift count */
    xor %r9, %r9                     /* warp count */
    xor %r10, %r10                   /* previous page time */
    xor %r11, %r11                   /* previous MSR time */
    mov %rdi, %rbx
1:  test %rbx, %rbx
    jz 3f
    call page_time
    mov %rax, %rsi                   /* t1 */
    mov $TIME_REF_COUNT, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rdi                   /* the MSR */
    call page_time                   /* rax = t2 */
    cmp %rsi, %rdi
    jb 4f
    cmp %rax, %rdi
    jbe 5f
4:  inc %r8
5:  cmp %r10, %rsi
    jae 6f
    inc %r9
6:  cmp %r11, %rdi
    jae 7f
    inc %r9
7:  mov %rsi, %r10
    mov %rdi, %r11
    dec %rbx
    jmp 1b
3:  mov %r8, (%r13)
    mov %r9, 8(%r13)
    mov %r11, 16(%r13)
    jmp op_done

/* rax = ((tsc * scale) >> 64) + offset from the reference TSC page (all ones if invalid);
   clobbers rcx, rdx */
page_time:
    push %rsi
    push %rdi
1:  mov TSCPAGE, %esi                /* sequence */
    test %esi, %esi
    jz 2f
    lfence
    mov TSCPAGE + 8, %rdi            /* scale */
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mul %rdi                         /* rdx = (tsc * scale) >> 64 */
    add TSCPAGE + 16, %rdx           /* + offset */
    lfence
    cmp TSCPAGE, %esi
    jne 1b
    mov %rdx, %rax
    pop %rdi
    pop %rsi
    ret
2:  mov $-1, %rax
    pop %rdi
    pop %rsi
    ret

op_end:
    movl $1, DONE(%r14)
    test %rbp, %rbp
    jnz 2f
    xor %ebx, %ebx                   /* vCPU 0 waits for the others */
1:  cmp NCPUS, %ebx
    jae 3f
    mov %rbx, %rax
    shl $AREA_SHIFT, %rax
    add $AREA + DONE, %rax
    cmpl $1, (%rax)
    jne 1b
    inc %ebx
    jmp 1b
3:  xor %eax, %eax
    out %al, $0xF4
2:  cli
    hlt
    jmp 2b

/* ---- interrupts and exceptions -------------------------------------------------------- */
build_idt:                           /* gates 0-255 -> stubs (each vCPU writes the same) */
    xor %ecx, %ecx
1:  lea stubs(%rip), %rax
    imul $10, %rcx, %rdx
    add %rdx, %rax                   /* rax: the stub of vector rcx */
    mov %rcx, %rdx
    shl $4, %rdx
    add $IDT, %rdx
    mov %ax, (%rdx)
    movw $0x10, 2(%rdx)
    movw $0x8E00, 4(%rdx)
    shr $16, %rax
    mov %ax, 6(%rdx)
    shr $16, %rax
    mov %eax, 8(%rdx)
    movl $0, 12(%rdx)
    inc %ecx
    cmp $256, %ecx
    jb 1b
    lea gp_handler(%rip), %rax       /* #GP has its own */
    mov $IDT + 13 * 16, %edx
    mov %ax, (%rdx)
    shr $16, %rax
    mov %ax, 6(%rdx)
    shr $16, %rax
    mov %eax, 8(%rdx)
    ret

    .align 16
idtr:
    .word 256 * 16 - 1
    .quad IDT

stubs:                               /* push $vector (imm32); jmp common: 10 bytes each */
    .set vec, 0
    .rept 256
    .byte 0x68
    .long vec
    .byte 0xE9
    .long isr_common - (. + 4)
    .set vec, vec + 1
    .endr

gp_handler:                          /* #GP at an RDMSR/WRMSR: note it, skip the 2 bytes */
    push %rax
    mov 16(%rsp), %rax               /* RIP (above the error code) */
    cmpb $0x0F, (%rax)
    jne fatal_gp
    cmpb $0x30, 1(%rax)
    je 1f
    cmpb $0x32, 1(%rax)
    jne fatal_gp
1:  addq $2, 16(%rsp)
    mov $1, %r15
    pop %rax
    add $8, %rsp                     /* the error code */
    iretq
fatal_gp:
    mov $0x8D, %al
    out %al, $0xF4
    jmp .

isr_common:                          /* (%rsp) = vector */
    cmpq $32, (%rsp)
    jae 1f
    mov (%rsp), %rax                 /* an exception nobody expects */
    add $0x80, %al
    out %al, $0xF4
    jmp .
1:  push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    mov 56(%rsp), %rbx               /* the vector */
    mov $LAPIC, %eax
    mov 0x20(%rax), %eax             /* my APIC ID, in the ISR's own view */
    shr $24, %eax
    shl $AREA_SHIFT, %rax
    lea AREA(%rax), %r8              /* r8: my area */
    lock incl COUNTS(%r8,%rbx,4)
    movzbl ISR_MODE(%rbx), %eax
    test $4, %al
    jz 5f
    xor %ebx, %ebx                   /* take the SynIC messages: slots 0..15 */
2:  mov %rbx, %rsi
    shl $8, %rsi
    lea SIMP(%r8,%rsi), %rsi         /* the slot */
    cmpl $0, (%rsi)
    je 4f
    mov LOG(%r8), %ecx               /* copy it into the log */
    cmp $255, %ecx
    jae 3f
    incl LOG(%r8)
    shl $8, %rcx
    lea LOG + 0x100(%r8,%rcx), %rdi
    push %rsi
    mov $32, %ecx
    cld
    rep movsq
    pop %rsi
3:  movl $0, (%rsi)                  /* free the slot */
    mfence
    testb $1, 5(%rsi)                /* a message waits for it: EOM */
    jz 4f
    mov $HV_EOM, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
4:  inc %ebx
    cmp $16, %ebx
    jb 2b
    mov 56(%rsp), %rbx
    movzbl ISR_MODE(%rbx), %eax
5:  test $1, %al
    jz 6f
    mov $LAPIC, %ecx
    movl $0, 0xB0(%rcx)              /* EOI */
6:  test $2, %al
    jz 7f
    mov $HV_EOI, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
7:  pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $8, %rsp
    iretq
