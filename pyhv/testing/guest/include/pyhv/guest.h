/*
 * <pyhv/guest.h> - the guest side of pyhv.testing: guests written in C, checked from Python.
 *
 *     #include <pyhv/guest.h>
 *
 *     void guest_main(int cpu)
 *     {
 *         uint64_t answer = GUEST_SYNC(41);      // the host sees 41 and may reply
 *         GUEST_ASSERT_EQ(answer, 42);           // a failure is a pytest failure at this line
 *         GUEST_PRINTF("vCPU %d of %d\n", cpu, guest_cpu_count());
 *         GUEST_DONE();                          // returning from guest_main does it too
 *     }
 *
 * Every vCPU enters guest_main(cpu) with its index (0, 1, ...) on a stack of its own;
 * guest_cpu_id() gives the same index anywhere on that stack.  The build mode decides where
 * the code runs: "long" (64-bit, ring 0), "protected" (32-bit, ring 0) or "user" (64-bit,
 * ring 3 under pyhv's ring-0 stub, the mode that runs natively on software KVMs such as
 * kvm_pvm).  Guest virtual addresses equal guest physical addresses in every mode.
 *
 * Each GUEST_* call is one exit to the host (a ucall): the vCPU fills its record in
 * pyhv_ucalls[] and rings the doorbell (port PYHV_UCALL_PORT at ring 0, an MMIO write to
 * PYHV_UCALL_MMIO in user mode).  The host reads the record, answers, and the guest goes on.
 */
#ifndef PYHV_GUEST_H
#define PYHV_GUEST_H

/* -- limits and the ucall channel (pyhv/testing/layout.py mirrors these numbers) -------- */
#define PYHV_MAX_CPUS        16          /* pyhv's stubs serve at most 16 vCPUs */
#define PYHV_STACK_SHIFT     15          /* 32 KiB of stack per vCPU */
#define PYHV_STACK_SIZE      (1 << PYHV_STACK_SHIFT)
#define PYHV_UCALL_PORT      0x7E0       /* ring 0: outl of the vCPU index */
#define PYHV_UCALL_MMIO      0xD0000000  /* user mode: a 32-bit write of the vCPU index */
#define PYHV_UCALL_TEXT      944         /* bytes of text per ucall (prints are split) */
#define PYHV_GUEST_MAGIC     0x7473657576687970   /* "pyhvuest", little-endian */
#define PYHV_GUEST_VERSION   1

/* struct ex_regs and struct pyhv_ex_slot, for the exception entry in assembly */
#define PYHV_EX_RAX 0
#define PYHV_EX_RBX 8
#define PYHV_EX_RCX 16
#define PYHV_EX_RDX 24
#define PYHV_EX_RSI 32
#define PYHV_EX_RDI 40
#define PYHV_EX_RBP 48
#define PYHV_EX_R8 56
#define PYHV_EX_R9 64
#define PYHV_EX_R10 72
#define PYHV_EX_R11 80
#define PYHV_EX_R12 88
#define PYHV_EX_R13 96
#define PYHV_EX_R14 104
#define PYHV_EX_R15 112
#define PYHV_EX_VECTOR 120
#define PYHV_EX_ERROR_CODE 128
#define PYHV_EX_CR2 136
#define PYHV_EX_RIP 144
#define PYHV_EX_RSP 152
#define PYHV_EX_RFLAGS 160
#define PYHV_EX_SIZE 168
#define PYHV_SLOT_VECTOR 0
#define PYHV_SLOT_ERROR_CODE 8
#define PYHV_SLOT_CR2 16
#define PYHV_SLOT_RIP 24
#define PYHV_SLOT_RDI 32
#define PYHV_SLOT_DEPTH 40

