/*
 * run.c - the KVM_RUN loop and the completions of the exits it reports.
 *
 * One call runs the guest until an exit Python must see: exits a fast path completes
 * (fastpath.c) go straight back into the guest.  Stop requests (cancel, deadlines, due output:
 * kick.c) are decided at the top of the loop, after KVM_RUN returned, by looking at the cancel
 * flag and the clock; a kick that meant nothing re-enters the guest.
 */
#include "internal.h"

#include <string.h>
#include <sys/ioctl.h>

int pyhv_vcpu_run(struct pyhv_vcpu *v, struct pyhv_exit *ex, uint64_t deadline_ns)
{
    struct kvm_run *run = v->run;
    int rc = 0, entered = 0;
    int stored = 0;          /* KVM stored the registers in the run area on its way out */

    ex->reason = PYHV_EXIT_NONE;
    ex->kvm_reason = 0;
    ex->rip_valid = 0;
    ex->ndata = 0;
    ex->code = 0;
    ex->seq = ++v->seq;
    v->pending = PYHV_PENDING_NONE;
    if (v->flush_due_ns && !pyhv_output_pending(v))
        v->flush_due_ns = 0;        /* delivered since the last run */
    v->deadline_ns = deadline_ns;

    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = pyhv_current_tid();
    pthread_mutex_unlock(&v->kick_lock);
    pyhv_tls_run = run;
    /* timed per call, not per exit: C-completed exits count as guest time */
    uint64_t started = pyhv_monotonic_ns();
    if (v->hw)
        pyhv_halt_run_begin(v, started);   /* sets its first look (hw_next_ns) */
    /* after running_tid: a watchdog that sees the wake time also sees the run to kick (and
       one that acts on it before the run starts is caught by the clock check below) */
    uint64_t wake = pyhv_wake_due(v);
    if (wake && (rc = pyhv_set_wake(v, wake)) < 0)
        goto out;
    int resumed = 0;         /* KVM_RUN returned EINTR/EAGAIN: the vCPU may be looked at */

    for (;;) {
        pyhv_tls_kicked = 0;
        __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (pyhv_tls_interrupted) {
            /* a Ctrl-C since the last look (before this call, too): Python's handler is to
               run before the guest goes on; a later one stops KVM_RUN (immediate_exit) */
            pyhv_tls_interrupted = 0;
            ex->reason = PYHV_EXIT_INTERRUPTED;
            break;
        }
        if (atomic_load(&v->cancel_requested) && atomic_exchange(&v->cancel_requested, 0)) {
            ex->reason = PYHV_EXIT_CANCELED;
            break;
        }
        uint64_t now = v->deadline_ns || v->flush_due_ns || v->hw ? pyhv_monotonic_ns() : 0;
        if (v->deadline_ns && now >= v->deadline_ns) {
            ex->reason = PYHV_EXIT_TIMEOUT;
            break;
        }
        if (v->hw) {
            uint64_t look = v->hw_next_ns;
            if (pyhv_halt_poll(v, now, resumed)) {
                ex->reason = PYHV_EXIT_HALT;   /* every vCPU halted for good: a halt */
                ex->code = PYHV_HALT_FOR_GOOD;
                break;
            }
            if (v->hw_next_ns != look && (rc = pyhv_set_wake(v, pyhv_wake_due(v))) < 0)
                break;
        }
        resumed = 0;
        /* a buffer past half full ends the run where it fills (fast_io), so this is only
           true on entry, when Python has not taken that output yet */
        if ((v->flush_due_ns && now >= v->flush_due_ns) ||
            (!entered && v->nfast && pyhv_output_full(v))) {
            ex->reason = PYHV_EXIT_OUTPUT_FULL;    /* due: Python delivers it, runs again */
            break;
        }
        int r, err = 0, from_kernel = 1;
        if (v->exit_waiting) {
            /* an exit the kernel raised while pyhv flushed state (vcpu_state.c), or a record a
               test injected (exit_decode.c): report it now, without entering the guest */
            from_kernel = v->exit_waiting == PYHV_WAITING_KERNEL;
            v->exit_waiting = PYHV_WAITING_NONE;
            r = 0;
        } else if (v->fd < 0) {
            rc = -ENODATA;     /* a detached vCPU with no record left: no kernel to enter */
            break;
        } else {
            r = ioctl(v->fd, KVM_RUN, 0);
            err = errno;
            v->stats.runs++;
        }
        if (r == 0) {
            entered = 1;
            stored |= from_kernel;
            /* IO and MMIO exits (among others) are finished by the next KVM_RUN */
            v->needs_flush = run->exit_reason != KVM_EXIT_HLT &&
                             run->exit_reason != KVM_EXIT_SHUTDOWN;
            pyhv_decode_exit(v, ex, from_kernel);
            if (ex->reason == PYHV_EXIT_IO && v->nfast) {
                enum pyhv_fast_action act = pyhv_fast_io(v, ex);
                if (act == PYHV_FAST_DONE) {
                    v->stats.exits_in_c++;
                    continue;
                }
                if (act == PYHV_FAST_END_RUN) {
                    v->stats.exits_in_c++;
                    break;
                }
            }
            v->stats.exits_to_python++;
            break;
        }
        if (err == EAGAIN) {
            /* an application processor still waiting for INIT/SIPI was woken (KVM's api.rst:
               the VMM enters again); the checks at the top still apply */
            entered = stored = resumed = 1;
            if (v->hw) {
                pyhv_halt_woken(v, pyhv_monotonic_ns());
                if ((rc = pyhv_set_wake(v, pyhv_wake_due(v))) < 0)
                    break;
            }
            continue;
        }
        if (err != EINTR) {
            rc = -err;
            break;
        }
        entered = stored = resumed = 1;
        v->needs_flush = 0;     /* an interrupted entry completed what was pending */
        if (!pyhv_tls_kicked && !pyhv_tls_interrupted && !atomic_load(&v->cancel_requested)) {
            /* somebody else's signal: Python must get to run its handler */
            ex->reason = PYHV_EXIT_INTERRUPTED;
            break;
        }
        /* our kick, a Ctrl-C (its mark), or a cancel that set immediate_exit before its
           signal came: the checks at the top decide what it meant */
    }

out:
    pyhv_set_wake(v, 0);            /* the watchdog has nothing to do for us between runs */
    if (v->hw)
        pyhv_halt_run_end(v);
    v->stats.guest_ns += pyhv_monotonic_ns() - started;
    ex->output_pending = v->nfast ? (uint32_t)pyhv_output_pending(v) : 0;
    ex->coalesced_pending = (uint32_t)pyhv_ring_pending(v);
    pyhv_tls_run = NULL;
    pthread_mutex_lock(&v->kick_lock);
    v->running_tid = 0;
    pthread_mutex_unlock(&v->kick_lock);
    if (v->sync_regs && stored)
        v->regs_in_run = 1;   /* the kernel stores them on an interrupted run too */
    if (rc < 0)
        return rc;
    /* a summary for Python's hot loop, so the common case costs it no field reads */
    int summary = (int)ex->reason;
    if (ex->output_pending | ex->coalesced_pending)
        summary |= PYHV_RUN_BULK;
    if (ex->reason == PYHV_EXIT_IO && !ex->io_in && ex->io_count == 1) {
        summary |= PYHV_RUN_SINGLE_OUT | (int)ex->io_port << PYHV_RUN_PORT_SHIFT |
                   (ex->io_size == 4 ? 2 : ex->io_size == 2 ? 1 : 0) << PYHV_RUN_SIZE_SHIFT;
        if (ex->rip_valid)
            summary |= PYHV_RUN_RIP_VALID;
    }
    return summary;
}

