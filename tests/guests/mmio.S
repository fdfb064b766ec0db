/* Long mode: read a 32-bit value from an MMIO register at 0xD0000000 (an address in the
   hole below 4 GiB, with no RAM), add 1, write the result to 0xD0000008, and also read an
   8-byte register at 0xD0000010 and store it to RAM at 0x3000; then hlt. */
    .globl _start
_start:
    mov $0xD0000000, %ebx
    mov (%rbx), %eax
    add $1, %eax
    mov %eax, 8(%rbx)
    mov 16(%rbx), %rcx
    mov %rcx, 0x3000
    hlt
