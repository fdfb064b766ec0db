/* Long mode: probe the COM1 16550 the way drivers do, reporting each byte read on port 0xE9:
   scratch register, divisor latch, FIFO/IIR, loopback (THR to RBR, LSR data-ready, MSR
   mirroring MCR), then transmit "ok" normally and halt. */
#define COM1 0x3F8
#define REPORT mov $0xE9, %dx; out %al, %dx
    .globl _start
_start:
    mov $COM1 + 7, %dx          /* scratch */
    mov $0x5A, %al
    out %al, %dx
    in %dx, %al
    REPORT
    mov $COM1 + 3, %dx          /* LCR: DLAB */
    mov $0x80, %al
    out %al, %dx
    mov $COM1, %dx              /* DLL = 3 (38400 baud) */
    mov $3, %al
    out %al, %dx
    in %dx, %al
    REPORT
    mov $COM1 + 3, %dx          /* 8N1, DLAB off */
    mov $0x03, %al
    out %al, %dx
    mov $COM1 + 2, %dx          /* FCR: enable FIFOs; IIR must say 16550A, no interrupt */
    mov $0x07, %al
    out %al, %dx
    in %dx, %al
    REPORT
    mov $COM1 + 4, %dx          /* MCR: loopback, RTS, OUT2 */
    mov $0x1A, %al
    out %al, %dx
    mov $COM1 + 6, %dx          /* MSR mirrors MCR: CTS (from RTS) and DCD (from OUT2) */
    in %dx, %al
    REPORT
    mov $COM1, %dx              /* loop a byte back */
    mov $0x42, %al
    out %al, %dx
    mov $COM1 + 5, %dx          /* LSR: data ready */
    in %dx, %al
    REPORT
    mov $COM1, %dx
    in %dx, %al
    REPORT
    mov $COM1 + 4, %dx          /* loopback off */
    mov $0x0B, %al
    out %al, %dx
    mov $COM1, %dx
    mov $'o', %al
    out %al, %dx
    mov $'k', %al
    out %al, %dx
    hlt
