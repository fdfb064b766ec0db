/* Long mode: write a marker into a slot above 4 GiB through pyhv's identity map, read it
   back, report it on port 0xE9 and hlt. */
    .globl _start
_start:
    movabs $0x100000000, %rbx
    movabs $0x1122334455667788, %rax
    mov %rax, 8(%rbx)
    mov 8(%rbx), %rcx
    mov %ecx, %eax
    mov $0xE9, %dx
    out %eax, %dx
    hlt
