/* fastpath.c - exits the C core completes without returning to Python: buffered output ports,
   constant-answer input ports and debug-exit ports; handing buffered output and the kernel's
   coalesced MMIO/PIO ring to Python; the per-vCPU counters. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static struct pyhv_fast_port *fast_port(struct pyhv_vcpu *v, uint16_t port)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].port == port)
            return &v->fast[i];
    return NULL;
}

/* Complete an IO exit in C when its port has a fast path (the exit is already decoded). */
enum pyhv_fast_action pyhv_fast_io(struct pyhv_vcpu *v, struct pyhv_exit *ex)
{
    struct pyhv_fast_port *f = fast_port(v, ex->io_port);
    if (!f || !atomic_load_explicit(&f->enabled, memory_order_relaxed))
        return PYHV_FAST_NOT_MINE;
    uint32_t len = (uint32_t)ex->io_size * ex->io_count;   /* <= one page, checked by decode */
    switch (f->kind) {
    case PYHV_PORT_CONSTANT:
        if (!ex->io_in)
            return PYHV_FAST_NOT_MINE;
        for (uint32_t i = 0; i < len; i += ex->io_size)
            memcpy(ex->io_data + i, &f->value, ex->io_size);
        v->pending = PYHV_PENDING_NONE;
        return PYHV_FAST_DONE;
    case PYHV_PORT_BUFFERED:
        if (ex->io_in)
            return PYHV_FAST_NOT_MINE;
        if (f->fill == 0 && !v->flush_due_ns) {
            /* a guest that prints, then computes for long, still shows its output soon: the
               watchdog kicks the run when it is due (failing that, at the next exit) */
            v->flush_due_ns = pyhv_monotonic_ns() + PYHV_FLUSH_INTERVAL_NS;
            pyhv_set_wake(v, pyhv_wake_due(v));
        }
        /* the run loop never enters the guest while a buffer is past half full and an exit
           carries at most a page, so this always fits; check anyway */
        if (len > PYHV_OUTPUT_BUFFER - f->fill)
            return PYHV_FAST_NOT_MINE;
        memcpy(f->buffer + f->fill, ex->io_data, len);
        f->fill += len;
        if (f->fill > PYHV_OUTPUT_BUFFER / 2) {
            ex->reason = PYHV_EXIT_OUTPUT_FULL;
            return PYHV_FAST_END_RUN;
        }
        return PYHV_FAST_DONE;
    case PYHV_PORT_DEBUG_EXIT:
        if (ex->io_in)
            return PYHV_FAST_NOT_MINE;
        ex->reason = PYHV_EXIT_DEBUG_EXIT;
        ex->data[0] = ex->io_value;
        ex->data[1] = ex->io_port;
        ex->ndata = 2;
        ex->code = 0;          /* Python computes (V << 1) | 1 without 32-bit overflow */
        return PYHV_FAST_END_RUN;
    default:
        return PYHV_FAST_NOT_MINE;
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

int pyhv_output_pending(const struct pyhv_vcpu *v)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].fill)
            return 1;
    return 0;
}

int pyhv_output_full(const struct pyhv_vcpu *v)
{
    for (uint32_t i = 0; i < v->nfast; i++)
        if (v->fast[i].fill > PYHV_OUTPUT_BUFFER / 2)
            return 1;
    return 0;
}

int pyhv_ring_pending(const struct pyhv_vcpu *v)
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
