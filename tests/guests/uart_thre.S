/* Real mode, with the in-kernel PIC: transmit a message the way Linux's 8250 driver does once
   THRE interrupts are on.  Route IRQ 4 (COM1) to vector 0x0C, enable the UART's "transmitter
   empty" interrupt and wait with `hlt`; each interrupt whose IIR says THRE writes the next
   byte to THR.  After the last byte the interrupt is switched off and the run ends through
   the debug-exit port with the number of interrupts that sent a byte. */
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
    mov $0x3F9, %dx                  /* UART IER: transmitter-empty interrupt */
    mov $0x02, %al
    out %al, %dx
    sti
1:  hlt
    jmp 1b
handler:
    mov $0x3FA, %dx                  /* IIR: which interrupt */
    in %dx, %al
    and $0x0F, %al
    cmp $0x02, %al
    jne eoi
    mov next, %si
    lodsb
    test %al, %al
    jz done
    mov %si, next
    incb sent
    mov $0x3F8, %dx                  /* THR */
    out %al, %dx
eoi:
    mov $0x20, %al                   /* end of interrupt */
    out %al, $0x20
    iret
done:
    mov $0x3F9, %dx                  /* IER: no more interrupts */
    xor %al, %al
    out %al, %dx
    mov sent, %al
    out %al, $0xF4
    hlt
next:
    .word message
sent:
    .byte 0
message:
    .asciz "sent by THRE interrupts\r\n"
