/* The PC test kernel: checks what pyhv's PC machine provides, the test chosen by the command
   line ("acpi", "pmtimer", "pci", "intx", "msi", "testdev", "smp", "s3").  It prints what it
   finds over COM1 as "key=value" lines (the tests on the host read them) and ends through the
   isa-debug-exit port: 0 when every check it makes itself passed, else the number of the
   first failed check.  All tables and devices are read
   through physical addresses, identity-mapped.  Built for 64-bit long mode (boot.S gets
   there): kvm_pvm delivers interrupts to 64-bit guests only. */
#include <stdint.h>

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

/* ---- port and memory access ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t rd32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void wr32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint8_t rd8(uint64_t a) { return *(volatile uint8_t *)a; }

/* ---- output ---- */
static void putc(char c) { while (!(inb(0x3FD) & 0x20)) ; outb(0x3F8, (uint8_t)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(uint32_t v)
{
    puts("0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        if ((v >> shift) || !shift) putc("0123456789abcdef"[(v >> shift) & 0xF]);
}
static void putdec(uint32_t v)
{
    char buf[12]; int i = 0;
    do { buf[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(buf[--i]);
}
static void kv(const char *key, uint32_t value) { puts(key); putc('='); puthex(value); putc('\n'); }
static void kvd(const char *key, uint32_t value) { puts(key); putc('='); putdec(value); putc('\n'); }

static void finish(uint32_t code) { outl(0xF4, code); for (;;) __asm__ volatile("cli; hlt"); }
static int failed;
static void check(int ok, uint32_t number) { if (!ok && !failed) { failed = (int)number; kvd("failed", number); } }

static int streq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }
static void copy(uint8_t *to, const uint8_t *from, uint32_t n) { while (n--) *to++ = *from++; }

/* ---- fw_cfg, RTC ---- */
static uint32_t fwcfg_u16(uint16_t key) { outw(0x510, key); return inb(0x511) | (uint32_t)inb(0x511) << 8; }
static uint8_t cmos(uint8_t reg) { outb(0x70, reg); return inb(0x71); }
static void cmos_set(uint8_t reg, uint8_t v) { outb(0x70, reg); outb(0x71, v); }
static void wait_update(void)
{
    while (!(cmos(0x0A) & 0x80)) ;   /* UIP rises 244 us before the update... */
    while (cmos(0x0A) & 0x80) ;      /* ...and falls at it */
}

/* ---- ACPI ---- */
static uint8_t sum(uint32_t at, uint32_t n) { uint8_t s = 0; while (n--) s += rd8(at++); return s; }
static uint32_t find_rsdp(void)
{
    for (uint32_t a = 0xE0000; a < 0x100000; a += 16)
        if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450)    /* "RSD PTR " */
            return a;
    return 0;
}
static uint32_t find_table(uint32_t rsdt, uint32_t sig)
{
    uint32_t n = (rd32(rsdt + 4) - 36) / 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = rd32(rsdt + 36 + 4 * i);
        if (rd32(t) == sig)
            return t;
    }
    return 0;
}

static void test_acpi(void)
{
    uint32_t rsdp = find_rsdp();
    kv("rsdp", rsdp);
    check(rsdp != 0, 1);
    if (!rsdp) return;
    check(sum(rsdp, 20) == 0, 2);
    check(sum(rsdp, 36) == 0, 3);
    kvd("revision", rd8(rsdp + 15));
    uint32_t rsdt = rd32(rsdp + 16), xsdt = rd32(rsdp + 24);
    check(rd32(rsdt) == 0x54445352 && sum(rsdt, rd32(rsdt + 4)) == 0, 4);      /* RSDT */
    check(rd32(xsdt) == 0x54445358 && sum(xsdt, rd32(xsdt + 4)) == 0, 5);      /* XSDT */
    check(rd32(xsdt + 36) == rd32(rsdt + 36) && rd32(xsdt + 40) == 0, 6);
    uint32_t fadt = find_table(rsdt, 0x50434146), madt = find_table(rsdt, 0x43495041);
    kv("fadt", fadt);
    kv("madt", madt);
    check(fadt && sum(fadt, rd32(fadt + 4)) == 0, 7);
    check(madt && sum(madt, rd32(madt + 4)) == 0, 8);
    if (!fadt || !madt) return;
    uint32_t facs = rd32(fadt + 36), dsdt = rd32(fadt + 40);
    check(rd32(facs) == 0x53434146 && rd32(facs + 4) == 64 && !(facs & 63), 9);  /* FACS */
    check(rd32(dsdt) == 0x54445344 && sum(dsdt, rd32(dsdt + 4)) == 0, 10);      /* DSDT */
    kv("dsdt_length", rd32(dsdt + 4));
    kv("pm1a_evt", rd32(fadt + 56));
    kv("pm1a_cnt", rd32(fadt + 64));
    kv("pm_tmr", rd32(fadt + 76));
    kvd("pm_tmr_len", rd8(fadt + 91));
    kvd("sci", rd8(fadt + 46) | rd8(fadt + 47) << 8);
    kv("smi_cmd", rd32(fadt + 48));
    kv("fadt_flags", rd32(fadt + 112));
    kv("x_dsdt", rd32(fadt + 140));
    /* MADT entries */
    kv("lapic_address", rd32(madt + 36));
    uint32_t end = madt + rd32(madt + 4), cpus = 0, ioapics = 0;
    for (uint32_t e = madt + 44; e < end; e += rd8(e + 1)) {
        uint8_t type = rd8(e);
        if (type == 0 && (rd32(e + 4) & 1)) {
            cpus++;
            puts("lapic="); putdec(rd8(e + 3)); putc('\n');
        } else if (type == 1) {
            ioapics++;
            kv("ioapic_address", rd32(e + 4));
        } else if (type == 2) {
            puts("override="); putdec(rd8(e + 3)); putc(':'); putdec(rd32(e + 4)); putc(':');
            puthex(rd8(e + 8) | rd8(e + 9) << 8); putc('\n');
        } else if (type == 4) {
            kvd("nmi_lint", rd8(e + 5));
        }
        if (rd8(e + 1) == 0) break;
    }
    kvd("cpus", cpus);
    check(cpus == fwcfg_u16(0x05), 11);
    check(ioapics == 1, 12);
    /* the ACPI mode switch: SCI_EN follows the SMI command */
    outb((uint16_t)rd32(fadt + 48), rd8(fadt + 52));
    check(inw((uint16_t)rd32(fadt + 64)) & 1, 13);
}

/* the PM timer just before and just after the RTC's seconds change: the second boundary lies
   between them, however long each poll takes */
static void second_edge(uint32_t *before, uint32_t *after)
{
    uint8_t s = cmos(0x00);
    uint32_t t;
    do {
        t = inl(0x608);
    } while (cmos(0x00) == s);
    *before = t;
    *after = inl(0x608);
}

static void test_pmtimer(void)
{
    uint16_t port = 0x608;
    uint32_t a = inl(port), b = inl(port);
    check(((b - a) & 0xFFFFFF) < 0x100000, 20);        /* counts up, slowly */
    /* one second of ticks lies in [lo, hi]; the tightest of a few tries (a busy host makes
       the polls, and so the window, long) */
    uint32_t best_lo = 0, best_hi = 0xFFFFFF;
    for (int i = 0; i < 4; i++) {
        uint32_t b0, a0, b1, a1;
        second_edge(&b0, &a0);
        second_edge(&b1, &a1);
        uint32_t lo = (b1 - a0) & 0xFFFFFF, hi = (a1 - b0) & 0xFFFFFF;
        if (hi - lo < best_hi - best_lo) { best_lo = lo; best_hi = hi; }
        if (best_hi - best_lo < 3580) break;            /* within 1 ms: good enough */
    }
    kvd("second_lo", best_lo);
    kvd("second_hi", best_hi);
    kv("top_bits", inl(port) >> 24);
}

/* ---- PCI ---- */
static uint32_t cfg_addr(int slot, int fn, int reg) { return 0x80000000u | (uint32_t)slot << 11 | (uint32_t)fn << 8 | (uint32_t)(reg & 0xFC); }
static uint32_t cfg_read(int slot, int fn, int reg) { outl(0xCF8, cfg_addr(slot, fn, reg)); return inl(0xCFC); }
static void cfg_write(int slot, int fn, int reg, uint32_t v) { outl(0xCF8, cfg_addr(slot, fn, reg)); outl(0xCFC, v); }
static uint16_t cfg_read16(int slot, int fn, int reg) { outl(0xCF8, cfg_addr(slot, fn, reg)); return inw((uint16_t)(0xCFC + (reg & 2))); }

static int find_device(uint32_t id)
{
    for (int slot = 0; slot < 32; slot++)
        if (cfg_read(slot, 0, 0) == id)
            return slot;
    return -1;
}

static uint32_t bar_size(int slot, int bar)
{
    int reg = 0x10 + 4 * bar;
    uint32_t old = cfg_read(slot, 0, reg);
    cfg_write(slot, 0, reg, 0xFFFFFFFF);
    uint32_t mask = cfg_read(slot, 0, reg);
    cfg_write(slot, 0, reg, old);
    check(cfg_read(slot, 0, reg) == old, 30);
    return ~(mask & (old & 1 ? ~3u : ~15u)) + 1;
}

static void test_pci(void)
{
    for (int slot = 0; slot < 32; slot++)
        for (int fn = 0; fn < 8; fn++) {
            uint32_t id = cfg_read(slot, fn, 0);
            if ((id & 0xFFFF) == 0xFFFF) {
                if (fn == 0) break;
                continue;
            }
            puts("device="); puthex(slot); putc('.'); putdec((uint32_t)fn); putc(':');
            puthex(id); putc(':'); puthex(cfg_read(slot, fn, 8) >> 8); putc('\n');
            if (fn == 0 && !(cfg_read(slot, 0, 0x0C) & 0x800000)) break;   /* single-function */
        }
    int testdev = find_device(0x00051B36), edu = find_device(0x11E81234);
    if (testdev >= 0) {
        kv("testdev_bar0_size", bar_size(testdev, 0));
        kv("testdev_bar1_size", bar_size(testdev, 1));
        uint32_t io = cfg_read(testdev, 0, 0x14) & ~3u;
        kv("testdev_io", io);
        outb((uint16_t)io, 1);                            /* start portio test 1 */
        char name[32]; int i = 0;
        for (; i < 31 && (name[i] = (char)inb((uint16_t)(io + 16 + i))); i++) ;
        name[i] = 0;
        puts("testdev_name="); puts(name); putc('\n');
        uint32_t offset = inl((uint16_t)(io + 4));
        kv("testdev_offset", offset);
        for (int k = 0; k < 5; k++) outb((uint16_t)(io + offset), 0x11);
        kvd("testdev_wildcard_count", inl((uint16_t)(io + 12)));   /* 0: the doorbell took them */
        outb((uint16_t)io, 0);                            /* no-eventfd: the device counts */
        for (int k = 0; k < 5; k++) outb((uint16_t)(io + 128 + 3), 0xFA);
        outb((uint16_t)(io + 128 + 3), 0x11);             /* not the data: not counted */
        kvd("testdev_count", inl((uint16_t)(io + 12)));
        uint32_t mem = cfg_read(testdev, 0, 0x10) & ~15u;
        wr32(mem, 0);                                     /* mmio test 0 */
        check(rd8(mem + 16) == 'm', 31);
    }
    if (edu >= 0) {
        uint32_t size = bar_size(edu, 0);
        kv("edu_bar0_size", size);
        uint32_t bar = cfg_read(edu, 0, 0x10) & ~15u;
        kv("edu_bar0", bar);
        kv("edu_id", rd32(bar));
        wr32(bar + 4, 0x12345678);
        kv("edu_liveness", rd32(bar + 4));
        wr32(bar + 8, 12);
        while (rd32(bar + 0x20) & 1) ;
        kvd("edu_factorial", rd32(bar + 8));
        /* move the BAR, as an OS may: the device answers at the new address */
        uint32_t moved = 0xFD000000;                      /* a free part of the PCI hole */
        cfg_write(edu, 0, 0x10, moved);
        kv("edu_moved_id", rd32(moved));
        /* memory decoding off: the device goes silent there (decoding on again after) */
        uint32_t cmd = cfg_read(edu, 0, 4);
        cfg_write(edu, 0, 4, cmd & ~2u);
        cfg_write(edu, 0, 4, cmd);
        kv("edu_again", rd32(moved));
        kvd("edu_pin", cfg_read(edu, 0, 0x3C) >> 8 & 0xFF);
        kvd("edu_line", cfg_read(edu, 0, 0x3C) & 0xFF);
        kv("edu_status", cfg_read16(edu, 0, 6));
        kv("edu_cap", cfg_read(edu, 0, 0x34) & 0xFF);
    }
}

/* ---- interrupts: LAPIC, IOAPIC, IDT ---- */
#define LAPIC 0xFEE00000u
#define IOAPIC 0xFEC00000u
struct gate { uint16_t lo, sel; uint8_t ist, flags; uint16_t mid; uint32_t hi, zero; } __attribute__((packed));
static struct gate idt[256];
extern char irq_stub_0x40[], irq_stub_0x41[], irq_stub_0x42[], irq_stub_0x43[], fault_stub[];
static volatile uint32_t interrupts[4];
static volatile int edu_slot = -1;
static volatile uint32_t edu_bar;

static void set_gate(int v, void *handler)
{
    uint64_t a = (uint64_t)handler;
    idt[v] = (struct gate){ (uint16_t)a, 0x18, 0, 0x8E, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}
static void setup_interrupts(void)
{
    for (int v = 0; v < 256; v++) set_gate(v, fault_stub);
    set_gate(0x40, irq_stub_0x40);
    set_gate(0x41, irq_stub_0x41);
    set_gate(0x42, irq_stub_0x42);
    set_gate(0x43, irq_stub_0x43);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (uint64_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    outb(0x21, 0xFF);                       /* the PICs masked: interrupts come by the APICs */
    outb(0xA1, 0xFF);
    wr32(LAPIC + 0xF0, 0x1FF);              /* software-enable the LAPIC, spurious vector 0xFF */
}
static void ioapic_route(int pin, uint8_t vector, int level)
{
    wr32(IOAPIC, 0x10 + 2 * (uint32_t)pin + 1);
    wr32(IOAPIC + 0x10, 0);                 /* to APIC 0 */
    wr32(IOAPIC, 0x10 + 2 * (uint32_t)pin);
    wr32(IOAPIC + 0x10, vector | (level ? 1u << 15 : 0));
}
void on_fault(void) { kvd("fault", 1); finish(0xFE); }
void on_interrupt(uint32_t vector)
{
    interrupts[vector - 0x40]++;
    if ((vector == 0x40 || vector == 0x41) && edu_slot >= 0)
        wr32(edu_bar + 0x64, rd32(edu_bar + 0x24));   /* acknowledge edu: its line falls */
    wr32(LAPIC + 0xB0, 0);                            /* EOI */
}
static void wait_interrupt(volatile uint32_t *count, uint32_t want)
{
    /* interrupts are let in around an exit (a write to port 0x80), where KVM injects them */
    for (uint32_t spins = 0; *count < want && spins < 2000; spins++)
        __asm__ volatile("sti; outb %%al, $0x80; cli" : : "a"(0));
}

static void test_edu_interrupt(int msi)
{
    setup_interrupts();
    int slot = find_device(0x11E81234);
    check(slot >= 0, 40);
    if (slot < 0) return;
    edu_bar = cfg_read(slot, 0, 0x10) & ~15u;
    edu_slot = slot;
    uint32_t line = cfg_read(slot, 0, 0x3C) & 0xFF;
    kvd("line", line);
    if (msi) {
        uint32_t cap = cfg_read(slot, 0, 0x34) & 0xFF;
        check((cfg_read(slot, 0, cap) & 0xFF) == 0x05, 41);      /* MSI capability */
        cfg_write(slot, 0, cap + 4, 0xFEE00000);                 /* to APIC 0 */
        cfg_write(slot, 0, cap + 8, 0);
        cfg_write(slot, 0, cap + 12, 0x41);                      /* vector 0x41, fixed */
        cfg_write(slot, 0, cap, cfg_read(slot, 0, cap) | 1 << 16);   /* enable */
        cfg_write(slot, 0, 4, cfg_read(slot, 0, 4) | 4);          /* bus master (MSI writes) */
    } else {
        ioapic_route((int)line, 0x40, 1);                         /* level, active high */
    }
    wr32(edu_bar + 0x60, 0x10);                                   /* raise */
    wait_interrupt(&interrupts[msi], 1);
    kvd("interrupts", interrupts[msi]);
    kv("irq_status", rd32(edu_bar + 0x24));
    wr32(edu_bar + 0x20, 0x80);                                   /* interrupt after factorial */
    wr32(edu_bar + 0x08, 5);
    wait_interrupt(&interrupts[msi], 2);
    kvd("interrupts_after_factorial", interrupts[msi]);
    kvd("factorial", rd32(edu_bar + 0x08));
    /* DMA: 16 bytes from RAM into the device and back elsewhere, with an interrupt */
    static uint8_t src[16] = "pyhv edu dma ok", dst[16];
    wr32(edu_bar + 0x80, (uint32_t)(uint64_t)src); wr32(edu_bar + 0x84, 0);
    wr32(edu_bar + 0x88, 0x40000); wr32(edu_bar + 0x8C, 0);
    wr32(edu_bar + 0x90, 16); wr32(edu_bar + 0x94, 0);
    cfg_write(slot, 0, 4, cfg_read(slot, 0, 4) | 4);              /* bus master */
    wr32(edu_bar + 0x98, 1);                                      /* RAM -> device */
    while (rd32(edu_bar + 0x98) & 1) ;
    wr32(edu_bar + 0x80, 0x40000);
    wr32(edu_bar + 0x88, (uint32_t)(uint64_t)dst);
    wr32(edu_bar + 0x98, 1 | 2 | 4);                              /* device -> RAM, irq */
    while (rd32(edu_bar + 0x98) & 1) ;
    wait_interrupt(&interrupts[msi], 3);
    kvd("interrupts_after_dma", interrupts[msi]);
    puts("dma="); puts((const char *)dst); putc('\n');
}

static void test_testdev(void)
{
    setup_interrupts();
    /* the data register: bytes of one word at 0xe0-0xe3, byte-wide at 0xe8-0xeb */
    outl(0xE0, 0x11223344);
    kv("word", inl(0xE0));
    outb(0xE9, 0xAA);
    kv("after_byte", inl(0xE0));
    kv("byte_port", inb(0xEA));
    outw(0xE2, 0xBEEF);
    kv("after_word", inl(0xE8));
    /* iomem: plain device memory at 0xff000000, every access an exit */
    wr32(0xFF000010, 0xCAFEF00D);
    kv("iomem", rd32(0xFF000010));
    kv("iomem_byte", rd8(0xFF000011));
    /* IRQ lines: line 14 edge-triggered on IOAPIC pin 14, line 10 level-triggered */
    ioapic_route(14, 0x42, 0);
    outb(0x2000 + 14, 1);
    outb(0x2000 + 14, 0);
    wait_interrupt(&interrupts[2], 1);
    kvd("edge_interrupts", interrupts[2]);
    ioapic_route(10, 0x43, 1);
    outb(0x2000 + 10, 1);
    wait_interrupt(&interrupts[3], 1);
    outb(0x2000 + 10, 0);                   /* low again: no more after the last EOI */
    wait_interrupt(&interrupts[3], interrupts[3] + 1);   /* one may have been on its way */
    uint32_t seen = interrupts[3];
    wait_interrupt(&interrupts[3], seen + 1);
    kvd("level_interrupts", seen);
    kvd("level_after_low", interrupts[3] - seen);
    /* line 0, the PIT's, reaches IOAPIC pin 2 (QEMU's routing; the MADT says so) */
    ioapic_route(2, 0x42, 0);
    outb(0x43, 0x30);                       /* the PIT: channel 0 mode 0, stopped */
    outb(0x2000 + 0, 1);
    outb(0x2000 + 0, 0);
    wait_interrupt(&interrupts[2], 2);
    kvd("gsi0_on_pin2", interrupts[2] - 1);
}

/* ---- SMP: INIT, SIPI, SIPI to each AP ---- */
extern char trampoline_start[], trampoline_end[];
static volatile uint32_t ap_seen[8];
static volatile uint32_t ap_count;

void ap_main(void)
{
    uint32_t id = rd32(LAPIC + 0x20) >> 24;
    if (id < 8) ap_seen[id] = 1;
    __asm__ volatile("lock incl %0" : "+m"(ap_count));
    for (;;) __asm__ volatile("cli; hlt");
}

static void send_ipi(uint32_t apic, uint32_t command)
{
    wr32(LAPIC + 0x310, apic << 24);
    wr32(LAPIC + 0x300, command);
    while (rd32(LAPIC + 0x300) & 1 << 12) ;     /* delivery pending */
}

static void test_smp(const char *arg)
{
    wr32(LAPIC + 0xF0, 0x1FF);
    uint32_t cpus = fwcfg_u16(0x05);
    kvd("cpus", cpus);
    kvd("bsp_id", rd32(LAPIC + 0x20) >> 24);
    copy((uint8_t *)0x8000, (const uint8_t *)trampoline_start, (uint32_t)(trampoline_end - trampoline_start));
    for (uint32_t ap = 1; ap < cpus && ap < 8; ap++) {
        send_ipi(ap, 0x4500);                   /* INIT, level assert */
        send_ipi(ap, 0x4608);                   /* SIPI, vector 0x08: start at 0x8000 */
        for (volatile int d = 0; d < 100; d++) ;
        if (!ap_seen[ap]) send_ipi(ap, 0x4608); /* the second SIPI, as the MP spec says */
    }
    for (uint32_t spins = 0; ap_count + 1 < cpus && spins < 200000; spins++) ;
    kvd("started", ap_count);
    for (uint32_t ap = 1; ap < cpus && ap < 8; ap++)
        if (ap_seen[ap]) { puts("ap="); putdec(ap); putc('\n'); }
    if (streq(arg, "exit"))
        finish(failed ? (uint32_t)failed : 0);
    /* everyone halted with interrupts off: the machine is done (a halt, for pyhv run) */
    for (;;) __asm__ volatile("cli; hlt");
}

/* ---- S3: suspend through PM1a control, wake by the RTC alarm, resume at the vector ---- */
extern char resume_start[], resume_end[];
static void test_s3(void)
{
    uint32_t rsdp = find_rsdp();
    uint32_t rsdt = rd32(rsdp + 16);
    uint32_t fadt = find_table(rsdt, 0x50434146);
    uint32_t facs = rd32(fadt + 36);
    uint16_t evt = (uint16_t)rd32(fadt + 56), cnt = (uint16_t)rd32(fadt + 64);
    copy((uint8_t *)0x9000, (const uint8_t *)resume_start, (uint32_t)(resume_end - resume_start));
    wr32(facs + 12, 0x9000);                 /* the firmware waking vector */
    outw((uint16_t)(evt + 2), 0x400);        /* PM1 enable: RTC_EN */
    wait_update();
    cmos(0x0C);                              /* clear status C */
    cmos_set(0x01, 0xC0);                    /* alarm: any second, minute, hour */
    cmos_set(0x03, 0xC0);
    cmos_set(0x05, 0xC0);
    cmos_set(0x0B, cmos(0x0B) | 0x20);       /* AIE */
    puts("suspending\n");
    outw(cnt, (uint16_t)(1 << 10 | 1 << 13)); /* SLP_TYP 1 (S3), SLP_EN */
    puts("not suspended\n");
    finish(0xFC);
}

void kmain(const struct multiboot_info *info)
{
    const char *cmdline = (info->flags & 4) ? (const char *)(uint64_t)info->cmdline : "";
    while (*cmdline && *cmdline != ' ') cmdline++;      /* the image path */
    while (*cmdline == ' ') cmdline++;
    char test[16]; int i = 0;
    while (*cmdline && *cmdline != ' ' && i < 15) test[i++] = *cmdline++;
    test[i] = 0;
    while (*cmdline == ' ') cmdline++;
    puts("test="); puts(test); putc('\n');
    if (streq(test, "acpi")) test_acpi();
    else if (streq(test, "pmtimer")) test_pmtimer();
    else if (streq(test, "pci")) test_pci();
    else if (streq(test, "intx")) test_edu_interrupt(0);
    else if (streq(test, "msi")) test_edu_interrupt(1);
    else if (streq(test, "testdev")) test_testdev();
    else if (streq(test, "smp")) test_smp(cmdline);
    else if (streq(test, "s3")) test_s3();
    else { puts("unknown test\n"); finish(0xFD); }
    finish(failed ? (uint32_t)failed : 0);
}
