/* divide32.c - 64-bit division for 32-bit guests, which gcc turns into calls to libgcc
   (__udivdi3 and friends); the 32-bit libgcc is often not installed (gcc-multilib). */
#include <pyhv/guest.h>

static uint64_t divide(uint64_t n, uint64_t d, uint64_t *remainder)
{
    uint64_t q = 0, r = 0;
    if (d == 0) {      /* what the hardware does: #DE */
        volatile uint32_t zero = 0;
        return 1 / zero;
    }
    for (int bit = 63; bit >= 0; bit--) {
        r = r << 1 | (n >> bit & 1);
        if (r >= d) {
            r -= d;
            q |= 1ull << bit;
        }
    }
    if (remainder)
        *remainder = r;
    return q;
}

uint64_t __udivdi3(uint64_t n, uint64_t d);
uint64_t __umoddi3(uint64_t n, uint64_t d);
int64_t __divdi3(int64_t n, int64_t d);
int64_t __moddi3(int64_t n, int64_t d);

uint64_t __udivdi3(uint64_t n, uint64_t d) { return divide(n, d, 0); }

uint64_t __umoddi3(uint64_t n, uint64_t d)
{
    uint64_t r = 0;
    divide(n, d, &r);
    return r;
}

static uint64_t magnitude(int64_t v) { return v < 0 ? 0 - (uint64_t)v : (uint64_t)v; }

int64_t __divdi3(int64_t n, int64_t d)
{
    uint64_t q = divide(magnitude(n), magnitude(d), 0);
    return (n < 0) != (d < 0) ? -(int64_t)q : (int64_t)q;
}

int64_t __moddi3(int64_t n, int64_t d)
{
    uint64_t r = 0;
    divide(magnitude(n), magnitude(d), &r);
    return n < 0 ? -(int64_t)r : (int64_t)r;
}
