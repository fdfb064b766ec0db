/* ucall.c - the guest half of the ucall channel: fill this vCPU's record, ring the doorbell,
   read the answer.  Strings travel as guest addresses; the host reads them with bounds. */
#include <pyhv/guest.h>

struct pyhv_ucall pyhv_ucalls[PYHV_MAX_CPUS];

/* the mode the image was built for, as a symbol the host looks for */
#if defined(PYHV_MODE_USER)
const char pyhv_mode_user[] = "user";
#elif defined(PYHV_MODE_PROTECTED)
const char pyhv_mode_protected[] = "protected";
#else
const char pyhv_mode_long[] = "long";
#endif

/* written by the host before any vCPU runs; the magic tells it the layout matches */
struct pyhv_guest_info pyhv_guest_info = {
    .magic = PYHV_GUEST_MAGIC, .version = PYHV_GUEST_VERSION, .cpus = 1,
};

static inline void ring(uint32_t cpu)
{
#ifdef PYHV_MODE_USER
    /* ring 3 cannot use ports on every KVM (kvm_pvm ignores IOPL): an MMIO write exits.
       The record's stores come first, the reply's load after: compiler barriers both. */
    __asm__ __volatile__("movl %0, (%1)" :: "r"(cpu), "r"((uintptr_t)PYHV_UCALL_MMIO)
                         : "memory");
#else
    __asm__ __volatile__("outl %0, %1" :: "a"(cpu), "Nd"((uint16_t)PYHV_UCALL_PORT) : "memory");
#endif
}

static uint64_t ucall(struct pyhv_ucall *u)
{
    ring((uint32_t)(u - pyhv_ucalls));
    return READ_ONCE(u->reply);
}

static void __attribute__((noreturn)) lost(void)
{
    for (;;)                  /* off every vCPU stack: nowhere to report; stop here */
        __asm__ __volatile__("ud2");
}

static struct pyhv_ucall *record(uint64_t cmd, const char *file, int line)
{
    int cpu = guest_cpu_id();
    if (cpu < 0)
        lost();
    struct pyhv_ucall *u = &pyhv_ucalls[cpu];
    u->cmd = cmd;
    u->file = (uintptr_t)file;
    u->line = (uint64_t)line;
    u->expr = 0;
    u->value = u->value2 = u->kinds = u->length = u->reply = 0;
    return u;
}

/* the host reads only these fields of a sync: few instructions, which matters where ring 0
   is emulated (kvm_pvm) */
uint64_t pyhv_sync(uint64_t value, const char *file, int line)
{
    int cpu = guest_cpu_id();
    if (cpu < 0)
        lost();
    struct pyhv_ucall *u = &pyhv_ucalls[cpu];
    u->cmd = PYHV_UCALL_SYNC;
    u->value = value;
    u->file = (uintptr_t)file;
    u->line = (uint64_t)line;
    ring((uint32_t)cpu);
    return READ_ONCE(u->reply);
}

static void __attribute__((noreturn)) stop(void)
{
    /* the host ends the run at a done or a failure; a host that resumes it anyway (pyhv run
       without the ucall service) finds the vCPU stopped here */
    for (;;) {
#ifdef PYHV_MODE_USER
        __asm__ __volatile__("ud2");
#else
        __asm__ __volatile__("cli; hlt");
#endif
    }
}

void pyhv_done(const char *file, int line)
{
    ucall(record(PYHV_UCALL_DONE, file, line));
    stop();
}

/* -- text: prints and failure messages, split into records of PYHV_UCALL_TEXT bytes -------- */
struct text_out {
    struct pyhv_ucall *u;
    bool flush;            /* a print sends full records as it goes; a failure truncates */
};

static void text_put(void *ctx, char c)
{
    struct text_out *out = ctx;
    struct pyhv_ucall *u = out->u;
    if (u->length == PYHV_UCALL_TEXT) {
        if (!out->flush)
            return;
        u->value = 1;                 /* more follows */
        ucall(u);
        u->length = 0;
        u->value = 0;
    }
    u->text[u->length++] = c;
}

int pyhv_format(void (*put)(void *, char), void *ctx, const char *fmt, va_list ap);

int guest_vprintf(const char *fmt, va_list ap)
{
    struct text_out out = { record(PYHV_UCALL_PRINT, 0, 0), true };
    int n = pyhv_format(text_put, &out, fmt, ap);
    ucall(out.u);
    return n;
}

int guest_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = guest_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

void pyhv_fail(const char *file, int line, const char *fmt, ...)
{
    struct text_out out = { record(PYHV_UCALL_FAIL, file, line), false };
    va_list ap;
    va_start(ap, fmt);
    pyhv_format(text_put, &out, fmt, ap);
    va_end(ap);
    ucall(out.u);
    stop();
}

void pyhv_assert_fail(const char *file, int line, const char *expr, uint64_t a, uint64_t b,
                      uint64_t kinds, const char *fmt, ...)
{
    struct text_out out = { record(PYHV_UCALL_ASSERT, file, line), false };
    out.u->expr = (uintptr_t)expr;
    out.u->value = a;
    out.u->value2 = b;
    out.u->kinds = kinds;
    va_list ap;
    va_start(ap, fmt);
    pyhv_format(text_put, &out, fmt, ap);
    va_end(ap);
    ucall(out.u);
    stop();
}

/* -- vCPUs ------------------------------------------------------------------------------- */
int guest_cpu_count(void)
{
    return (int)READ_ONCE(pyhv_guest_info.cpus);
}

uint64_t guest_memory_size(void)
{
    return READ_ONCE(pyhv_guest_info.memory);
}

static uint32_t barrier_arrived, barrier_generation;

void guest_barrier(void)
{
    uint32_t generation = __atomic_load_n(&barrier_generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&barrier_arrived, 1, __ATOMIC_ACQ_REL) == (uint32_t)guest_cpu_count()) {
        __atomic_store_n(&barrier_arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&barrier_generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&barrier_generation, __ATOMIC_ACQUIRE) == generation)
        cpu_relax();
}

/* the C half of every vCPU's start (start64.S / start32.S set up its stack) */
void pyhv_start(int cpu) __attribute__((noreturn));
void pyhv_start(int cpu)
{
    guest_main(cpu);
    pyhv_done(0, 0);         /* returning from guest_main: done (no file: the host says so) */
}
