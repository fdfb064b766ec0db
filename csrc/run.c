/*
 * run.c - running a vCPU: the KVM_RUN loop, exit decoding, completions, cancel and deadlines.
 *
 * Stopping a run is race-free by the kernel's recipe: a stop request sets a flag and the run
 * area's immediate_exit, then signals the vCPU thread.  The signal handler only sets
 * immediate_exit (so a signal landing just before the KVM_RUN syscall still stops it); all
 * decisions happen here, after KVM_RUN returns, by looking at the flag and the clock.  A kick
 * that arrives when nothing asked for one (a late timer) makes KVM_RUN return EINTR and the
 * loop simply enters the guest again.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif


/* initial-exec: the handler must not trigger a lazy TLS allocation */
#define PYHV_TLS __thread __attribute__((tls_model("initial-exec")))

static PYHV_TLS struct kvm_run *volatile tls_run;        /* the run area of this thread's vCPU */
static PYHV_TLS volatile sig_atomic_t tls_kicked;        /* our signal arrived during the run */
static PYHV_TLS pid_t tls_tid;                           /* gettid() is a syscall: ask once */
static PYHV_TLS uint64_t tls_armed_ns;                   /* the thread timer's expiry, or 0 */

static pid_t current_tid(void)
{
    if (!tls_tid)
        tls_tid = gettid();
    return tls_tid;
}

static int kick_signal;

int pyhv_kick_signal_number(void)
{
    return kick_signal;
}

static void kick_handler(int sig)
{
    (void)sig;
    struct kvm_run *run = tls_run;
    if (run) {
        run->immediate_exit = 1;
        tls_kicked = 1;
    }
}

/* One POSIX timer per thread that runs vCPUs, made on its first timed run and deleted when the
   thread exits: creating a timer per vCPU would cost every short-lived guest a syscall pair. */
struct thread_timer {
    timer_t id;
};
static PYHV_TLS struct thread_timer *tls_timer;
static pthread_key_t timer_key;
static pthread_once_t timer_key_once = PTHREAD_ONCE_INIT;

static void thread_timer_delete(void *p)
{
    struct thread_timer *t = p;
    timer_delete(t->id);
    free(t);
}

static void timer_key_create(void)
{
    pthread_key_create(&timer_key, thread_timer_delete);
}

static struct thread_timer *thread_timer(void)
{
    if (tls_timer)
        return tls_timer;
    pthread_once(&timer_key_once, timer_key_create);
    struct thread_timer *t = malloc(sizeof(*t));
    if (!t)
        return NULL;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = kick_signal;
    sev.sigev_notify_thread_id = current_tid();
    if (timer_create(CLOCK_MONOTONIC, &sev, &t->id) < 0) {
        int err = errno;
        free(t);
        errno = err;
        return NULL;
    }
    pthread_setspecific(timer_key, t);
    return tls_timer = t;
}

/* A forked child has the thread that forked, but not its POSIX timers, and a new thread id. */
static void forget_thread_in_child(void)
{
    tls_tid = 0;
    tls_timer = NULL;
    tls_armed_ns = 0;
    pthread_setspecific(timer_key, NULL);
}

int pyhv_init(void)
{
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    int rc = 0;
    pthread_mutex_lock(&once);
    if (!kick_signal) {
        /* a real-time signal well clear of the ones glibc and Python use */
        int sig = SIGRTMIN + 6;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = kick_handler;
        sa.sa_flags = SA_RESTART;   /* other syscalls of the thread just restart */
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) < 0)
            rc = -errno;
        else
            kick_signal = sig;
        pthread_once(&timer_key_once, timer_key_create);
        pthread_atfork(NULL, NULL, forget_thread_in_child);
    }
    pthread_mutex_unlock(&once);
    return rc < 0 ? rc : kick_signal;
}