int pyhv_vcpu_complete_in(struct pyhv_vcpu *v, uint32_t seq, const uint8_t *data, uint32_t len)
{
    if (seq != v->seq ||
        (v->pending != PYHV_PENDING_IO_IN && v->pending != PYHV_PENDING_MMIO_READ))
        return -ESTALE;
    if (len != v->pending_len)
        return -EMSGSIZE;
    /* where decode found (and bounds-checked) the exit's data: not re-read from the run area */
    memcpy(v->pending_data, data, len);
    v->pending = PYHV_PENDING_NONE;     /* answered: a second answer is stale */
    return 0;
}

int pyhv_vcpu_complete_in_value(struct pyhv_vcpu *v, uint32_t seq, uint64_t value)
{
    if (seq != v->seq ||
        (v->pending != PYHV_PENDING_IO_IN && v->pending != PYHV_PENDING_MMIO_READ))
        return -ESTALE;
    if (v->pending_len > sizeof(value))
        return -EMSGSIZE;
    return pyhv_vcpu_complete_in(v, seq, (const uint8_t *)&value, v->pending_len);
}

int pyhv_vcpu_complete_msr(struct pyhv_vcpu *v, uint32_t seq, uint64_t value, int error)
{
    if (seq != v->seq || v->pending != PYHV_PENDING_MSR)
        return -ESTALE;
    /* KVM finishes the instruction at the next KVM_RUN: RDMSR loads run->msr.data into
       EDX:EAX unless error is set, which (for either direction) injects #GP */
    v->run->msr.error = error ? 1 : 0;
    if (!v->pending_msr_write && !error)
        v->run->msr.data = value;
    v->pending = PYHV_PENDING_NONE;     /* answered: a second answer is stale */
    return 0;
}

int pyhv_vcpu_pending(const struct pyhv_vcpu *v)
{
    return (int)v->pending;
}
