/* exit_decode.c - turning the kvm_run record of an exit into pyhv's struct pyhv_exit.

   The run area is shared with the kernel, and what it describes (lengths, offsets, counts) is
   read once and checked against the run area before any of it is used to touch memory: a
   record pyhv cannot trust becomes PYHV_EXIT_BAD_EXIT, with the offending fields in data[]. */
#include "internal.h"

#include <string.h>

/* the exit unions pyhv decodes hold at most this many data words */
#define PYHV_EXIT_WORDS 16u
_Static_assert(sizeof(((struct kvm_run *)0)->internal.data) == PYHV_EXIT_WORDS * 8, "internal");
_Static_assert(sizeof(((struct kvm_run *)0)->system_event.data) == PYHV_EXIT_WORDS * 8, "event");
_Static_assert(sizeof(((struct pyhv_exit *)0)->data) == PYHV_EXIT_WORDS * 8, "pyhv_exit.data");

static void bad_exit(struct pyhv_exit *ex, uint32_t n, uint64_t a, uint64_t b, uint64_t c)
{
    ex->reason = PYHV_EXIT_BAD_EXIT;
    ex->ndata = n;
    ex->data[0] = a;
    ex->data[1] = b;
    ex->data[2] = c;
}

static void decode_io(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    uint32_t size = run->io.size, count = run->io.count, direction = run->io.direction;
    uint64_t offset = run->io.data_offset, len;
    /* bounded to the run area and one page (the buffered ports count on that bound) */
    uint8_t *data = pyhv_io_bounds(v, size, count, offset, &len);
    if (!data || (direction != KVM_EXIT_IO_IN && direction != KVM_EXIT_IO_OUT)) {
        bad_exit(ex, 3, size, count, offset);
        return;
    }
    ex->reason = PYHV_EXIT_IO;
    ex->io_port = run->io.port;
    ex->io_size = (uint8_t)size;
    ex->io_count = count;
    ex->io_in = direction == KVM_EXIT_IO_IN;
    ex->io_data = data;
    ex->io_value = 0;
    if (!ex->io_in) {
        v->stats.io_out++;
        memcpy(&ex->io_value, data, size);   /* x86 is little-endian */
    } else {
        v->stats.io_in++;
        /* an IN nobody answers reads as an empty ISA bus: all ones */
        memset(data, 0xff, len);
        v->pending = PYHV_PENDING_IO_IN;
        v->pending_len = (uint32_t)len;
        v->pending_data = data;
    }
}

static void decode_mmio(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct kvm_run *run = v->run;
    uint32_t len = run->mmio.len;
    uint64_t gpa = run->mmio.phys_addr;
    if (len == 0 || len > sizeof(run->mmio.data)) {
        bad_exit(ex, 2, gpa, len, 0);
        return;
    }
    ex->reason = PYHV_EXIT_MMIO;
    ex->mmio_gpa = gpa;
    ex->mmio_len = len;
    ex->mmio_write = run->mmio.is_write ? 1 : 0;
    ex->mmio_value = 0;
    if (ex->mmio_write) {
        v->stats.mmio_write++;
        memcpy(ex->mmio_data, run->mmio.data, len);
        memcpy(&ex->mmio_value, run->mmio.data, len);
    } else {
        v->stats.mmio_read++;
        memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
        v->pending = PYHV_PENDING_MMIO_READ;
        v->pending_len = len;
        v->pending_data = run->mmio.data;
    }
}

/* RDMSR/WRMSR that KVM hands to user space (user-space MSR exits, see partition.c) */
static void decode_msr(struct pyhv_vcpu *v, struct pyhv_exit *ex, int write)
{
    struct kvm_run *run = v->run;
    uint32_t why = run->msr.reason;
    uint32_t index = run->msr.index;
    if (why > 0xff) {           /* KVM_MSR_EXIT_REASON_* are single low bits */
        bad_exit(ex, 2, index, why, 0);
        return;
    }
    ex->reason = PYHV_EXIT_MSR;
    ex->msr_index = index;
    ex->msr_write = (uint8_t)write;
    ex->msr_reason = (uint8_t)why;
    ex->msr_value = write ? run->msr.data : 0;
    if (write)
        v->stats.msr_write++;
    else
        v->stats.msr_read++;
    /* an MSR exit nobody answers faults the guest (#GP), as KVM itself would for an MSR it
       does not know; pyhv_vcpu_complete_msr clears it */
    run->msr.error = 1;
    v->pending = PYHV_PENDING_MSR;
    v->pending_msr_write = write;
}

