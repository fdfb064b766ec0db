/* Long mode: write i to the MMIO dword at 0xD0000000 + 4*i for i = 0..99 (no RAM there), then
   read the MMIO register at 0xD0001000 (an exit), then OUT 1, 2, 3 to port 0x500; hlt. */
    .globl _start
_start:
    mov $0xD0000000, %ebx
    xor %ecx, %ecx
1:  mov %ecx, (%rbx,%rcx,4)
    inc %ecx
    cmp $100, %ecx
    jne 1b
    mov 0x1000(%rbx), %eax
    mov $0x500, %dx
    mov $1, %eax
    out %eax, %dx
    mov $2, %eax
    out %eax, %dx
    mov $3, %eax
    out %eax, %dx
    hlt
