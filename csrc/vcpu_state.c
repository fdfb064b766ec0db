/* vcpu_state.c - a vCPU's whole state in one call each way, the discard of a pending exit, and
   probing which MSRs a vCPU can have restored. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs size");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs size");
_Static_assert(sizeof(struct kvm_fpu) == 416, "kvm_fpu size");
_Static_assert(sizeof(struct kvm_xsave) <= 4096, "kvm_xsave size");
_Static_assert(sizeof(struct kvm_xcrs) == 392, "kvm_xcrs size");
_Static_assert(sizeof(struct kvm_debugregs) == 128, "kvm_debugregs size");
_Static_assert(sizeof(struct kvm_vcpu_events) == 64, "kvm_vcpu_events size");
_Static_assert(sizeof(struct kvm_lapic_state) == 1024, "kvm_lapic_state size");
_Static_assert(PYHV_KVM_CAP_DEBUGREGS == KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS");

/* A discarded completion's reads (an IN or MMIO read waiting in the run area) are answered
   with all ones, as an empty bus would, and an MSR exit with #GP, as an unknown MSR would be.
   Only the exit's own data is touched: the pages after the PIO page (the VM-wide coalesced
   ring) are not the vCPU's to clear. */
static void answer_with_ones(struct pyhv_vcpu *v)
{
    struct kvm_run *run = v->run;
    uint32_t reason = run->exit_reason;
    uint64_t len;
    uint8_t *data;
    if (reason == KVM_EXIT_MMIO && !run->mmio.is_write)
        memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
    else if (reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_IN &&
             (data = pyhv_io_data(v, &len)) != NULL)
        memset(data, 0xff, len);
    else if (reason == KVM_EXIT_X86_RDMSR || reason == KVM_EXIT_X86_WRMSR)
        run->msr.error = 1;
}

/* Re-enter KVM_RUN with immediate_exit set: the kernel applies pending sync regs, finishes an
   IN or MMIO read whose data Python supplied (only applied at the next entry), stores the
   registers back into the run area and returns before running guest code.  Afterwards the
   vCPU's state is self-contained.  (Kernels older than 5.x returned before applying sync
   regs, so pending ones are written with ioctls first.)

   An exit an earlier flush raised and Python has not seen yet (exit_waiting) must reach
   Python first: saving refuses with -EBUSY and leaves it waiting; discarding answers it and
   drops it, so the next run does not report it. */
static int flush_pending(struct pyhv_vcpu *v, uint64_t store, int discard)
{
    struct kvm_run *run = v->run;
    long r;
    if (v->exit_waiting) {
        if (!discard)
            return -EBUSY;
        v->exit_waiting = PYHV_WAITING_NONE;
        answer_with_ones(v);
    }
    if ((r = pyhv_push_dirty_regs(v)) < 0)
        return (int)r;
    uint64_t valid = run->kvm_valid_regs;
    run->kvm_valid_regs = valid | store;
    run->immediate_exit = 1;
    /* Finishing one exit can raise the next at once (the second half of a 16-byte MMIO
       access, the next chunk of string IO): KVM_RUN then returns 0 with a new exit.  That
       state cannot be saved faithfully; when it is about to be overwritten (discard), the
       reads are answered with all ones until the chunk in progress is done. */
    int rounds = 0;
    while ((r = pyhv_ioctl(v->fd, KVM_RUN, NULL)) == 0) {
        if (!discard) {
            v->exit_waiting = PYHV_WAITING_KERNEL;   /* the next run hands it to Python */
            r = -EBUSY;
            break;
        }
        /* a string instruction finishes the chunk it is in (one PIO page, written to MMIO
           8 bytes or fewer at a time: at most 4096 rounds); the next chunk starts only on
           guest entry, which immediate_exit prevents */
        if (++rounds > 8192) {
            r = -EBUSY;
            break;
        }
        answer_with_ones(v);
    }
    run->immediate_exit = 0;
    run->kvm_valid_regs = valid;
    v->pending = PYHV_PENDING_NONE;
    if (r == -EBUSY)
        return (int)r;       /* a new exit is pending: the caller must let Python see it */
    v->needs_flush = 0;
    if (r < 0 && r != -EINTR)
        return (int)r;
    if (v->sync_regs)
        v->regs_in_run = 1;     /* stored on the way out, as after any run */
    return 0;
}

static int msrs_io(struct pyhv_vcpu *v, unsigned long request, const uint32_t *index,
                   uint64_t *value, uint32_t n)
{
    uint32_t done;
    return pyhv_msrs_transfer(v, request, index, value, n, &done);
}

