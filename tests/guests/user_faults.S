/* User mode: a series of faults; after each the host resumes at the next label, whose
   addresses sit in a table at _start + 8: int3; read pyhv's setup region (supervisor-only);
   read an unmapped address; divide by zero; `out` without IO privilege; `hlt`; syscall 60. */
    .globl _start
_start:
    jmp code
    .balign 8
labels:
    .quad after_setup_read, after_unmapped, after_div, after_out, after_hlt
code:
    int3
    mov 0x80000, %rax
after_setup_read:
    movabs $0x5000000000, %rcx
    mov (%rcx), %rax
after_unmapped:
    xor %ecx, %ecx
    div %ecx
after_div:
    out %al, $0x80
after_out:
    hlt
after_hlt:
    mov $60, %eax
    syscall
    ud2
