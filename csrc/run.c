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

int pyhv_vcpu_set_deadline(struct pyhv_vcpu *v, uint64_t deadline_ns)
{
    v->deadline_ns = deadline_ns;
    if (deadline_ns == 0) {
        if (v->has_timer) {
            struct itimerspec off;
            memset(&off, 0, sizeof(off));
            timer_settime(v->timer, 0, &off, NULL);
        }
        return 0;
    }
    if (!kick_signal)
        return -ENOSYS;   /* pyhv_init() was not called */
    pid_t tid = gettid();
    if (v->has_timer && v->timer_tid != tid) {
        timer_delete(v->timer);   /* the vCPU moved to another thread */
        v->has_timer = 0;
    }
    if (!v->has_timer) {
        struct sigevent sev;
        memset(&sev, 0, sizeof(sev));
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signal;
        sev.sigev_notify_thread_id = tid;
        if (timer_create(CLOCK_MONOTONIC, &sev, &v->timer) < 0)
            return -errno;
        v->has_timer = 1;
        v->timer_tid = tid;
    }
    struct itimerspec at;
    memset(&at, 0, sizeof(at));
    at.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    at.it_value.tv_nsec = (long)(deadline_ns % 1000000000ull);
    if (timer_settime(v->timer, TIMER_ABSTIME, &at, NULL) < 0)
        return -errno;
    return 0;
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

static void decode_io(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    uint32_t size = run->io.size, count = run->io.count;
    uint64_t offset = run->io.data_offset;
    uint64_t len = (uint64_t)size * count;
    /* the data must lie inside the mapped run area, past the kvm_run header */
    if ((size != 1 && size != 2 && size != 4) || count == 0 || offset < sizeof(struct kvm_run) ||
        offset > v->run_size || len > v->run_size - offset) {
        ex->reason = PYHV_EXIT_BAD_EXIT;
        ex->ndata = 3;
        ex->data[0] = size;
        ex->data[1] = count;
        ex->data[2] = offset;
        return;
    }
    ex->reason = PYHV_EXIT_IO;
    ex->io_port = run->io.port;
    ex->io_size = (uint8_t)size;
    ex->io_count = count;
    ex->io_in = run->io.direction == KVM_EXIT_IO_IN;
    ex->io_data = (uint8_t *)run + offset;
    ex->io_value = 0;
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

    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = gettid();
    pthread_mutex_unlock(&v->kick_lock);
    tls_run = run;

    for (;;) {
        tls_kicked = 0;
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (atomic_exchange(&v->cancel_requested, 0)) {
            ex->reason = PYHV_EXIT_CANCELED;
            break;
        }
        if (v->deadline_ns && pyhv_monotonic_ns() >= v->deadline_ns) {
            ex->reason = PYHV_EXIT_TIMEOUT;
            break;
        }
        if (ioctl(v->fd, KVM_RUN, 0) == 0) {
            decode(v, ex);
            break;
        }
        if (errno != EINTR) {
            rc = -errno;
            break;
        }
        entered = 1;
        if (!tls_kicked) {
            /* somebody else's signal (Ctrl-C...): Python must get to run its handler */
            ex->reason = PYHV_EXIT_INTERRUPTED;
            break;
        }
        /* our kick: the checks at the top decide whether it meant anything */
    }

    tls_run = NULL;
    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = 0;
    pthread_mutex_unlock(&v->kick_lock);
    if (v->sync_regs && entered)
        v->regs_in_run = 1;   /* the kernel stores them on an interrupted run too */
    return rc;
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
