/* The 64-bit guest the gdb tests debug (an ELF with symbols, linked by tests/images.py):
   counts `counter` up to 5 calling bump() each time, then spins until the debugger sets
   `release`, and exits through the debug-exit port with counter + release as the status. */
    .text
    .globl _start
_start:
    movq $0, counter(%rip)
    xor %ebx, %ebx
count:
    incq counter(%rip)
    call bump
    cmpq $5, counter(%rip)
    jne count
    .globl spin
spin:
    cmpq $0, release(%rip)
    je spin
    mov counter(%rip), %rax
    add release(%rip), %rax
    out %al, $0xf4
    hlt

    .globl bump
bump:
    add $1, %rbx
    nop
    ret

    .data
    .globl counter, release
counter: .quad 0
release: .quad 0