uint64_t pyhv_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Arm this thread's timer for the vCPU's next reason to leave the guest: its deadline, or the
   time buffered output is due (whichever comes first).  Each timer_settime is a syscall, so an
   earlier expiry already armed is kept (the run loop re-arms after a kick that came early),
   and with nothing due the timer is disarmed only when `lazy` is 0: pyhv_vcpu_run leaves an
   output flush armed between exits, and Python's end of run (set_deadline 0) disarms it. */
static int arm_kick(struct pyhv_vcpu *v, int lazy)
{
    uint64_t when = v->deadline_ns;
    if (v->flush_due_ns && (!when || v->flush_due_ns < when))
        when = v->flush_due_ns;
    struct itimerspec at;
    memset(&at, 0, sizeof(at));
    if (when == 0) {
        if (tls_armed_ns && !lazy) {
            if (tls_timer)
                timer_settime(tls_timer->id, 0, &at, NULL);   /* disarm */
            tls_armed_ns = 0;
        }
        return 0;
    }
    if (tls_armed_ns && tls_armed_ns <= when && pyhv_monotonic_ns() < tls_armed_ns)
        return 0;          /* an earlier kick is still to come */
    if (!kick_signal)
        return -ENOSYS;   /* pyhv_init() was not called */
    struct thread_timer *t = thread_timer();
    if (!t)
        return -errno;
    /* a late expiry only kicks this thread: the run loop checks the clock before acting */
    at.it_value.tv_sec = (time_t)(when / 1000000000ull);
    at.it_value.tv_nsec = (long)(when % 1000000000ull);
    if (timer_settime(t->id, TIMER_ABSTIME, &at, NULL) < 0)
        return -errno;
    tls_armed_ns = when;
    return 0;
}

static int output_pending(const struct pyhv_vcpu *v);

int pyhv_vcpu_set_deadline(struct pyhv_vcpu *v, uint64_t deadline_ns)
{
    v->deadline_ns = deadline_ns;
    if (!deadline_ns && v->flush_due_ns && !output_pending(v))
        v->flush_due_ns = 0;        /* a run ends: its output was delivered */
    return arm_kick(v, 0);
}

void pyhv_vcpu_set_flush_interval(struct pyhv_vcpu *v, uint64_t interval_ns)
{
    v->flush_interval_ns = interval_ns;
}

void pyhv_vcpu_cancel(struct pyhv_vcpu *v)
{
    atomic_store(&v->cancel_requested, 1);
    /* catches a run about to enter the guest; the signal catches one already inside */
    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&v->kick_lock);
    if (v->running_tid && kick_signal)
        syscall(SYS_tgkill, getpid(), v->running_tid, kick_signal);
    pthread_mutex_unlock(&v->kick_lock);
}

void pyhv_vcpu_clear_cancel(struct pyhv_vcpu *v)
{
    atomic_store(&v->cancel_requested, 0);
}

static void decode_io(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    uint32_t size = run->io.size, count = run->io.count;
    uint64_t len;
    /* bounded to the run area and one page (the buffered ports count on that bound) */
    uint8_t *data = pyhv_io_data(v, &len);
    if (!data) {
        ex->reason = PYHV_EXIT_BAD_EXIT;
        ex->ndata = 3;
        ex->data[0] = size;
        ex->data[1] = count;
        ex->data[2] = run->io.data_offset;
        return;
    }
    ex->reason = PYHV_EXIT_IO;
    ex->io_port = run->io.port;
    ex->io_size = (uint8_t)size;
    ex->io_count = count;
    ex->io_in = run->io.direction == KVM_EXIT_IO_IN;
    ex->io_data = data;
    ex->io_value = 0;
    if (ex->io_in)
        v->stats.io_in++;
    else
        v->stats.io_out++;
    if (!ex->io_in) {
        memcpy(&ex->io_value, ex->io_data, size);   /* x86 is little-endian */
    } else {
        /* an IN nobody answers reads as an empty ISA bus: all ones */
        memset(ex->io_data, 0xff, len);
        v->pending = PYHV_PENDING_IO_IN;
        v->pending_len = (uint32_t)len;
    }
}