#ifndef __ASSEMBLER__
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pyhv_ucall_cmd {
    PYHV_UCALL_NONE = 0,
    PYHV_UCALL_SYNC = 1,        /* value; the host's answer comes back in reply */
    PYHV_UCALL_PRINT = 2,       /* text[length]; value = 1 when more of the same print follows */
    PYHV_UCALL_ASSERT = 3,      /* file, line, expr; value/value2 with their kinds; text */
    PYHV_UCALL_FAIL = 4,        /* file, line; text */
    PYHV_UCALL_DONE = 5,        /* file, line */
};

/* how a compared value is to be shown (pyhv_kind) */
enum pyhv_value_kind { PYHV_UNSIGNED = 0, PYHV_SIGNED = 1, PYHV_FLOAT = 2, PYHV_POINTER = 3 };

/* One vCPU's ucall record: fixed-width fields only, so 32- and 64-bit guests agree. */
struct pyhv_ucall {
    uint64_t cmd;
    uint64_t value;
    uint64_t value2;
    uint64_t reply;             /* written by the host */
    uint64_t file;              /* guest address of a NUL-terminated string, or 0 */
    uint64_t line;
    uint64_t expr;              /* guest address of a NUL-terminated string, or 0 */
    uint64_t kinds;             /* kind | size << 8 of value, the same << 16 for value2;
                                   bit 31: the assertion compared the two */
    uint64_t length;            /* bytes used in text */
    uint64_t spare;             /* unused (zero) */
    char text[PYHV_UCALL_TEXT];
} __attribute__((aligned(64)));

/* What the host tells the guest before it runs (pyhv_guest_info). */
struct pyhv_guest_info {
    uint64_t magic;
    uint64_t version;
    uint64_t cpus;              /* vCPUs running this image */
    uint64_t memory;            /* bytes of RAM at GPA 0 */
    uint64_t mode;              /* 1 long, 2 protected, 3 user */
};

extern struct pyhv_ucall pyhv_ucalls[PYHV_MAX_CPUS];
extern struct pyhv_guest_info pyhv_guest_info;

/* -- the test's entry point -------------------------------------------------------------- */
void guest_main(int cpu);

/* -- vCPUs --------------------------------------------------------------------------------- */
extern char pyhv_stacks[PYHV_MAX_CPUS][PYHV_STACK_SIZE];

/* this vCPU's index, from the stack it runs on (-1 off every vCPU's stack) */
static inline __attribute__((always_inline)) int guest_cpu_id(void)
{
    uintptr_t at = (uintptr_t)__builtin_frame_address(0) - (uintptr_t)pyhv_stacks;
    return at < (uintptr_t)PYHV_MAX_CPUS << PYHV_STACK_SHIFT ? (int)(at >> PYHV_STACK_SHIFT)
                                                              : -1;
}
int guest_cpu_count(void);              /* how many vCPUs run the image */
uint64_t guest_memory_size(void);       /* bytes of RAM from GPA 0 */

/* -- talking to the host ------------------------------------------------------------------- */
uint64_t pyhv_sync(uint64_t value, const char *file, int line);
void pyhv_done(const char *file, int line) __attribute__((noreturn));
void pyhv_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
void pyhv_assert_fail(const char *file, int line, const char *expr, uint64_t a, uint64_t b,
                      uint64_t kinds, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 7, 8)));
int guest_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int guest_vprintf(const char *fmt, va_list ap);

/* An integer or a pointer as a uint64_t, as C converts it (the branch not taken is still
   compiled: it must not warn, hence the addition). */
#define pyhv_u64(v) __builtin_choose_expr(__builtin_classify_type(v) == 5,                   \
                                          (uint64_t)(uintptr_t)(v), (uint64_t)0 + (v))

/* GUEST_SYNC(value): report value (any integer or pointer) and wait for the host's answer,
   which it returns (0 unless the host replies). */
