/* Two vCPUs in long mode for the gdb thread tests: the first counts `first` up until the
   debugger sets `release`, the second counts `second` up forever in ap_loop; the first then
   exits through the debug-exit port. */
    .text
    .globl _start
_start:
    incq first(%rip)
    cmpq $0, release(%rip)
    je _start
    mov $0x21, %al
    out %al, $0xf4
    hlt

    .globl ap_start, ap_loop
ap_start:
    xor %ecx, %ecx
ap_loop:
    incq second(%rip)
    inc %ecx
    jmp ap_loop

    .data
    .globl first, second, release
first: .quad 0
second: .quad 0
release: .quad 0
