/*
 * kick.c - stopping a vCPU's run from outside: the kick signal, cancel, and the watchdog
 * thread that kicks runs whose deadline or buffered-output flush is due.
 *
 * Stopping a run is race-free by the kernel's recipe: a stop request sets a flag and the run
 * area's immediate_exit, then signals the vCPU thread.  The signal handler only sets
 * immediate_exit (so a signal landing just before the KVM_RUN syscall still stops it); all
 * decisions happen in the run loop (run.c), after KVM_RUN returns, by looking at the flag and
 * the clock.  A kick that arrives when nothing asked for one (late, or meant for an earlier
 * run) makes KVM_RUN return EINTR and the loop simply enters the guest again.
 *
 * Deadlines.  A timed run must not cost a syscall to arm and another to disarm (a timer per
 * run was ~0.65 us of a ~8 us exit on kvm_pvm).  Instead each run publishes its wake time,
 * the earlier of its deadline and the time its buffered output is due, in wake_ns, and one
 * process-wide watchdog thread sleeps until the earliest wake time of all vCPUs, then kicks
 * (tgkill, as cancel does) each vCPU that is inside pyhv_vcpu_run and whose wake time has
 * passed, once per wake time.  A run whose wake time is not earlier than the watchdog's plan
 * (pyhv_wd_planned) only stores it: the watchdog wakes up no later than that and looks again.
 * An earlier one takes the watchdog's lock and signals its condition variable.  Clearing is a
 * store of 0.  The pairing that makes the lock-free case safe is in pyhv_set_wake
 * (internal.h) and watchdog_main below.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

PYHV_TLS struct kvm_run *volatile pyhv_tls_run;
PYHV_TLS volatile sig_atomic_t pyhv_tls_kicked;
static PYHV_TLS pid_t tls_tid;                   /* gettid() is a syscall: ask once */

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

/* Ctrl-C.  Python's own SIGINT handler only notes the signal for its eval loop, so one that
   lands after Python last looked and before KVM_RUN enters the guest would wait for the next
   exit, and a guest that never exits would never see it.  This handler, in front of the one it
   found (Python's), also leaves a mark the run loop looks at before each entry and stops an
   entry under way (immediate_exit); the run then returns PYHV_EXIT_INTERRUPTED. */
PYHV_TLS volatile sig_atomic_t pyhv_tls_interrupted;
static struct sigaction chained_sigint;

static void sigint_handler(int sig, siginfo_t *info, void *context)
{
    pyhv_tls_interrupted = 1;
    struct kvm_run *run = pyhv_tls_run;
    if (run)
        run->immediate_exit = 1;
    if (chained_sigint.sa_flags & SA_SIGINFO)
        chained_sigint.sa_sigaction(sig, info, context);
    else
        chained_sigint.sa_handler(sig);
}

/* Put sigint_handler in front of the process's SIGINT handler when that is a function (not
   the default action or ignored); Python installing another one later replaces it, and
   then only the window above is back. */
static void chain_sigint(void)
{
    struct sigaction old, sa;
    if (sigaction(SIGINT, NULL, &old) < 0)
        return;
    if (old.sa_flags & SA_SIGINFO ? old.sa_sigaction == sigint_handler || !old.sa_sigaction
                                  : old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN)
        return;
    chained_sigint = old;
    sa = old;
    sa.sa_flags |= SA_SIGINFO;
    sa.sa_sigaction = sigint_handler;
    sigaction(SIGINT, &sa, NULL);
}

uint64_t pyhv_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Signal the thread running v's run, if one is (the lock keeps running_tid from ending its run
   and starting another thread's meanwhile: a late signal is harmless, a misdirected one is
   not). */
static void kick_running(struct pyhv_vcpu *v)
{
    pthread_mutex_lock(&v->kick_lock);
    if (v->running_tid && kick_signal)
        syscall(SYS_tgkill, getpid(), v->running_tid, kick_signal);
    pthread_mutex_unlock(&v->kick_lock);
}

void pyhv_kick(struct pyhv_vcpu *v)
{
    kick_running(v);
}

void pyhv_vcpu_cancel(struct pyhv_vcpu *v)
{
    atomic_store(&v->cancel_requested, 1);
    /* catches a run about to enter the guest; the signal catches one already inside */
    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    kick_running(v);
}

void pyhv_vcpu_clear_cancel(struct pyhv_vcpu *v)
{
    atomic_store(&v->cancel_requested, 0);
}

/* ---- the watchdog ---------------------------------------------------------------------- */

/* wd_lock guards the list of live vCPUs (and each one's wd_kicked), the thread's existence
   and the condition variable; the watchdog holds it while it looks at vCPUs, and destroy
   unlinks under it, so the watchdog never touches a freed vCPU. */
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static int wd_cond_ready;            /* wd_cond initialised (it waits on CLOCK_MONOTONIC) */
static int wd_started;               /* the watchdog thread exists in this process */
static struct pyhv_vcpu *wd_list;
/* when the watchdog will next look at the wake times: UINT64_MAX when it waits for a signal
   (or does not exist yet) */
_Atomic uint64_t pyhv_wd_planned = UINT64_MAX;