#define GUEST_SYNC(value) pyhv_sync(pyhv_u64(value), __FILE__, __LINE__)
#define GUEST_PRINTF(...) guest_printf(__VA_ARGS__)
#define GUEST_DONE() pyhv_done(__FILE__, __LINE__)
#define GUEST_FAIL(...) pyhv_fail(__FILE__, __LINE__, __VA_ARGS__)

/* The raw bits of an integer, pointer or floating-point value (after the usual promotions),
   and how to show them. */
#define pyhv_kind(v) _Generic((v), int: PYHV_SIGNED, long: PYHV_SIGNED, long long: PYHV_SIGNED, \
                              float: PYHV_FLOAT, double: PYHV_FLOAT, default: PYHV_UNSIGNED)
#define pyhv_pointer_kind(v) (__builtin_classify_type(v) == 5 ? PYHV_POINTER : pyhv_kind(v))
#define pyhv_bits(v) ({ __typeof__(v) _pyhv_v = (v); uint64_t _pyhv_r = 0; \
                        __builtin_memcpy(&_pyhv_r, &_pyhv_v, \
                                         sizeof(_pyhv_v) < 8 ? sizeof(_pyhv_v) : 8); _pyhv_r; })
#define pyhv_describe(v) ((uint64_t)pyhv_pointer_kind(v) | (uint64_t)sizeof(v) << 8)

/* the expression is spelled before its macros expand (hence the text as an argument) */
#define GUEST_ASSERT(cond) PYHV_ASSERT(cond, #cond, "%s", "")
#define GUEST_ASSERT_MSG(cond, ...) PYHV_ASSERT(cond, #cond, __VA_ARGS__)
#define PYHV_ASSERT(cond, text, ...) do {                                                   \
        if (!(cond))                                                                        \
            pyhv_assert_fail(__FILE__, __LINE__, text, 0, 0, 0, __VA_ARGS__);              \
    } while (0)

/* each operand is evaluated once; both values reach the host */
#define PYHV_ASSERT_CMP(a, b, op, text) do {                                                \
        __typeof__((a) + 0) _pyhv_a = (a);                                                  \
        __typeof__((b) + 0) _pyhv_b = (b);                                                  \
        if (!(_pyhv_a op _pyhv_b))                                                          \
            pyhv_assert_fail(__FILE__, __LINE__, text, pyhv_bits(_pyhv_a),                  \
                             pyhv_bits(_pyhv_b),                                            \
                             pyhv_describe(_pyhv_a) | pyhv_describe(_pyhv_b) << 16 | 1u << 31, \
                             "%s", "");                                                     \
    } while (0)
#define GUEST_ASSERT_EQ(a, b) PYHV_ASSERT_CMP(a, b, ==, #a " == " #b)
#define GUEST_ASSERT_NE(a, b) PYHV_ASSERT_CMP(a, b, !=, #a " != " #b)
#define GUEST_ASSERT_LT(a, b) PYHV_ASSERT_CMP(a, b, <, #a " < " #b)
#define GUEST_ASSERT_LE(a, b) PYHV_ASSERT_CMP(a, b, <=, #a " <= " #b)
#define GUEST_ASSERT_GT(a, b) PYHV_ASSERT_CMP(a, b, >, #a " > " #b)
#define GUEST_ASSERT_GE(a, b) PYHV_ASSERT_CMP(a, b, >=, #a " >= " #b)

/* -- exceptions ---------------------------------------------------------------------------- */
/* The interrupted state a handler sees and may change (rip past a faulting instruction...);
   the same layout in 32-bit guests, whose registers fill the low halves. */
struct ex_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t vector, error_code, cr2;
    uint64_t rip, rsp, rflags;
};
typedef void (*guest_handler_t)(struct ex_regs *regs);
_Static_assert(sizeof(struct ex_regs) == PYHV_EX_SIZE, "ex_regs layout");
_Static_assert(__builtin_offsetof(struct ex_regs, rflags) == PYHV_EX_RFLAGS, "ex_regs layout");