/* data words of an INTERNAL_ERROR or SYSTEM_EVENT: a count beyond the union is not trusted */
static int copy_words(struct pyhv_exit *ex, const uint64_t *words, uint32_t n)
{
    if (n > PYHV_EXIT_WORDS)
        return -1;
    memcpy(ex->data, words, n * sizeof(uint64_t));
    ex->ndata = n;
    return 0;
}

void pyhv_decode_exit(struct pyhv_vcpu *v, struct pyhv_exit *ex, int from_kernel)
{
    struct kvm_run *run = v->run;
    uint32_t reason = run->exit_reason;
    ex->kvm_reason = reason;
    v->stats.by_kvm_reason[reason < PYHV_STAT_REASONS ? reason : PYHV_STAT_REASONS - 1]++;
    /* an injected record carries no registers: the run area keeps what KVM stored last */
    if (v->sync_regs && from_kernel) {
        v->regs_in_run = 1;   /* the kernel stored the registers on the way out */
        ex->rip = run->s.regs.regs.rip;
        ex->rip_valid = 1;
    }
    switch (reason) {
    case KVM_EXIT_IO:
        decode_io(v, ex);
        break;
    case KVM_EXIT_MMIO:
        decode_mmio(v, ex);
        break;
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR:
        decode_msr(v, ex, reason == KVM_EXIT_X86_WRMSR);
        break;
    case KVM_EXIT_HLT:
        ex->reason = PYHV_EXIT_HALT;
        break;
    case KVM_EXIT_SHUTDOWN:
        ex->reason = PYHV_EXIT_SHUTDOWN;
        break;
    case KVM_EXIT_INTERNAL_ERROR: {
        uint32_t code = run->internal.suberror, n = run->internal.ndata;
        ex->reason = PYHV_EXIT_INTERNAL_ERROR;
        ex->code = code;
        if (copy_words(ex, (const uint64_t *)run->internal.data, n) < 0)
            bad_exit(ex, 2, code, n, 0);
        break;
    }
    case KVM_EXIT_FAIL_ENTRY:
        ex->reason = PYHV_EXIT_FAIL_ENTRY;
        ex->data[0] = run->fail_entry.hardware_entry_failure_reason;
        ex->data[1] = run->fail_entry.cpu;
        ex->ndata = 2;
        break;
    case KVM_EXIT_SYSTEM_EVENT: {
        uint32_t type = run->system_event.type, n = run->system_event.ndata;
        ex->reason = PYHV_EXIT_SYSTEM_EVENT;
        ex->code = type;
        if (copy_words(ex, (const uint64_t *)run->system_event.data, n) < 0)
            bad_exit(ex, 2, type, n, 0);
        break;
    }
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

int pyhv_vcpu_inject_record(struct pyhv_vcpu *v, const uint8_t *record, uint32_t len)
{
    /* the run area's "in" fields stay pyhv's: immediate_exit and request_interrupt_window
       (before exit_reason), kvm_valid_regs, kvm_dirty_regs and the sync-register area (from
       kvm_valid_regs to the end of struct kvm_run); a record describes an exit, not state */
    const size_t out_first = offsetof(struct kvm_run, exit_reason);
    const size_t out_end = offsetof(struct kvm_run, kvm_valid_regs);
    if (len > v->run_size)
        return -EMSGSIZE;
    if (len && !record)
        return -EINVAL;
    /* the coalesced ring page is shared by the whole VM and is the kernel's to fill */
    if (v->ring && len > (size_t)((uint8_t *)v->ring - (uint8_t *)v->run))
        return -EINVAL;
    pthread_mutex_lock(&v->kick_lock);
    int running = v->running_tid != 0;
    pthread_mutex_unlock(&v->kick_lock);
    if (running || v->exit_waiting)
        return -EBUSY;         /* mid-run, or an exit Python has not seen would be lost */
    uint8_t *area = (uint8_t *)v->run;
    if (len > out_first)
        memcpy(area + out_first, record + out_first, (len < out_end ? len : out_end) - out_first);
    if (len > sizeof(struct kvm_run))
        memcpy(area + sizeof(struct kvm_run), record + sizeof(struct kvm_run),
               len - sizeof(struct kvm_run));
    v->exit_waiting = PYHV_WAITING_INJECTED;
    return 0;
}
