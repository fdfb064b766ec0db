/* Real mode: 6 * 7 through the stack and a call, then the sum 1..100 by a loop; both
   reported as 16-bit words on port 0xE9, then hlt. */
    .code16
    .globl _start
_start:
    mov $6, %ax
    push %ax
    mov $7, %bx
    call multiply
    pop %cx
    mov $0xE9, %dx
    out %ax, %dx            /* 42 */

    xor %ax, %ax
    mov $100, %cx
1:  add %cx, %ax
    loop 1b
    out %ax, %dx            /* 5050 */
    hlt

multiply:                   /* ax = [sp+2] * bx */
    mov %sp, %bp
    mov 2(%bp), %ax
    mul %bx
    ret