static void decode_mmio(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    uint32_t len = run->mmio.len;
    if (len == 0 || len > sizeof(run->mmio.data)) {
        ex->reason = PYHV_EXIT_BAD_EXIT;
        ex->ndata = 2;
        ex->data[0] = run->mmio.phys_addr;
        ex->data[1] = len;
        return;
    }
    ex->reason = PYHV_EXIT_MMIO;
    ex->mmio_gpa = run->mmio.phys_addr;
    ex->mmio_len = len;
    ex->mmio_write = run->mmio.is_write;
    ex->mmio_value = 0;
    if (ex->mmio_write)
        v->stats.mmio_write++;
    else
        v->stats.mmio_read++;
    if (ex->mmio_write) {
        memcpy(ex->mmio_data, run->mmio.data, len);
        memcpy(&ex->mmio_value, run->mmio.data, len);
    } else {
        memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
        v->pending = PYHV_PENDING_MMIO_READ;
        v->pending_len = len;
    }
}

static void copy_words(struct pyhv_exit *ex, const uint64_t *words, uint32_t n)
{
    if (n > 16)
        n = 16;
    memcpy(ex->data, words, n * sizeof(uint64_t));
    ex->ndata = n;
}

static void decode(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    ex->kvm_reason = run->exit_reason;
    v->stats.by_kvm_reason[run->exit_reason < PYHV_STAT_REASONS ? run->exit_reason
                                                                 : PYHV_STAT_REASONS - 1]++;
    if (v->sync_regs) {
        v->regs_in_run = 1;   /* the kernel stored the registers on the way out */
        ex->rip = run->s.regs.regs.rip;
        ex->rip_valid = 1;
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        decode_io(v, ex);
        break;
    case KVM_EXIT_MMIO:
        decode_mmio(v, ex);
        break;
    case KVM_EXIT_HLT:
        ex->reason = PYHV_EXIT_HALT;
        break;
    case KVM_EXIT_SHUTDOWN:
        ex->reason = PYHV_EXIT_SHUTDOWN;
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        ex->reason = PYHV_EXIT_INTERNAL_ERROR;
        ex->code = run->internal.suberror;
        copy_words(ex, (const uint64_t *)run->internal.data, run->internal.ndata);
        break;
    case KVM_EXIT_FAIL_ENTRY:
        ex->reason = PYHV_EXIT_FAIL_ENTRY;
        ex->data[0] = run->fail_entry.hardware_entry_failure_reason;
        ex->data[1] = run->fail_entry.cpu;
        ex->ndata = 2;
        break;
    case KVM_EXIT_SYSTEM_EVENT:
        ex->reason = PYHV_EXIT_SYSTEM_EVENT;
        ex->code = run->system_event.type;
        copy_words(ex, (const uint64_t *)run->system_event.data, run->system_event.ndata);
        break;
    case KVM_EXIT_DEBUG:
        ex->reason = PYHV_EXIT_DEBUG;
        ex->code = run->debug.arch.exception;
        ex->data[0] = run->debug.arch.pc;
        ex->data[1] = run->debug.arch.dr6;
        ex->data[2] = run->debug.arch.dr7;
        ex->ndata = 3;
        break;
    case KVM_EXIT_HYPERCALL:
        ex->reason = PYHV_EXIT_HYPERCALL;
        ex->code = (uint32_t)run->hypercall.nr;
        ex->data[0] = run->hypercall.nr;
        memcpy(&ex->data[1], run->hypercall.args, sizeof(run->hypercall.args));
        ex->ndata = 7;
        break;
    case KVM_EXIT_UNKNOWN:
        ex->reason = PYHV_EXIT_UNKNOWN;
        ex->data[0] = run->hw.hardware_exit_reason;
        ex->ndata = 1;
        break;
    default:
        ex->reason = PYHV_EXIT_UNKNOWN;
        break;
    }
}

