/* Protected or long mode: fill 256 dwords at TARGET (above 1 MiB) with i*3+1, read them
   back and report the sum on port 0xE9 (32-bit), then hlt.  Built for either mode: the
   instructions used encode the same in 32- and 64-bit code. */
#ifndef TARGET
#define TARGET 0x200000
#endif
    .globl _start
_start:
    mov $TARGET, %edi
    xor %ecx, %ecx
1:  lea 1(%ecx,%ecx,2), %eax
    mov %eax, (%edi,%ecx,4)
    inc %ecx
    cmp $256, %ecx
    jne 1b

    xor %eax, %eax
    xor %ecx, %ecx
2:  add (%edi,%ecx,4), %eax
    inc %ecx
    cmp $256, %ecx
    jne 2b
    mov $0xE9, %dx
    out %eax, %dx
    hlt
