/*
 * pyhv's built-in demo guest (`pyhv demo`): 64-bit code loaded at GPA 0x1000 and entered in
 * long mode.  It prints a greeting on COM1 the way a polite driver does, waiting for the
 * transmitter-holding-register-empty bit (LSR bit 5) before each byte, then halts.
 *
 * Rebuild demo.bin after editing (a test checks that they match):
 *   python -c "from pyhv.testing import assemble_file; import sys; \
 *     sys.stdout.buffer.write(assemble_file('pyhv/guests/demo.S', origin=0x1000))" \
 *     > pyhv/guests/demo.bin
 */
#define COM1 0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20

    .globl _start
_start:
    lea message(%rip), %rsi
next_byte:
    lodsb
    test %al, %al
    jz done
    mov %al, %bl
wait_for_transmitter:
    mov $COM1_LSR, %dx
    in %dx, %al
    test $LSR_THRE, %al
    jz wait_for_transmitter
    mov $COM1, %dx
    mov %bl, %al
    out %al, %dx
    jmp next_byte
done:
    hlt
    jmp done

message:
    .asciz "Hello from a pyhv guest, running in 64-bit long mode!\n"