/* What the host hands the exception entry for one vCPU (it copies it out at once). */
struct pyhv_ex_slot {
    uint64_t vector, error_code, cr2, rip, rdi, depth;
} __attribute__((aligned(64)));
_Static_assert(__builtin_offsetof(struct pyhv_ex_slot, depth) == PYHV_SLOT_DEPTH, "slot layout");

/* Call fn for CPU exception `vector` (0-31) on any vCPU; NULL removes it.  An exception
   with no handler fails the test, naming the vector and the source line. */
void guest_install_handler(int vector, guest_handler_t fn);

enum {
    DE_VECTOR = 0, DB_VECTOR = 1, BP_VECTOR = 3, OF_VECTOR = 4, BR_VECTOR = 5, UD_VECTOR = 6,
    NM_VECTOR = 7, DF_VECTOR = 8, TS_VECTOR = 10, NP_VECTOR = 11, SS_VECTOR = 12,
    GP_VECTOR = 13, PF_VECTOR = 14, MF_VECTOR = 16, AC_VECTOR = 17, MC_VECTOR = 18,
    XM_VECTOR = 19,
};

/* -- memory helpers ------------------------------------------------------------------------ */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* the helpers below are "artificial": in debug info their code belongs to the caller's line,
   so a report or gdb points at the test's code, not at this header */
#define PYHV_INLINE static inline __attribute__((always_inline, artificial))

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define barrier() __asm__ __volatile__("" ::: "memory")
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* MMIO: volatile accesses that the compiler keeps in order with the memory accesses around
   them (a record filled in RAM, then a doorbell rung, is seen in that order) */
#define PYHV_MMIO(bits)                                                                    \
    PYHV_INLINE uint##bits##_t mmio_read##bits(uintptr_t a)                                \
    {                                                                                      \
        barrier();                                                                         \
        uint##bits##_t v = *(volatile uint##bits##_t *)a;                                  \
        barrier();                                                                         \
        return v;                                                                          \
    }                                                                                      \
    PYHV_INLINE void mmio_write##bits(uintptr_t a, uint##bits##_t v)                       \
    {                                                                                      \
        barrier();                                                                         \
        *(volatile uint##bits##_t *)a = v;                                                 \
        barrier();                                                                         \
    }
PYHV_MMIO(8)
PYHV_MMIO(16)
PYHV_MMIO(32)
PYHV_MMIO(64)

/* port IO: ring 0 only (user mode raises #GP, as IOPL is not honoured everywhere) */
#define PYHV_PIO(suffix, type)                                                             \
    PYHV_INLINE void out##suffix(uint16_t port, type v)                                    \
    {                                                                                      \
        __asm__ __volatile__("out" #suffix " %0, %1" :: "a"(v), "Nd"(port) : "memory");    \
    }                                                                                      \
    PYHV_INLINE type in##suffix(uint16_t port)                                             \
    {                                                                                      \
        type v;                                                                            \
        __asm__ __volatile__("in" #suffix " %1, %0" : "=a"(v) : "Nd"(port) : "memory");    \
        return v;                                                                          \
    }
PYHV_PIO(b, uint8_t)
PYHV_PIO(w, uint16_t)
PYHV_PIO(l, uint32_t)

/* -- SMP ------------------------------------------------------------------------------------ */
typedef struct { volatile uint32_t locked; } guest_spinlock_t;
#define GUEST_SPINLOCK_INIT { 0 }
PYHV_INLINE void cpu_relax(void) { __asm__ __volatile__("pause" ::: "memory"); }
PYHV_INLINE void guest_spin_lock(guest_spinlock_t *l)
{
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED))
            cpu_relax();
}
PYHV_INLINE void guest_spin_unlock(guest_spinlock_t *l)
{
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}
/* Wait until every vCPU running the image has called it (reusable). */
void guest_barrier(void);

#endif /* !__ASSEMBLER__ */
#endif /* PYHV_GUEST_H */
