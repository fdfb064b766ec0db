/* internal.h - what the C files share and Python never sees. */
#ifndef PYHV_INTERNAL_H
#define PYHV_INTERNAL_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <time.h>
#include <linux/kvm.h>

#include "pyhv_core.h"

/* What the last exit left for Python to answer before the next run. */
enum pyhv_pending {
    PYHV_PENDING_NONE = 0,
    PYHV_PENDING_IO_IN,      /* pending_data[0 .. pending_len): the IN's data, in the run area */
    PYHV_PENDING_MMIO_READ,  /* pending_data = run->mmio.data, pending_len bytes */
    PYHV_PENDING_MSR,        /* run->msr.error and (RDMSR) run->msr.data */
};

/* Why v->run holds an exit to report without entering KVM (exit_waiting). */
enum pyhv_waiting {
    PYHV_WAITING_NONE = 0,
    PYHV_WAITING_KERNEL,     /* KVM raised it while pyhv flushed state (vcpu_state.c) */
    PYHV_WAITING_INJECTED,   /* pyhv_vcpu_inject_record put it there (exit_decode.c) */
};

struct pyhv_fast_port {
    uint16_t port;
    atomic_int enabled;      /* off: exits go to Python (flipped from any thread) */
    uint32_t kind;           /* enum pyhv_port_kind (entries in use are packed at the front) */
    uint32_t value;          /* CONSTANT: the answer */
    uint32_t fill;           /* BUFFERED: bytes in buffer */
    uint8_t *buffer;         /* BUFFERED: PYHV_OUTPUT_BUFFER bytes */
};

struct pyhv_vcpu {
    int fd;
    uint32_t id;
    struct kvm_run *run;
    size_t run_size;

    /* Registers travel through run->s.regs when the kernel offers sync regs: reading them
       after an exit and writing them before the next entry then costs no ioctl. */
    int sync_regs;
    int has_xsave;           /* FPU state goes through KVM_GET/SET_XSAVE (see vcpu.c) */
    int sync_state;          /* sync regs also carry sregs and events (vcpu_state.c uses them) */
    int needs_flush;         /* the last exit may leave a completion pending in the kernel */
    int exit_waiting;        /* enum pyhv_waiting: run holds an exit Python has not seen yet */
    int detached;            /* no kernel behind it (fd -1): its run area is calloc'd */
    int irqchip;             /* the VM has in-kernel interrupt controllers */
    int regs_in_run;         /* run->s.regs.regs holds the vCPU's current registers */

    uint32_t seq;            /* incremented by every run */
    enum pyhv_pending pending;
    uint32_t pending_len;
    uint8_t *pending_data;   /* IN/MMIO read: where the answer goes, checked when decoded */
    int pending_msr_write;   /* MSR: the exit is a WRMSR (its completion takes no value) */

    /* fast paths (fastpath.c) */
    struct pyhv_fast_port fast[PYHV_MAX_FAST_PORTS];
    uint32_t nfast;          /* entries in use at the front of fast[] */
    struct kvm_coalesced_mmio_ring *ring;   /* NULL when KVM has no coalesced MMIO */
    uint32_t ring_max;       /* entries the ring page holds */
    struct pyhv_stats stats;

    /* cancellation and deadlines (kick.c) */
    atomic_int cancel_requested;
    pthread_mutex_t kick_lock;   /* keeps running_tid alive while another thread signals it */
    pid_t running_tid;           /* thread inside pyhv_vcpu_run, 0 when none */
    uint64_t deadline_ns;        /* the current run's deadline (0: none) */
    uint64_t flush_due_ns;       /* when the buffered output collected so far is due */
    _Atomic uint64_t wake_ns;    /* while a run is on: when the watchdog kicks it (0: never) */
    uint64_t wd_kicked;          /* the watchdog's: the wake time it last acted on */
    struct pyhv_vcpu *wd_prev, *wd_next;   /* every live vCPU is on the watchdog's list */

    /* the halt watch it belongs to (halt.c), NULL if none */
    struct pyhv_halt_watch *hw;
    struct pyhv_vcpu *hw_next;   /* the watch's list of members */
    int hw_stuck;                /* its latest look found it halted for good */
    uint32_t hw_round;           /* the latest round it took part in */
    uint64_t hw_next_ns;         /* during a run: when it looks at itself next */
};

/* ioctl that returns 0/positive or -errno, retrying nothing (system.c) */
long pyhv_ioctl(int fd, unsigned long request, void *arg);

/* KVM_GET_SUPPORTED_CPUID / KVM_GET_CPUID2 into pyhv's entries (system.c) */
int pyhv_cpuid_query(int fd, unsigned long request, struct pyhv_cpuid_entry *out, uint32_t max,
                     uint32_t *count_out);

/* KVM refuses KVM_GET_MSRS / KVM_SET_MSRS of nmsrs >= MAX_IO_MSRS (256) with E2BIG
   (arch/x86/kvm/x86.c, msr_io): one call carries at most 255 entries. */
#define PYHV_MSRS_PER_IOCTL 255u

/* KVM_GET_MSRS / KVM_SET_MSRS of any n entries, in chunks (vcpu.c); -EINVAL when KVM refused
   one, whose position *done_out gives (the entries before it were transferred) */
int pyhv_msrs_transfer(struct pyhv_vcpu *v, unsigned long request, const uint32_t *index,
                       uint64_t *value, uint32_t n, uint32_t *done_out);

/* write registers, special registers and events still waiting in the run area for the next
   KVM_RUN (kvm_dirty_regs) with ioctls, for calls that need the kernel's view current (vcpu.c) */