/* Transfer index[0..n) (values in value[]) with as few ioctls as KVM allows: a call stops at
   the first MSR KVM refuses, which is dropped, and the next call goes on after it.  The
   accepted indices and their values are packed to the front of index[] and value[] (in
   place); returns how many, or -errno when an ioctl fails for another reason. */
static int keep_accepted(struct pyhv_vcpu *v, unsigned long request, uint32_t *index,
                         uint64_t *value, uint32_t n)
{
    uint32_t kept = 0, next = 0;
    while (next < n) {
        uint32_t done = 0;
        int rc = pyhv_msrs_transfer(v, request, index + next, value + next, n - next, &done);
        if (rc < 0 && rc != -EINVAL)
            return rc;
        for (uint32_t i = 0; i < done; i++, kept++) {   /* kept <= next + i: safe in place */
            index[kept] = index[next + i];
            value[kept] = value[next + i];
        }
        next += done;
        if (rc < 0)
            next++;            /* index[next] was refused */
    }
    return (int)kept;
}

int pyhv_vcpu_restorable_msrs(struct pyhv_vcpu *v, const uint32_t *index, uint32_t n, uint32_t *ok)
{
    /* KVM_SET_MSRS is the only test of whether an MSR can be written back: the values just
       read go back in bulk (a few calls in all, not two per MSR) */
    if (n == 0)
        return 0;
    uint64_t *value = calloc(n, sizeof(*value));
    if (!value)
        return -ENOMEM;
    memcpy(ok, index, n * sizeof(*ok));
    int count = keep_accepted(v, KVM_GET_MSRS, ok, value, n);
    if (count > 0)
        count = keep_accepted(v, KVM_SET_MSRS, ok, value, (uint32_t)count);
    free(value);
    return count;
}

int pyhv_vcpu_save_state(struct pyhv_vcpu *v, const uint32_t *msr_index, uint32_t nmsrs,
                         uint32_t optional, struct pyhv_vcpu_state *out)
{
    if (nmsrs > PYHV_STATE_MAX_MSRS)
        return -E2BIG;
    /* the flush stores registers, special registers and events in the run area for us */
    uint64_t sync = v->sync_state ? KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS
                                  : 0;
    int rc = flush_pending(v, sync, 0);
    if (rc < 0)
        return rc;
    memset(out, 0, sizeof(*out));
    out->version = PYHV_STATE_VERSION;
    long r;
    if (sync) {
        memcpy(out->regs, &v->run->s.regs.regs, sizeof(out->regs));
        memcpy(out->sregs, &v->run->s.regs.sregs, sizeof(out->sregs));
        memcpy(out->events, &v->run->s.regs.events, sizeof(out->events));
        out->present |= PYHV_HAS_EVENTS;
    } else if ((r = pyhv_ioctl(v->fd, KVM_GET_REGS, out->regs)) < 0 ||
               (r = pyhv_ioctl(v->fd, KVM_GET_SREGS, out->sregs)) < 0) {
        return (int)r;
    }
    if (v->has_xsave) {
        if ((r = pyhv_ioctl(v->fd, KVM_GET_XSAVE, out->xsave)) < 0)
            return (int)r;
        out->present |= PYHV_HAS_XSAVE;
    } else if ((r = pyhv_ioctl(v->fd, KVM_GET_FPU, out->fpu)) < 0) {
        return (int)r;
    }
    /* the optional parts, absent on some backends: XCRs and debug registers where the
       caller found the capability, MP state and LAPIC with in-kernel interrupt controllers
       (without them every vCPU is runnable and has no LAPIC: a failed ioctl each time) */
    if ((optional & PYHV_HAS_XCRS) && pyhv_ioctl(v->fd, KVM_GET_XCRS, out->xcrs) == 0)
        out->present |= PYHV_HAS_XCRS;
    if ((optional & PYHV_HAS_DEBUGREGS) &&
        pyhv_ioctl(v->fd, KVM_GET_DEBUGREGS, out->debugregs) == 0)
        out->present |= PYHV_HAS_DEBUGREGS;
    if (!sync && pyhv_ioctl(v->fd, KVM_GET_VCPU_EVENTS, out->events) == 0)
        out->present |= PYHV_HAS_EVENTS;
    if (v->irqchip) {
        struct kvm_mp_state mp;
        if (pyhv_ioctl(v->fd, KVM_GET_MP_STATE, &mp) == 0) {
            out->mp_state = mp.mp_state;
            out->present |= PYHV_HAS_MP_STATE;
        }
        if (pyhv_ioctl(v->fd, KVM_GET_LAPIC, out->lapic) == 0)
            out->present |= PYHV_HAS_LAPIC;
    }
    if (nmsrs)           /* msr_index may be NULL then, which memcpy must not be given */
        memcpy(out->msr_index, msr_index, nmsrs * sizeof(uint32_t));
    out->nmsrs = nmsrs;
    return msrs_io(v, KVM_GET_MSRS, out->msr_index, out->msr_value, nmsrs);
}

