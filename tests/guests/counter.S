/* Long mode: count up from 0 and OUT each value (32-bit) to port 0x510, forever: one exit per
   iteration, for cancel races and exit-cost measurements. */
    .globl _start
_start:
    xor %eax, %eax
    mov $0x510, %dx
1:  out %eax, %dx
    inc %eax
    jmp 1b
