/* Long mode: read the CMOS clock (seconds, minutes, hours, day, month, year, century) and
   fw_cfg (signature, RAM size), reporting each byte on port 0xE9; then ask the i8042 to reset
   the machine. */
#define REPORT out %al, $0xE9
#define CMOS(reg) mov $reg, %al; out %al, $0x70; in $0x71, %al; REPORT
    .globl _start
_start:
    CMOS(0x00)
    CMOS(0x02)
    CMOS(0x04)
    CMOS(0x07)
    CMOS(0x08)
    CMOS(0x09)
    CMOS(0x32)
    mov $0x510, %dx                  /* fw_cfg: signature */
    xor %ax, %ax
    out %ax, %dx
    mov $0x511, %dx
    mov $4, %ecx
1:  in %dx, %al
    REPORT
    loop 1b
    mov $0x510, %dx                  /* fw_cfg: RAM size, 8 bytes */
    mov $3, %ax
    out %ax, %dx
    mov $0x511, %dx
    mov $8, %ecx
2:  in %dx, %al
    REPORT
    loop 2b
    mov $0xFE, %al                   /* i8042: pulse the reset line */
    out %al, $0x64
    hlt
