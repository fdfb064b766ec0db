/* Any mode: read a byte from port 0x60 (a keyboard controller's data port), double it and
   write it to port 0xE9; then read a 16- and a 32-bit value from port 0x61 and write their
   sum on port 0xE9 as 32 bits; hlt.  Encodes the same for 16-, 32- and 64-bit code. */
    .globl _start
_start:
    in $0x60, %al
    add %al, %al
    out %al, $0xE9
    in $0x61, %ax
    mov %ax, %bx
    in $0x61, %eax
    movzwl %bx, %ebx
    add %ebx, %eax
    out %eax, $0xE9
    hlt
