/* User mode: write(1, msg, 14) through `syscall`, keep its result in rbx, then exit(rbx). */
    .globl _start
_start:
    mov $1, %eax
    mov $1, %edi
    lea msg(%rip), %rsi
    mov $14, %edx
    syscall
    mov %rax, %rbx
    mov $60, %eax
    mov %rbx, %rdi
    syscall
    ud2
msg:
    .ascii "hello from ring"
