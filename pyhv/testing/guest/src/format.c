/* format.c - a small printf for guests: %d %i %u %x %X %o %p %s %c %% with the flags
   - 0 + space #, a width and a precision (numbers or *), and the sizes hh h l ll z t j.
   No floating point (ring-0 guests are built without SSE).  Anything else is copied out
   as written, so a typo shows in the output instead of eating arguments. */
#include <pyhv/guest.h>

struct spec {
    bool left, zero, plus, space, alt;
    int width, precision;       /* precision -1: none */
};

static int pad(void (*put)(void *, char), void *ctx, char c, int n)
{
    for (int i = 0; i < n; i++)
        put(ctx, c);
    return n > 0 ? n : 0;
}

static int emit_number(void (*put)(void *, char), void *ctx, uint64_t value, bool negative,
                       unsigned base, bool upper, const struct spec *s, bool pointer)
{
    char digits[24];
    int n = 0;
    const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    if (base == 10) {
        while (value) {
            digits[n++] = set[value % 10];
            value /= 10;
        }
    } else {
        unsigned shift = base == 16 ? 4 : 3;
        while (value) {
            digits[n++] = set[value & (base - 1)];
            value >>= shift;
        }
    }
    if (n == 0 && s->precision != 0)
        digits[n++] = '0';
    int zeros = s->precision > n ? s->precision - n : 0;
    const char *prefix = "";
    if (negative)
        prefix = "-";
    else if (s->plus && base == 10 && !pointer)
        prefix = "+";
    else if (s->space && base == 10 && !pointer)
        prefix = " ";
    else if ((s->alt || pointer) && base == 16)
        prefix = upper ? "0X" : "0x";
    else if (s->alt && base == 8 && zeros == 0 && (n == 0 || digits[n - 1] != '0'))
        prefix = "0";
    int prefix_len = (int)strlen(prefix);
    int body = prefix_len + zeros + n;
    int written = 0;
    if (s->zero && !s->left && s->precision < 0 && s->width > body) {
        zeros += s->width - body;         /* %08x: zeros after the sign or 0x */
        body = s->width;
    }
    if (!s->left)
        written += pad(put, ctx, ' ', s->width - body);
    for (int i = 0; i < prefix_len; i++)
        put(ctx, prefix[i]);
    written += prefix_len + pad(put, ctx, '0', zeros) + n;
    while (n)
        put(ctx, digits[--n]);
    if (s->left)
        written += pad(put, ctx, ' ', s->width - body);
    return written;
}

static int emit_string(void (*put)(void *, char), void *ctx, const char *str,
                       const struct spec *s)
{
    if (!str)
        str = "(null)";
    int n = 0;
    while (str[n] && (s->precision < 0 || n < s->precision))
        n++;
    int written = n;
    if (!s->left)
        written += pad(put, ctx, ' ', s->width - n);
    for (int i = 0; i < n; i++)
        put(ctx, str[i]);
    if (s->left)
        written += pad(put, ctx, ' ', s->width - n);
    return written;
}

int pyhv_format(void (*put)(void *, char), void *ctx, const char *fmt, va_list ap)
{
    int written = 0;
    while (*fmt) {
        if (*fmt != '%') {
            put(ctx, *fmt++);
            written++;
            continue;
        }
        const char *start = fmt++;
        struct spec s = { .precision = -1 };
        for (;; fmt++) {
            if (*fmt == '-') s.left = true;
            else if (*fmt == '0') s.zero = true;
            else if (*fmt == '+') s.plus = true;
            else if (*fmt == ' ') s.space = true;
            else if (*fmt == '#') s.alt = true;
            else break;
        }
        if (*fmt == '*') {
            s.width = va_arg(ap, int);
            if (s.width < 0)
                s.left = true, s.width = -s.width;
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                s.width = s.width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            s.precision = 0;
            if (*fmt == '*') {
                s.precision = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    s.precision = s.precision * 10 + (*fmt++ - '0');
            }
        }
        int size = 0;             /* -2 hh, -1 h, 0 int, 1 long, 2 long long / 64-bit */
        if (*fmt == 'h') {
            size = -1, fmt++;
            if (*fmt == 'h')
                size = -2, fmt++;
        } else if (*fmt == 'l') {
            size = 1, fmt++;
            if (*fmt == 'l')
                size = 2, fmt++;
        } else if (*fmt == 'z' || *fmt == 't') {
            size = sizeof(size_t) == 8 ? 2 : 0, fmt++;
        } else if (*fmt == 'j') {
            size = 2, fmt++;
        }
        char conv = *fmt;
        if (conv)
            fmt++;
        switch (conv) {
        case 'd':
        case 'i': {
            int64_t v = size == 2 ? va_arg(ap, long long) : size == 1 ? va_arg(ap, long)
                                                                       : va_arg(ap, int);
            if (size == -1) v = (short)v;
            if (size == -2) v = (signed char)v;
            uint64_t magnitude = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
            written += emit_number(put, ctx, magnitude, v < 0, 10, false, &s, false);
            break;
        }
        case 'u':
        case 'x':
        case 'X':
        case 'o': {
            uint64_t v = size == 2 ? va_arg(ap, unsigned long long)
                       : size == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            if (size == -1) v = (unsigned short)v;
            if (size == -2) v = (unsigned char)v;
            unsigned base = conv == 'u' ? 10 : conv == 'o' ? 8 : 16;
            written += emit_number(put, ctx, v, false, base, conv == 'X', &s, false);
            break;
        }
        case 'p':
            written += emit_number(put, ctx, (uintptr_t)va_arg(ap, void *), false, 16, false,
                                   &s, true);
            break;
        case 's':
            written += emit_string(put, ctx, va_arg(ap, const char *), &s);
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);
            if (!s.left)
                written += pad(put, ctx, ' ', s.width - 1);
            put(ctx, c);
            written++;
            if (s.left)
                written += pad(put, ctx, ' ', s.width - 1);
            break;
        }
        case '%':
            put(ctx, '%');
            written++;
            break;
        default:                    /* not ours (or the string ended): copy it as written */
            for (const char *c = start; c < fmt; c++, written++)
                put(ctx, *c);
            break;
        }
    }
    return written;
}

struct buffer_out {
    char *buf;
    size_t size, used;
};

static void buffer_put(void *ctx, char c)
{
    struct buffer_out *out = ctx;
    if (out->used + 1 < out->size)
        out->buf[out->used] = c;
    out->used++;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct buffer_out out = { buf, size, 0 };
    int n = pyhv_format(buffer_put, &out, fmt, ap);
    if (size)
        buf[out.used < size ? out.used : size - 1] = 0;
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
