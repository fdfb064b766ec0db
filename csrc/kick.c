/*
 * kick.c - stopping a vCPU's run from outside: the kick signal, cancel, and the timers that
 * kick a run at its deadline or when buffered output is due.
 *
 * Stopping a run is race-free by the kernel's recipe: a stop request sets a flag and the run
 * area's immediate_exit, then signals the vCPU thread.  The signal handler only sets
 * immediate_exit (so a signal landing just before the KVM_RUN syscall still stops it); all
 * decisions happen in the run loop (run.c), after KVM_RUN returns, by looking at the flag and
 * the clock.  A kick that arrives when nothing asked for one (a late timer) makes KVM_RUN
 * return EINTR and the loop simply enters the guest again.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

PYHV_TLS struct kvm_run *volatile pyhv_tls_run;        /* the run area of this thread's vCPU */
PYHV_TLS volatile sig_atomic_t pyhv_tls_kicked;        /* our signal arrived during the run */
static PYHV_TLS pid_t tls_tid;                           /* gettid() is a syscall: ask once */
PYHV_TLS uint64_t pyhv_tls_armed_ns;                  /* the thread timer's expiry, or 0 */

pid_t pyhv_current_tid(void)
{
    if (!tls_tid)
        tls_tid = gettid();
    return tls_tid;
}

static int kick_signal;

static void kick_handler(int sig)
{
    (void)sig;
    struct kvm_run *run = pyhv_tls_run;
    if (run) {
        run->immediate_exit = 1;
        pyhv_tls_kicked = 1;
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
    sev.sigev_notify_thread_id = pyhv_current_tid();
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
    pyhv_tls_armed_ns = 0;
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
int pyhv_arm_kick(struct pyhv_vcpu *v, int lazy)
{
    uint64_t when = v->deadline_ns;
    if (v->flush_due_ns && (!when || v->flush_due_ns < when))
        when = v->flush_due_ns;
    struct itimerspec at;
    memset(&at, 0, sizeof(at));
    if (when == 0) {
        if (pyhv_tls_armed_ns && !lazy) {
            if (tls_timer)
                timer_settime(tls_timer->id, 0, &at, NULL);   /* disarm */
            pyhv_tls_armed_ns = 0;
        }
        return 0;
    }
    if (pyhv_tls_armed_ns && pyhv_tls_armed_ns <= when && pyhv_monotonic_ns() < pyhv_tls_armed_ns)
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
    pyhv_tls_armed_ns = when;
    return 0;
}

int pyhv_vcpu_set_deadline(struct pyhv_vcpu *v, uint64_t deadline_ns)
{
    v->deadline_ns = deadline_ns;
    if (!deadline_ns && v->flush_due_ns && !pyhv_output_pending(v))
        v->flush_due_ns = 0;        /* a run ends: its output was delivered */
    return pyhv_arm_kick(v, 0);
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