int pyhv_push_dirty_regs(struct pyhv_vcpu *v);

/* decode the exit in v->run into ex (exit_decode.c); from_kernel: KVM wrote it (so the sync
   registers came with it), else it was injected */
void pyhv_decode_exit(struct pyhv_vcpu *v, struct pyhv_exit *ex, int from_kernel);

/* fast paths (fastpath.c): what pyhv_fast_io did with a decoded IO exit */
enum pyhv_fast_action { PYHV_FAST_NOT_MINE, PYHV_FAST_DONE, PYHV_FAST_END_RUN };
enum pyhv_fast_action pyhv_fast_io(struct pyhv_vcpu *v, struct pyhv_exit *ex);
int pyhv_output_pending(const struct pyhv_vcpu *v);   /* a buffered port holds bytes */
int pyhv_output_full(const struct pyhv_vcpu *v);      /* one is past half full */
int pyhv_ring_pending(const struct pyhv_vcpu *v);     /* the coalesced ring holds writes */

/* kicks (kick.c).  initial-exec TLS: the signal handler must not trigger a lazy allocation */
#define PYHV_TLS __thread __attribute__((tls_model("initial-exec")))
extern PYHV_TLS struct kvm_run *volatile pyhv_tls_run;   /* the run area of this thread's vCPU */
extern PYHV_TLS volatile sig_atomic_t pyhv_tls_kicked;  /* our signal arrived during the run */
extern PYHV_TLS volatile sig_atomic_t pyhv_tls_interrupted;  /* SIGINT arrived (kick.c) */
pid_t pyhv_current_tid(void);
void pyhv_watchdog_add(struct pyhv_vcpu *v);       /* at creation */
void pyhv_watchdog_remove(struct pyhv_vcpu *v);    /* at destruction, before the free */
int pyhv_wake_slow(struct pyhv_vcpu *v, uint64_t when);
extern _Atomic uint64_t pyhv_wd_planned;           /* the watchdog's next look (kick.c) */
void pyhv_kick(struct pyhv_vcpu *v);               /* signal its running thread, if any */

/* halt watches (halt.c): the run loop's side */
void pyhv_halt_run_begin(struct pyhv_vcpu *v, uint64_t now);
void pyhv_halt_run_end(struct pyhv_vcpu *v);
void pyhv_halt_woken(struct pyhv_vcpu *v, uint64_t now);   /* KVM_RUN said EAGAIN */
/* at the top of the run loop: 1 when the machine is halted for good (the run ends as a halt);
   from_kernel: KVM_RUN just returned (EINTR/EAGAIN), so the vCPU can be looked at */
int pyhv_halt_poll(struct pyhv_vcpu *v, uint64_t now, int from_kernel);
void pyhv_halt_watch_leave(struct pyhv_vcpu *v);  /* at destruction */

/* The earlier of two times, 0 meaning "never". */
static inline uint64_t pyhv_earliest(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

/* When the run of v must next leave the guest: its deadline, its output flush, its next look
   for the halt watch (0: never). */
static inline uint64_t pyhv_wake_due(const struct pyhv_vcpu *v)
{
    return pyhv_earliest(pyhv_earliest(v->deadline_ns, v->flush_due_ns), v->hw_next_ns);
}

/* Publish when the current run of v must be kicked (0: never; called by its running thread).
   Where the watchdog looks again no later than `when` anyway, this is two memory accesses:
   the seq_cst store of the wake time, then the seq_cst load of the watchdog's plan, pair with
   the watchdog's store of its plan and its second scan (kick.c), so one side always sees the
   other.  An earlier time wakes the watchdog (its lock and condvar); -errno only when it could
   not be started. */
static inline int pyhv_set_wake(struct pyhv_vcpu *v, uint64_t when)
{
    atomic_store(&v->wake_ns, when);
    if (when == 0 || when >= atomic_load(&pyhv_wd_planned))
        return 0;
    return pyhv_wake_slow(v, when);
}

/* Buffered-port output waits at most this long for an exit before the run hands it to Python,
   so a guest that prints and then computes still shows its output soon. */
#define PYHV_FLUSH_INTERVAL_NS (50ull * 1000 * 1000)

#define PYHV_IO_DATA_MAX 4096u   /* most data one IO exit carries: KVM's one PIO page */

/* Where the data of an IO exit lies: size * count bytes at offset in the run area, which must
   be inside it, past the kvm_run header, and fit one page; size is 1, 2 or 4.  The pointer
   (and the length in *len_out), or NULL when the description breaks those bounds.  Callers
   pass the fields as they read them once, so what is checked is what is used. */
static inline uint8_t *pyhv_io_bounds(const struct pyhv_vcpu *v, uint32_t size, uint32_t count,
                                      uint64_t offset, uint64_t *len_out)
{
    uint64_t len = (uint64_t)size * count;
    if ((size != 1 && size != 2 && size != 4) || count == 0 || offset < sizeof(struct kvm_run) ||
        offset > v->run_size || len > v->run_size - offset || len > PYHV_IO_DATA_MAX)
        return NULL;
    *len_out = len;
    return (uint8_t *)v->run + offset;
}

/* the same for the IO exit in v->run */
static inline uint8_t *pyhv_io_data(const struct pyhv_vcpu *v, uint64_t *len_out)
{
    const struct kvm_run *run = v->run;
    return pyhv_io_bounds(v, run->io.size, run->io.count, run->io.data_offset, len_out);
}

#endif
