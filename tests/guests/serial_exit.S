/* Any mode: print a message on COM1 the polite way (wait for LSR bit 5 before each byte),
   then write 0x21 to the debug-exit port 0xF4; hlt if the run goes on. */
#define COM1 0x3F8
    .globl _start
_start:
    mov $message, %esi
next:
    mov (%esi), %al
    inc %esi
    test %al, %al
    jz done
    mov %al, %bl
1:  mov $COM1 + 5, %dx
    in %dx, %al
    test $0x20, %al
    jz 1b
    mov $COM1, %dx
    mov %bl, %al
    out %al, %dx
    jmp next
done:
    mov $0x21, %al
    out %al, $0xF4
    hlt
message:
    .asciz "serial says hi\n"