/* ---- C fast paths ---------------------------------------------------------------------- */

enum fast_action { FAST_NOT_MINE, FAST_DONE, FAST_END_RUN };

static struct pyhv_fast_port *fast_port(struct pyhv_vcpu *v, uint16_t port)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].port == port)
            return &v->fast[i];
    return NULL;
}

/* Complete an IO exit in C when its port has a fast path (the exit is already decoded). */
static enum fast_action fast_io(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct pyhv_fast_port *f = fast_port(v, ex->io_port);
    if (!f || !atomic_load_explicit(&f->enabled, memory_order_relaxed))
        return FAST_NOT_MINE;
    uint32_t len = (uint32_t)ex->io_size * ex->io_count;   /* <= one page, checked by decode */
    switch (f->kind) {
    case PYHV_PORT_CONSTANT:
        if (!ex->io_in)
            return FAST_NOT_MINE;
        for (uint32_t i = 0; i < len; i += ex->io_size)
            memcpy(ex->io_data + i, &f->value, ex->io_size);
        v->pending = PYHV_PENDING_NONE;
        return FAST_DONE;
    case PYHV_PORT_BUFFERED:
        if (ex->io_in)
            return FAST_NOT_MINE;
        if (f->fill == 0 && !v->flush_due_ns && v->flush_interval_ns) {
            /* a guest that prints, then computes for long, still shows its output soon */
            v->flush_due_ns = pyhv_monotonic_ns() + v->flush_interval_ns;
            arm_kick(v, 1);
        }
        /* the run loop never enters the guest while a buffer is past half full and an exit
           carries at most a page, so this always fits; check anyway */
        if (len > PYHV_OUTPUT_BUFFER - f->fill)
            return FAST_NOT_MINE;
        memcpy(f->buffer + f->fill, ex->io_data, len);
        f->fill += len;
        if (f->fill > PYHV_OUTPUT_BUFFER / 2) {
            ex->reason = PYHV_EXIT_OUTPUT_FULL;
            return FAST_END_RUN;
        }
        return FAST_DONE;
    case PYHV_PORT_DEBUG_EXIT:
        if (ex->io_in)
            return FAST_NOT_MINE;
        ex->reason = PYHV_EXIT_DEBUG_EXIT;
        ex->data[0] = ex->io_value;
        ex->data[1] = ex->io_port;
        ex->ndata = 2;
        ex->code = 0;          /* Python computes (V << 1) | 1 without 32-bit overflow */
        return FAST_END_RUN;
    default:
        return FAST_NOT_MINE;
    }
}

int pyhv_vcpu_set_fast_port(struct pyhv_vcpu *v, uint16_t port, uint32_t kind, uint32_t value)
{
    struct pyhv_fast_port *f = fast_port(v, port);
    if (kind == PYHV_PORT_NONE) {
        if (!f)
            return -ENOENT;
        if (f->fill)
            return -EBUSY;   /* take its output first */
        free(f->buffer);
        *f = v->fast[--v->nfast];          /* keep the used entries at the front */
        memset(&v->fast[v->nfast], 0, sizeof(v->fast[0]));
        return 0;
    }
    if (kind > PYHV_PORT_DEBUG_EXIT)
        return -EINVAL;
    if (f)
        return -EEXIST;
    if (v->nfast == PYHV_MAX_FAST_PORTS)
        return -ENOSPC;
    uint8_t *buffer = NULL;
    if (kind == PYHV_PORT_BUFFERED && !(buffer = malloc(PYHV_OUTPUT_BUFFER)))
        return -ENOMEM;
    struct pyhv_fast_port *f_new = &v->fast[v->nfast++];
    *f_new = (struct pyhv_fast_port){ .port = port, .kind = kind, .value = value,
                                      .buffer = buffer };
    atomic_init(&f_new->enabled, 1);
    return 0;
}

