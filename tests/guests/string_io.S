/* Long mode: `rep outsb` a 12-byte message to port 0xE9, `rep insb` 8 bytes from port 0x60
   into RAM at 0x3000, then sum those 8 bytes and `out` the sum on port 0xE9; hlt. */
    .globl _start
_start:
    lea message(%rip), %rsi
    mov $0xE9, %dx
    mov $12, %ecx
    cld
    rep outsb

    mov $0x3000, %edi
    mov $0x60, %dx
    mov $8, %ecx
    rep insb

    mov $0x3000, %esi
    xor %eax, %eax
    xor %ebx, %ebx
    mov $8, %ecx
1:  lodsb
    add %eax, %ebx
    loop 1b
    mov %ebx, %eax
    mov $0xE9, %dx
    out %eax, %dx
    hlt
message:
    .ascii "hello, world"
