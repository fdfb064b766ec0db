/* A multiboot test kernel: reports what the boot loader told it over COM1 (polling the line
   status like a real driver), then exits through QEMU's isa-debug-exit port. */
#include <stdint.h>

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr, config_table, boot_loader_name;
};

struct multiboot_mmap_entry {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

struct multiboot_module {
    uint32_t start, end, string, reserved;
};

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void putc(char c)
{
    while (!(inb(0x3FD) & 0x20))
        ;
    outb(0x3F8, (uint8_t)c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void puthex(uint64_t value)
{
    puts("0x");
    int started = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        unsigned digit = (unsigned)(value >> shift) & 0xF;
        if (digit || started || shift == 0) {
            putc("0123456789abcdef"[digit]);
            started = 1;
        }
    }
}

void kmain(uint32_t magic, const struct multiboot_info *info)
{
    puts("magic ");
    puthex(magic);
    puts("\nflags ");
    puthex(info->flags);
    puts("\nmem ");
    puthex(info->mem_lower);
    puts(" ");
    puthex(info->mem_upper);
    if (info->flags & 4) {
        puts("\ncmdline ");
        puts((const char *)info->cmdline);
    }
    if (info->flags & 64) {
        const uint8_t *at = (const uint8_t *)info->mmap_addr;
        const uint8_t *end = at + info->mmap_length;
        while (at < end) {
            const struct multiboot_mmap_entry *e = (const void *)at;
            puts("\nmmap ");
            puthex(e->addr);
            puts(" ");
            puthex(e->len);
            puts(" ");
            puthex(e->type);
            at += e->size + 4;
        }
    }
    if (info->flags & 8) {
        const struct multiboot_module *m = (const void *)info->mods_addr;
        for (uint32_t i = 0; i < info->mods_count; i++) {
            puts("\nmodule ");
            puthex(m[i].start);
            puts(" ");
            puthex(m[i].end - m[i].start);
            puts(" ");
            puts((const char *)m[i].string);
            puts(" ");
            for (const char *c = (const char *)m[i].start; c < (const char *)m[i].end; c++)
                putc(*c);
        }
    }
    if (info->flags & 512) {
        puts("\nloader ");
        puts((const char *)info->boot_loader_name);
    }
    puts("\nbye\n");
    outb(0xF4, 0x31);          /* exit status (0x31 << 1) | 1 = 0x63 */
}
