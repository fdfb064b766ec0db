/* Long mode: ring the doorbell port 0x600 with 7, fifty times; write 9 once; hlt. */
    .globl _start
_start:
    mov $50, %ecx
    mov $0x600, %dx
1:  mov $7, %eax
    out %eax, %dx
    loop 1b
    mov $9, %eax
    out %eax, %dx
    hlt