int pyhv_vcpu_enable_fast_port(struct pyhv_vcpu *v, uint16_t port, int enabled)
{
    struct pyhv_fast_port *f = fast_port(v, port);
    if (!f)
        return -ENOENT;
    atomic_store(&f->enabled, enabled ? 1 : 0);
    return 0;
}

int pyhv_vcpu_take_output(struct pyhv_vcpu *v, uint16_t port, uint8_t *out, uint32_t max)
{
    struct pyhv_fast_port *f = fast_port(v, port);
    if (!f || f->kind != PYHV_PORT_BUFFERED)
        return -ENOENT;
    uint32_t n = f->fill < max ? f->fill : max;
    memcpy(out, f->buffer, n);
    memmove(f->buffer, f->buffer + n, f->fill - n);
    f->fill -= n;
    return (int)n;
}

static int output_pending(const struct pyhv_vcpu *v)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].fill)
            return 1;
    return 0;
}

static int output_full(const struct pyhv_vcpu *v)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].fill > PYHV_OUTPUT_BUFFER / 2)
            return 1;
    return 0;
}

static int ring_pending(const struct pyhv_vcpu *v)
{
    return v->ring && __atomic_load_n(&v->ring->first, __ATOMIC_ACQUIRE) !=
                          __atomic_load_n(&v->ring->last, __ATOMIC_ACQUIRE);
}

int pyhv_vcpu_drain_coalesced(struct pyhv_vcpu *v, struct pyhv_coalesced_write *out,
                              uint32_t max)
{
    if (!v->ring)
        return -ENODEV;
    struct kvm_coalesced_mmio_ring *ring = v->ring;
    uint32_t n = 0;
    uint32_t last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    while (n < max && ring->first != last) {
        uint32_t first = ring->first;
        if (first >= v->ring_max || last >= v->ring_max)
            return -EIO;   /* indices the ring cannot hold: never index with them */
        const struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[first];
        uint32_t len = e->len <= sizeof(out[n].data) ? e->len : sizeof(out[n].data);
        out[n].address = e->phys_addr;
        out[n].len = len;
        out[n].pio = e->pio;
        memcpy(out[n].data, e->data, len);
        n++;
        __atomic_store_n(&ring->first, (first + 1) % v->ring_max, __ATOMIC_RELEASE);
    }
    return (int)n;
}

int pyhv_vcpu_get_stats(struct pyhv_vcpu *v, struct pyhv_stats *out)
{
    *out = v->stats;
    return 0;
}

void pyhv_vcpu_reset_stats(struct pyhv_vcpu *v)
{
    memset(&v->stats, 0, sizeof(v->stats));
}

/* ---- the run loop ---------------------------------------------------------------------- */

