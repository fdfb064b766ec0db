/* Real mode, with the in-kernel PIC: route IRQ 4 (COM1) to vector 0x0C, enable the UART's
   receive interrupt, and wait with `hlt`.  The handler reads the received byte and ends the
   run through the debug-exit port with it. */
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    movw $handler, 0x0C * 4          /* IVT entry for vector 0x0C */
    movw $0, 0x0C * 4 + 2
    mov $0x11, %al                   /* master PIC: ICW1..ICW4, vectors from 0x08 */
    out %al, $0x20
    mov $0x08, %al
    out %al, $0x21
    mov $0x04, %al
    out %al, $0x21
    mov $0x01, %al
    out %al, $0x21
    mov $0xEF, %al                   /* unmask IRQ 4 only */
    out %al, $0x21
    mov $0xFF, %al
    out %al, $0xA1
    mov $0x3F9, %dx                  /* UART IER: receive data interrupt */
    mov $0x01, %al
    out %al, %dx
    sti
1:  hlt
    jmp 1b
handler:
    mov $0x3F8, %dx
    in %dx, %al
    out %al, $0xF4
    iret
