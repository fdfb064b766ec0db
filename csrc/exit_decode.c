/* exit_decode.c - turning the kvm_run record of an exit into pyhv's struct pyhv_exit.

   The run area is shared with the kernel, and what it describes (lengths, offsets, counts) is
   checked against the run area before any of it is used to touch memory: a record pyhv cannot
   trust becomes PYHV_EXIT_BAD_EXIT. */
#include "internal.h"

#include <string.h>

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

void pyhv_decode_exit(struct pyhv_vcpu *v, struct pyhv_exit *ex)
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