int pyhv_vcpu_discard_pending(struct pyhv_vcpu *v)
{
    if (!v->needs_flush && !v->exit_waiting)
        return 0;
    int rc = flush_pending(v, 0, 1);
    return rc < 0 ? rc : 1;
}

int pyhv_vcpu_load_state(struct pyhv_vcpu *v, const struct pyhv_vcpu_state *in)
{
    if (in->version != PYHV_STATE_VERSION || in->nmsrs > PYHV_STATE_MAX_MSRS)
        return -EINVAL;
    int rc;
    if ((v->needs_flush || v->exit_waiting) && (rc = flush_pending(v, 0, 1)) < 0)
        return rc;                                         /* (drops a stale completion) */
    struct kvm_run *run = v->run;
    run->kvm_dirty_regs = 0;
    /* until the end the run area's registers may be neither the old nor the new ones: on a
       failure on the way, readers must ask the kernel */
    v->regs_in_run = 0;
    long r;
    /* QEMU's order: registers, FPU, XCRs, special registers, MSRs, events, MP state, APIC,
       debug registers.  Registers, special registers and events go through the run area
       where KVM offers it (loaded at the next entry, before anything else): each vCPU ioctl
       costs microseconds on some backends. */
    /* with a LAPIC the special registers (APIC base: x2APIC mode) must be in place before
       KVM_SET_LAPIC, so they go by ioctl, in order */
    int sync = v->sync_state && (in->present & PYHV_HAS_EVENTS) &&
               !(in->present & PYHV_HAS_LAPIC);
    if (!sync && (r = pyhv_ioctl(v->fd, KVM_SET_REGS, (void *)in->regs)) < 0)
        return (int)r;
    if (in->present & PYHV_HAS_XSAVE)
        r = pyhv_ioctl(v->fd, KVM_SET_XSAVE, (void *)in->xsave);
    else
        r = pyhv_ioctl(v->fd, KVM_SET_FPU, (void *)in->fpu);
    if (r < 0)
        return (int)r;
    if ((in->present & PYHV_HAS_XCRS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_XCRS, (void *)in->xcrs)) < 0)
        return (int)r;
    if (!sync && (r = pyhv_ioctl(v->fd, KVM_SET_SREGS, (void *)in->sregs)) < 0)
        return (int)r;
    if ((rc = msrs_io(v, KVM_SET_MSRS, in->msr_index, (uint64_t *)in->msr_value, in->nmsrs)) < 0)
        return rc;
    if (!sync && (in->present & PYHV_HAS_EVENTS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_VCPU_EVENTS, (void *)in->events)) < 0)
        return (int)r;
    /* without in-kernel interrupt controllers a vCPU is always runnable: nothing to load */
    if ((in->present & PYHV_HAS_MP_STATE) &&
        (v->irqchip || in->mp_state != KVM_MP_STATE_RUNNABLE)) {
        struct kvm_mp_state mp = { .mp_state = in->mp_state };
        if ((r = pyhv_ioctl(v->fd, KVM_SET_MP_STATE, &mp)) < 0)
            return (int)r;
    }
    if ((in->present & PYHV_HAS_LAPIC) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_LAPIC, (void *)in->lapic)) < 0)
        return (int)r;
    if ((in->present & PYHV_HAS_DEBUGREGS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_DEBUGREGS, (void *)in->debugregs)) < 0)
        return (int)r;
    if (sync) {
        /* only now that nothing can fail: the kernel takes them at the next entry */
        memcpy(&run->s.regs.regs, in->regs, sizeof(run->s.regs.regs));
        memcpy(&run->s.regs.sregs, in->sregs, sizeof(run->s.regs.sregs));
        memcpy(&run->s.regs.events, in->events, sizeof(run->s.regs.events));
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
        v->regs_in_run = 1;
    }
    return 0;
}