void pyhv_watchdog_add(struct pyhv_vcpu *v)
{
    pthread_mutex_lock(&wd_lock);
    v->wd_prev = NULL;
    v->wd_next = wd_list;
    if (wd_list)
        wd_list->wd_prev = v;
    wd_list = v;
    pthread_mutex_unlock(&wd_lock);
}

void pyhv_watchdog_remove(struct pyhv_vcpu *v)
{
    pthread_mutex_lock(&wd_lock);
    if (v->wd_prev)
        v->wd_prev->wd_next = v->wd_next;
    else if (wd_list == v)
        wd_list = v->wd_next;
    if (v->wd_next)
        v->wd_next->wd_prev = v->wd_prev;
    v->wd_prev = v->wd_next = NULL;
    pthread_mutex_unlock(&wd_lock);
}

/* Look at every vCPU's wake time (wd_lock held).  kick: signal each running vCPU whose wake
   time has passed and was not acted on yet, and remember it (once per wake time, however
   slow the vCPU is to leave the guest; one that is not running gets no signal: its run checks
   the clock when it starts).  Returns the earliest wake time still to come (UINT64_MAX: none);
   without kick, a due one not acted on returns `now` (the caller must look again). */
static uint64_t wd_scan(uint64_t now, int kick)
{
    uint64_t next = UINT64_MAX;
    for (struct pyhv_vcpu *v = wd_list; v; v = v->wd_next) {
        uint64_t when = atomic_load(&v->wake_ns);
        if (when == 0 || when == v->wd_kicked)
            continue;
        if (when > now) {
            if (when < next)
                next = when;
            continue;
        }
        if (!kick)
            return now;
        v->wd_kicked = when;
        kick_running(v);
    }
    return next;
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wd_lock);
    for (;;) {
        uint64_t now = pyhv_monotonic_ns();
        uint64_t next = wd_scan(now, 1);
        /* Publish the plan, then look again: a vCPU stores its wake time and then loads the
           plan (both seq_cst), so either it sees this plan (and takes the lock if its time is
           earlier) or this second look sees its time. */
        atomic_store(&pyhv_wd_planned, next);
        if (wd_scan(now, 0) < next)
            continue;
        if (next == UINT64_MAX) {
            pthread_cond_wait(&wd_cond, &wd_lock);
        } else {
            struct timespec at = { .tv_sec = (time_t)(next / 1000000000ull),
                                   .tv_nsec = (long)(next % 1000000000ull) };
            pthread_cond_timedwait(&wd_cond, &wd_lock, &at);
        }
    }
    return NULL;
}

/* Start the watchdog (wd_lock held).  It blocks every signal: Ctrl-C and pyhv's kicks are for
   the threads that run Python and vCPUs. */
static int wd_start(void)
{
    if (!wd_cond_ready) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&wd_cond, &attr);
        pthread_condattr_destroy(&attr);
        wd_cond_ready = 1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);     /* it needs next to nothing */
    pthread_t thread;
    int err = pthread_create(&thread, &attr, watchdog_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        return -err;
    wd_started = 1;
    return 0;
}

int pyhv_wake_slow(struct pyhv_vcpu *v, uint64_t when)
{
    (void)v;                   /* its wake time is already published; the list holds it */
    if (!kick_signal)
        return -ENOSYS;        /* pyhv_init() was not called: nothing could stop the run */
    int rc = 0;
    pthread_mutex_lock(&wd_lock);
    if (!wd_started)
        rc = wd_start();
    if (rc == 0 && when < atomic_load(&pyhv_wd_planned)) {
        /* lowered now, so that other vCPUs with times in between do not all signal too */
        atomic_store(&pyhv_wd_planned, when);
        pthread_cond_signal(&wd_cond);
    }
    pthread_mutex_unlock(&wd_lock);
    return rc;
}

/* fork(): the child has only the forking thread, so no watchdog and no running vCPU.  The lock
   is held across the fork so the list is whole in the child; every vCPU's kick lock is made
   anew there (a thread of the parent may have held one). */
static void wd_before_fork(void)
{
    pthread_mutex_lock(&wd_lock);
}

static void wd_after_fork_parent(void)
{
    pthread_mutex_unlock(&wd_lock);
}

static void wd_after_fork_child(void)
{
    tls_tid = 0;               /* a new thread id */
    wd_started = 0;            /* the next wake time starts a watchdog of the child's own */
    wd_cond_ready = 0;         /* its parent's waiter is gone: made anew with the thread */
    atomic_store(&pyhv_wd_planned, UINT64_MAX);
    for (struct pyhv_vcpu *v = wd_list; v; v = v->wd_next) {
        pthread_mutex_init(&v->kick_lock, NULL);
        v->running_tid = 0;
        atomic_store(&v->wake_ns, 0);
        v->wd_kicked = 0;
    }
    pthread_mutex_unlock(&wd_lock);
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
        if (sigaction(sig, &sa, NULL) < 0) {
            rc = -errno;
        } else {
            kick_signal = sig;
            pthread_atfork(wd_before_fork, wd_after_fork_parent, wd_after_fork_child);
            chain_sigint();
        }
    }
    pthread_mutex_unlock(&once);
    return rc < 0 ? rc : kick_signal;
}
