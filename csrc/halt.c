/*
 * halt.c - a machine halted for good: every vCPU halted with interrupts off and nothing that
 * could wake it, or waiting for an INIT/SIPI no other vCPU will send.
 *
 * With the in-kernel irqchip, HLT never reaches user space: the vCPU sleeps in KVM until an
 * interrupt comes, and one that halted with interrupts off sleeps for ever.  A watch groups
 * the vCPUs of one VM.  Each member running a guest looks at itself every interval (the
 * watchdog kicks it out of KVM_RUN, kick.c): its MP state, RFLAGS.IF, pending NMI/SMI/
 * exceptions, its local APIC's NMI-capable LVT entries and the I/O APIC's NMI/INIT/SMI routes
 * (a device could still wake it through those).  Looking at the vCPUs one after another is not
 * enough: a vCPU judged stuck may be woken by another (an NMI IPI, INIT/SIPI) before that one
 * halts in turn.  So when every member's last look found it stuck, a *round* starts: the
 * member that saw it kicks the others out of the guest, and each looks at itself again while
 * all of them wait outside KVM_RUN, where nobody can wake anybody.  If every look in the round
 * finds its vCPU stuck, the verdict holds: every member's run ends as PYHV_EXIT_HALT with
 * code PYHV_HALT_FOR_GOOD.  A member leaving its run for Python (any exit) is not stuck, and
 * a round needs every member inside its run.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define RFLAGS_IF (1ull << 9)
/* I/O APIC redirection entry: delivery mode (bits 8-10) and mask (bit 16) */
#define IOAPIC_DM(e) (((e) >> 8) & 7)
#define IOAPIC_MASKED(e) (((e) >> 16) & 1)
#define DM_SMI 2
#define DM_NMI 4
#define DM_INIT 5
/* local APIC LVT registers that may deliver an NMI: LINT0 (the PIC's line in virtual-wire
   mode), performance counters, thermal sensor; their delivery mode is bits 8-10 */
static const uint32_t lvt_nmi_capable[] = { 0x350, 0x340, 0x330 };
#define LVT_MASKED (1u << 16)
/* how long a member in a round waits at a time before it looks at its cancel and deadline */
#define ROUND_WAIT_NS (5ull * 1000 * 1000)

struct pyhv_halt_watch {
    pthread_mutex_t lock;
    pthread_cond_t cond;          /* a round's progress (CLOCK_MONOTONIC) */
    int vm_fd;
    uint64_t interval_ns;
    int refs;                     /* the creator's and one per member */
    int members;
    int running;                  /* members inside pyhv_vcpu_run */
    int stuck;                    /* members whose latest look found them stuck */
    uint32_t round;               /* numbers the rounds; 0: none yet */
    int round_open;               /* a round is going on */
    int round_looked;             /* members that looked at themselves in it */
    int round_failed;             /* one of them was not stuck, or left */
    int ended;                    /* the verdict: halted for good */
    struct pyhv_vcpu *list;       /* the members (hw_next links them) */
};

int pyhv_halt_watch_create(int vm_fd, uint64_t interval_ns, struct pyhv_halt_watch **out)
{
    if (interval_ns < 1000000ull)         /* a look costs a few ioctls: not more than 1/ms */
        return -EINVAL;
    struct pyhv_halt_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &attr);
    pthread_condattr_destroy(&attr);
    w->vm_fd = vm_fd;
    w->interval_ns = interval_ns;
    w->refs = 1;
    *out = w;
    return 0;
}

