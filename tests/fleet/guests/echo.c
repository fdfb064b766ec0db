/* A multiboot kernel for `pyhv fleet run`: it reads its input from fw_cfg (the file
   opt/pyhv/input) and from its first module, writes both to COM1, then acts on the input:
   "loop" spins forever, "fault" triple-faults, anything else exits through isa-debug-exit
   with the input's length (so the exit status is ((length & 0x7f) << 1) | 1). */
#include <stdint.h>

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
};

struct multiboot_module {
    uint32_t start, end, string, reserved;
};

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t value)
{
    __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void putc(char c)
{
    outb(0x3F8, (uint8_t)c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static uint32_t fw_cfg_be(int bytes)
{
    uint32_t value = 0;
    while (bytes--)
        value = (value << 8) | inb(0x511);
    return value;
}

static int same(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static char input[256];

/* opt/pyhv/input into `input` (at most 255 bytes); its length, or -1 if there is none */
static int read_fw_cfg_input(void)
{
    outw(0x510, 0x19);                          /* the file directory */
    uint32_t files = fw_cfg_be(4);
    for (uint32_t i = 0; i < files && i < 64; i++) {
        uint32_t size = fw_cfg_be(4);
        uint16_t select = (uint16_t)fw_cfg_be(2);
        fw_cfg_be(2);
        char name[56];
        for (int k = 0; k < 56; k++)
            name[k] = (char)inb(0x511);
        name[55] = 0;
        if (same(name, "opt/pyhv/input")) {
            uint32_t n = size < 255 ? size : 255;
            outw(0x510, select);
            for (uint32_t k = 0; k < n; k++)
                input[k] = (char)inb(0x511);
            input[n] = 0;
            return (int)n;
        }
    }
    return -1;
}

void kmain(uint32_t magic, const struct multiboot_info *info)
{
    (void)magic;
    int length = read_fw_cfg_input();
    puts("fw_cfg: ");
    puts(length < 0 ? "(none)" : input);
    puts("\nmodule: ");
    if (info->flags & 8 && info->mods_count) {
        const struct multiboot_module *m = (const void *)info->mods_addr;
        for (const char *c = (const char *)m->start; c < (const char *)m->end; c++)
            putc(*c);
    } else {
        puts("(none)");
    }
    putc('\n');
    if (same(input, "loop"))
        for (;;)
            ;
    if (same(input, "fault")) {
        static const struct { uint16_t limit; uint32_t base; } __attribute__((packed)) none = {0, 0};
        __asm__ volatile("lidt %0; ud2" : : "m"(none));
    }
    outb(0xF4, (uint8_t)(length & 0x7f));
}
