/* The 32-bit multiboot kernel the gdb tests debug, built with -g so gdb knows the types:
   bump() adds to `counter` five times, then the kernel spins until the debugger sets
   `release` and exits through the debug-exit port with counter + release. */
#include <stdint.h>

volatile int32_t counter;
volatile int32_t release;

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

__attribute__((noinline)) void bump(int32_t by)
{
    counter = counter + by;
}

void kmain(uint32_t magic, const void *info)
{
    (void)magic;
    (void)info;
    for (int i = 0; i < 5; i++)
        bump(1);
    while (!release)
        ;
    outb(0xF4, (uint8_t)(counter + release));
}