/* drop one reference (w->lock not held); the last frees the watch */
static void watch_put(struct pyhv_halt_watch *w)
{
    pthread_mutex_lock(&w->lock);
    int left = --w->refs;
    pthread_mutex_unlock(&w->lock);
    if (left)
        return;
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

void pyhv_halt_watch_destroy(struct pyhv_halt_watch *w)
{
    if (w)
        watch_put(w);     /* members keep it alive until they leave */
}

int pyhv_halt_watch_ended(struct pyhv_halt_watch *w)
{
    pthread_mutex_lock(&w->lock);
    int ended = w->ended;
    pthread_mutex_unlock(&w->lock);
    return ended;
}

static void leave(struct pyhv_vcpu *v)
{
    struct pyhv_halt_watch *w = v->hw;
    pthread_mutex_lock(&w->lock);
    struct pyhv_vcpu **p = &w->list;
    while (*p && *p != v)
        p = &(*p)->hw_next;
    if (*p)
        *p = v->hw_next;
    w->members--;
    if (v->hw_stuck)
        w->stuck--;
    if (w->round_open) {
        w->round_failed = 1;         /* the round's count of members changed */
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    v->hw = NULL;
    v->hw_next = NULL;
    v->hw_stuck = 0;
    v->hw_next_ns = 0;
    watch_put(w);
}

int pyhv_vcpu_join_halt_watch(struct pyhv_vcpu *v, struct pyhv_halt_watch *w)
{
    if (v->running_tid)
        return -EBUSY;               /* joined and left between runs only */
    if (v->hw)
        leave(v);
    if (!w)
        return 0;
    if (v->detached)
        return -EBADF;               /* no kernel to ask about its state */
    pthread_mutex_lock(&w->lock);
    w->refs++;
    w->members++;
    v->hw_next = w->list;
    w->list = v;
    pthread_mutex_unlock(&w->lock);
    v->hw = w;
    v->hw_stuck = 0;
    return 0;
}

void pyhv_halt_watch_leave(struct pyhv_vcpu *v)
{
    if (v->hw)
        leave(v);
}

/* Whether something set up on the VM could still wake a vCPU halted with interrupts off:
   an unmasked I/O APIC entry delivering NMI, INIT or SMI. */
static int ioapic_can_wake(int vm_fd)
{
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof(chip));
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    if (pyhv_ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
        return 1;                    /* cannot tell: assume it can */
    for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++) {
        uint64_t e = chip.chip.ioapic.redirtbl[i].bits;
        int dm = (int)IOAPIC_DM(e);
        if (!IOAPIC_MASKED(e) && (dm == DM_NMI || dm == DM_INIT || dm == DM_SMI))
            return 1;
    }
    return 0;
}

static int lapic_can_wake(struct pyhv_vcpu *v)
{
    struct kvm_lapic_state lapic;
    if (pyhv_ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0)
        return 1;
    for (size_t i = 0; i < sizeof(lvt_nmi_capable) / sizeof(lvt_nmi_capable[0]); i++) {
        uint32_t lvt;
        memcpy(&lvt, lapic.regs + lvt_nmi_capable[i], sizeof(lvt));
        int dm = (int)((lvt >> 8) & 7);
        if (!(lvt & LVT_MASKED) && (dm == DM_NMI || dm == DM_INIT || dm == DM_SMI))
            return 1;
    }
    return 0;
}

/* Look at this vCPU (its own thread, outside KVM_RUN, right after the kernel returned): 1 when
   it can never run again on its own, 0 otherwise; *mp_out gets its MP state. */
static int stuck_now(struct pyhv_vcpu *v, uint32_t *mp_out)
{
    struct kvm_mp_state mp;
    *mp_out = KVM_MP_STATE_RUNNABLE;
    if (pyhv_ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0)
        return 0;
    *mp_out = mp.mp_state;
    if (mp.mp_state == KVM_MP_STATE_UNINITIALIZED || mp.mp_state == KVM_MP_STATE_INIT_RECEIVED)
        return 1;                    /* an AP waiting for a SIPI only another vCPU can send */
    if (mp.mp_state != KVM_MP_STATE_HALTED)
        return 0;
    if (v->run->kvm_dirty_regs & KVM_SYNC_X86_REGS)
        return 0;                    /* registers Python set are not in the kernel yet */
    uint64_t rflags;
    if (v->sync_regs) {
        rflags = v->run->s.regs.regs.rflags;   /* stored by the kernel on its way out */
    } else {
        struct kvm_regs regs;
        if (pyhv_ioctl(v->fd, KVM_GET_REGS, &regs) < 0)
            return 0;
        rflags = regs.rflags;
    }
    if (rflags & RFLAGS_IF)
        return 0;                    /* an interrupt may still come */
    struct kvm_vcpu_events ev;
    if (pyhv_ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
        return 0;
    if (ev.nmi.pending || ev.nmi.injected || ev.smi.pending || ev.exception.injected ||
        ev.exception.pending || ev.interrupt.injected)
        return 0;
    return !lapic_can_wake(v) && !ioapic_can_wake(v->hw->vm_fd);
}

/* Record this member's look (w->lock held). */
static void note(struct pyhv_vcpu *v, int stuck)
{
    struct pyhv_halt_watch *w = v->hw;
    if (stuck != v->hw_stuck) {
        w->stuck += stuck ? 1 : -1;
        v->hw_stuck = stuck;
    }
}

/* Take part in the open round (w->lock held, released and taken again while waiting): look
   at this vCPU, then wait for the others.  Returns the verdict. */
static int take_part(struct pyhv_vcpu *v, uint32_t round)
{
    struct pyhv_halt_watch *w = v->hw;
    v->hw_round = round;
    pthread_mutex_unlock(&w->lock);
    uint32_t mp;
    int stuck = stuck_now(v, &mp);
    pthread_mutex_lock(&w->lock);
    if (w->round != round || !w->round_open)
        return w->ended;
    note(v, stuck);
    w->round_looked++;
    if (!stuck)
        w->round_failed = 1;
    for (;;) {
        if (w->round != round || !w->round_open)
            return w->ended;
        if (w->round_failed || w->round_looked == w->members) {
            /* the last look (or a failed one) closes the round */
            w->ended = !w->round_failed;
            w->round_open = 0;
            pthread_cond_broadcast(&w->cond);
            return w->ended;
        }
        if (atomic_load(&v->cancel_requested) ||
            (v->deadline_ns && pyhv_monotonic_ns() >= v->deadline_ns)) {
            w->round_failed = 1;     /* the run must end: the round cannot finish */
            continue;
        }
        uint64_t at_ns = pyhv_monotonic_ns() + ROUND_WAIT_NS;
        struct timespec at = { .tv_sec = (time_t)(at_ns / 1000000000ull),
                               .tv_nsec = (long)(at_ns % 1000000000ull) };
        pthread_cond_timedwait(&w->cond, &w->lock, &at);
    }
}

void pyhv_halt_run_begin(struct pyhv_vcpu *v, uint64_t now)
{
    struct pyhv_halt_watch *w = v->hw;
    pthread_mutex_lock(&w->lock);
    if (w->ended && w->running == 0)
        w->ended = 0;                /* every member saw the verdict: a new start */
    w->running++;
    pthread_mutex_unlock(&w->lock);
    v->hw_next_ns = now + w->interval_ns;
}

void pyhv_halt_woken(struct pyhv_vcpu *v, uint64_t now)
{
    if (!v->hw_next_ns)
        v->hw_next_ns = now + v->hw->interval_ns;    /* looked at again from now on */
}

void pyhv_halt_run_end(struct pyhv_vcpu *v)
{
    struct pyhv_halt_watch *w = v->hw;
    pthread_mutex_lock(&w->lock);
    w->running--;
    note(v, 0);                      /* back in Python: doing something */
    if (w->round_open) {
        w->round_failed = 1;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    v->hw_next_ns = 0;
}

int pyhv_halt_poll(struct pyhv_vcpu *v, uint64_t now, int from_kernel)
{
    struct pyhv_halt_watch *w = v->hw;
    pthread_mutex_lock(&w->lock);
    int verdict = w->ended;
    if (!verdict && w->round_open && v->hw_round != w->round) {
        verdict = take_part(v, w->round);
    } else if (!verdict && from_kernel && v->hw_next_ns && now >= v->hw_next_ns) {
        pthread_mutex_unlock(&w->lock);
        uint32_t mp;
        int stuck = stuck_now(v, &mp);
        pthread_mutex_lock(&w->lock);
        /* an AP that never got its INIT leaves KVM_RUN (EAGAIN) when one comes: it needs no
           more looks until then (a thousand idle APs cost nothing), and rounds kick it */
        v->hw_next_ns = mp == KVM_MP_STATE_UNINITIALIZED ? 0 : now + w->interval_ns;
        note(v, stuck);
        if (stuck && !w->round_open && !w->ended && w->stuck == w->members &&
            w->running == w->members) {
            /* everyone looked stuck: look again, all at once, outside the guest */
            uint32_t round = ++w->round;
            w->round_open = 1;
            w->round_looked = 0;
            w->round_failed = 0;
            for (struct pyhv_vcpu *m = w->list; m; m = m->hw_next)
                if (m != v)
                    pyhv_kick(m);
            verdict = take_part(v, round);
        }
        verdict = verdict || w->ended;
    }
    pthread_mutex_unlock(&w->lock);
    return verdict;
}