int pyhv_vcpu_run(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    int rc = 0, entered = 0;

    ex->reason = PYHV_EXIT_NONE;
    ex->kvm_reason = 0;
    ex->rip_valid = 0;
    ex->ndata = 0;
    ex->code = 0;
    ex->seq = ++v->seq;
    v->pending = PYHV_PENDING_NONE;
    if (v->flush_due_ns && !output_pending(v))
        v->flush_due_ns = 0;        /* delivered since: a kick still armed for it is harmless */

    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = current_tid();
    pthread_mutex_unlock(&v->kick_lock);
    tls_run = run;
    /* timed per call, not per exit: C-completed exits count as guest time */
    uint64_t started = pyhv_monotonic_ns();

    for (;;) {
        tls_kicked = 0;
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (atomic_load(&v->cancel_requested) && atomic_exchange(&v->cancel_requested, 0)) {
            ex->reason = PYHV_EXIT_CANCELED;
            break;
        }
        uint64_t now = v->deadline_ns || v->flush_due_ns ? pyhv_monotonic_ns() : 0;
        if (v->deadline_ns && now >= v->deadline_ns) {
            ex->reason = PYHV_EXIT_TIMEOUT;
            break;
        }
        /* a buffer past half full ends the run where it fills (fast_io), so this is only
           true on entry, when Python has not taken that output yet */
        if ((v->flush_due_ns && now >= v->flush_due_ns) ||
            (!entered && v->nfast && output_full(v))) {
            ex->reason = PYHV_EXIT_OUTPUT_FULL;    /* due: Python delivers it, runs again */
            break;
        }
        /* something is due later but the timer has fired (early, for an output delivered
           since) or was never armed: arm it */
        if (now && tls_armed_ns <= now)
            arm_kick(v, 1);
        int r, err = 0;
        if (v->exit_waiting) {
            /* an exit the kernel raised while pyhv flushed state (state.c): report it now */
            v->exit_waiting = 0;
            r = 0;
        } else {
            r = ioctl(v->fd, KVM_RUN, 0);
            err = errno;
            v->stats.runs++;
        }
        if (r == 0) {
            entered = 1;
            /* IO and MMIO exits (among others) are finished by the next KVM_RUN */
            v->needs_flush = run->exit_reason != KVM_EXIT_HLT &&
                             run->exit_reason != KVM_EXIT_SHUTDOWN;
            decode(v, ex);
            if (ex->reason == PYHV_EXIT_IO && v->nfast) {
                enum fast_action act = fast_io(v, ex);
                if (act == FAST_DONE) {
                    v->stats.exits_in_c++;
                    continue;
                }
                if (act == FAST_END_RUN) {
                    v->stats.exits_in_c++;
                    break;
                }
            }
            v->stats.exits_to_python++;
            break;
        }
        if (err != EINTR) {
            rc = -err;
            break;
        }
        entered = 1;
        v->needs_flush = 0;     /* an interrupted entry completed what was pending */
        if (!tls_kicked && !atomic_load(&v->cancel_requested)) {
            /* somebody else's signal (Ctrl-C...): Python must get to run its handler */
            ex->reason = PYHV_EXIT_INTERRUPTED;
            break;
        }
        /* our kick (or a cancel that set immediate_exit before its signal came): the checks
           at the top decide whether it meant anything */
    }

    v->stats.guest_ns += pyhv_monotonic_ns() - started;
    ex->output_pending = v->nfast ? (uint32_t)output_pending(v) : 0;
    ex->coalesced_pending = (uint32_t)ring_pending(v);
    tls_run = NULL;
    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = 0;
    pthread_mutex_unlock(&v->kick_lock);
    if (v->sync_regs && entered)
        v->regs_in_run = 1;   /* the kernel stores them on an interrupted run too */
    if (rc < 0)
        return rc;
    /* a summary for Python's hot loop, so the common case costs it no field reads */
    int summary = (int)ex->reason;
    if (ex->output_pending | ex->coalesced_pending)
        summary |= PYHV_RUN_BULK;
    if (ex->reason == PYHV_EXIT_IO && !ex->io_in && ex->io_count == 1)
        summary |= PYHV_RUN_SINGLE_OUT;
    return summary;
}

int pyhv_vcpu_complete_in(struct pyhv_vcpu *v, uint32_t seq, const uint8_t *data, uint32_t len)
{
    if (seq != v->seq || v->pending == PYHV_PENDING_NONE)
        return -ESTALE;
    if (len != v->pending_len)
        return -EMSGSIZE;
    if (v->pending == PYHV_PENDING_IO_IN)
        memcpy((uint8_t *)v->run + v->run->io.data_offset, data, len);
    else
        memcpy(v->run->mmio.data, data, len);
    return 0;
}

int pyhv_vcpu_complete_in_value(struct pyhv_vcpu *v, uint32_t seq, uint64_t value)
{
    if (seq != v->seq || v->pending == PYHV_PENDING_NONE)
        return -ESTALE;
    if (v->pending_len > sizeof(value))
        return -EMSGSIZE;
    return pyhv_vcpu_complete_in(v, seq, (const uint8_t *)&value, v->pending_len);
}
