/* vcpu.c - vCPU fds: creation with the run area, and register state in pyhv's own structs. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* Capabilities every vCPU asks about; the kernel module's answers do not change, so each is
   asked once per process (-2: not asked yet) instead of three syscalls per vCPU. */
static int cap_xsave = -2, cap_coalesced = -2, cap_sync_regs = -2;

static int cached_extension(int vm_fd, long capability, int *cache)
{
    int value = __atomic_load_n(cache, __ATOMIC_RELAXED);
    if (value == -2) {
        value = pyhv_check_extension(vm_fd, capability);
        if (value >= 0)      /* an error is not an answer: ask again next time */
            __atomic_store_n(cache, value, __ATOMIC_RELAXED);
    }
    return value;
}

/* What creation applies from `init`, in the order KVM needs: CPUID first (the checks of
   special registers and MSRs depend on the features it advertises), then special registers,
   MSRs and general registers.  Special registers go by ioctl even where sync regs could carry
   them to the first KVM_RUN for free: KVM would check them only then, and a refused set would
   fail that run (-EINVAL, again at every later run) instead of the creation. */
static int apply_init(struct pyhv_vcpu *v, const struct pyhv_vcpu_init *init)
{
    int rc;
    v->irqchip = (init->flags & PYHV_VCPU_IRQCHIP) != 0;
    if (init->cpuid && (rc = pyhv_vcpu_set_cpuid(v, init->cpuid, init->ncpuid)) < 0)
        return rc;
    if (init->sregs && (rc = pyhv_vcpu_set_sregs(v, init->sregs)) < 0)
        return rc;
    uint32_t done;
    if (init->nmsrs &&
        (rc = pyhv_vcpu_set_msrs(v, init->msr_index, init->msr_value, init->nmsrs, &done)) < 0)
        return rc;
    if (init->regs && (rc = pyhv_vcpu_set_regs(v, init->regs)) < 0)
        return rc;
    return 0;
}

int pyhv_vcpu_create(int vm_fd, uint32_t id, uint32_t mmap_size,
                     const struct pyhv_vcpu_init *init, struct pyhv_vcpu **out)
{
    if (mmap_size < sizeof(struct kvm_run))
        return -EINVAL;
    /* refuse a malformed init before KVM_CREATE_VCPU: its id could not be made again */
    if (init && ((init->flags & ~(uint32_t)PYHV_VCPU_IRQCHIP) ||
                 (init->nmsrs && (!init->msr_index || !init->msr_value))))
        return -EINVAL;
    struct pyhv_vcpu *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    long fd = pyhv_ioctl(vm_fd, KVM_CREATE_VCPU, (void *)(unsigned long)id);
    if (fd < 0) {
        free(v);
        return (int)fd;
    }
    void *run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
    if (run == MAP_FAILED) {
        int err = -errno;
        close((int)fd);
        free(v);
        return err;
    }
    v->fd = (int)fd;
    v->id = id;
    v->run = run;
    v->run_size = mmap_size;
    pthread_mutex_init(&v->kick_lock, NULL);
    atomic_init(&v->cancel_requested, 0);
    v->has_xsave = cached_extension(vm_fd, KVM_CAP_XSAVE, &cap_xsave) > 0;
    /* the coalesced MMIO/PIO ring is a page of the vCPU mapping, shared by the whole VM */
    long page = sysconf(_SC_PAGESIZE);
    int ring_page = cached_extension(vm_fd, KVM_CAP_COALESCED_MMIO, &cap_coalesced);
    if (ring_page > 0 && (size_t)(ring_page + 1) * (size_t)page <= mmap_size) {
        v->ring = (struct kvm_coalesced_mmio_ring *)((uint8_t *)run + (size_t)ring_page * page);
        v->ring_max = (uint32_t)((page - sizeof(struct kvm_coalesced_mmio_ring)) /
                                 sizeof(struct kvm_coalesced_mmio));
    }
    int sync = cached_extension(vm_fd, KVM_CAP_SYNC_REGS, &cap_sync_regs);
    if (sync > 0 && (sync & KVM_SYNC_X86_REGS)) {   /* (-errno would look like every bit) */
        v->sync_regs = 1;
        v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
        v->sync_state = (sync & KVM_SYNC_X86_SREGS) && (sync & KVM_SYNC_X86_EVENTS);
    }
    pyhv_watchdog_add(v);
    int rc;
    if (init && (rc = apply_init(v, init)) < 0) {
        pyhv_vcpu_destroy(v);
        return rc;
    }
    *out = v;
    return 0;
}

/* Bounds a detached vCPU's run area: real ones are a few pages (KVM_GET_VCPU_MMAP_SIZE). */
#define PYHV_DETACHED_MAX_RUN (1u << 20)

int pyhv_vcpu_create_detached(uint32_t mmap_size, struct pyhv_vcpu **out)
{
    if (mmap_size < sizeof(struct kvm_run) || mmap_size > PYHV_DETACHED_MAX_RUN)
        return -EINVAL;
    struct pyhv_vcpu *v = calloc(1, sizeof(*v));
    void *run = calloc(1, mmap_size);
    if (!v || !run) {
        free(v);
        free(run);
        return -ENOMEM;
    }
    /* fd -1: every ioctl fails with EBADF; no sync regs, no XSAVE, no coalesced ring, so
       nothing reads kernel-owned parts of the run area */
    v->fd = -1;
    v->detached = 1;
    v->run = run;
    v->run_size = mmap_size;
    pthread_mutex_init(&v->kick_lock, NULL);
    atomic_init(&v->cancel_requested, 0);
    pyhv_watchdog_add(v);
    *out = v;
    return 0;
}

void pyhv_vcpu_destroy(struct pyhv_vcpu *v)
{
    if (!v)
        return;
    pyhv_watchdog_remove(v);        /* first: from now on the watchdog cannot reach it */
    pyhv_halt_watch_leave(v);
    for (uint32_t i = 0; i < PYHV_MAX_FAST_PORTS; i++)
        free(v->fast[i].buffer);
    if (v->detached) {
        free(v->run);
    } else {
        munmap(v->run, v->run_size);
        close(v->fd);
    }
    pthread_mutex_destroy(&v->kick_lock);
    free(v);
}

int pyhv_vcpu_fd(const struct pyhv_vcpu *v)
{
    return v->fd;
}

void pyhv_vcpu_set_irqchip(struct pyhv_vcpu *v, int present)
{
    v->irqchip = present;
}

/* kvm_regs and pyhv_regs list the same 18 registers in the same order. */
_Static_assert(sizeof(struct kvm_regs) == sizeof(struct pyhv_regs), "register layouts differ");

int pyhv_vcpu_get_regs(struct pyhv_vcpu *v, struct pyhv_regs *out)
{
    if (v->sync_regs && v->regs_in_run) {
        memcpy(out, &v->run->s.regs.regs, sizeof(*out));
        return 0;
    }
    struct kvm_regs r;
    long rc = pyhv_ioctl(v->fd, KVM_GET_REGS, &r);
    if (rc < 0)
        return (int)rc;
    if (v->sync_regs) {
        v->run->s.regs.regs = r;
        v->regs_in_run = 1;
    }
    memcpy(out, &r, sizeof(*out));
    return 0;
}

int pyhv_vcpu_set_regs(struct pyhv_vcpu *v, const struct pyhv_regs *in)
{
    if (v->sync_regs) {
        /* the kernel loads these at the next KVM_RUN: no ioctl now */
        memcpy(&v->run->s.regs.regs, in, sizeof(*in));
        v->run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
        v->regs_in_run = 1;
        return 0;
    }
    struct kvm_regs r;
    memcpy(&r, in, sizeof(r));
    long rc = pyhv_ioctl(v->fd, KVM_SET_REGS, &r);
    return rc < 0 ? (int)rc : 0;
}

static void segment_export(const struct kvm_segment *k, struct pyhv_segment *p)
{
    *p = (struct pyhv_segment){
        .base = k->base, .limit = k->limit, .selector = k->selector, .type = k->type,
        .present = k->present, .dpl = k->dpl, .db = k->db, .s = k->s, .l = k->l, .g = k->g,
        .avl = k->avl, .unusable = k->unusable,
    };
}

static void segment_import(const struct pyhv_segment *p, struct kvm_segment *k)
{
    *k = (struct kvm_segment){
        .base = p->base, .limit = p->limit, .selector = p->selector, .type = p->type,
        .present = p->present, .dpl = p->dpl, .db = p->db, .s = p->s, .l = p->l, .g = p->g,
        .avl = p->avl, .unusable = p->unusable,
    };
}

int pyhv_vcpu_get_sregs(struct pyhv_vcpu *v, struct pyhv_sregs *out)
{
    struct kvm_sregs s;
    if (v->run->kvm_dirty_regs & KVM_SYNC_X86_SREGS) {
        s = v->run->s.regs.sregs;    /* a restore put them there for the next entry */
    } else {
        long rc = pyhv_ioctl(v->fd, KVM_GET_SREGS, &s);
        if (rc < 0)
            return (int)rc;
    }
    segment_export(&s.cs, &out->cs);
    segment_export(&s.ds, &out->ds);
    segment_export(&s.es, &out->es);
    segment_export(&s.fs, &out->fs);
    segment_export(&s.gs, &out->gs);
    segment_export(&s.ss, &out->ss);
    segment_export(&s.tr, &out->tr);
    segment_export(&s.ldt, &out->ldt);
    out->gdt = (struct pyhv_dtable){ s.gdt.base, s.gdt.limit };
    out->idt = (struct pyhv_dtable){ s.idt.base, s.idt.limit };
    out->cr0 = s.cr0;
    out->cr2 = s.cr2;
    out->cr3 = s.cr3;
    out->cr4 = s.cr4;
    out->cr8 = s.cr8;
    out->efer = s.efer;
    out->apic_base = s.apic_base;
    memcpy(out->interrupt_bitmap, s.interrupt_bitmap, sizeof(out->interrupt_bitmap));
    return 0;
}

int pyhv_vcpu_set_sregs(struct pyhv_vcpu *v, const struct pyhv_sregs *in)
{
    struct kvm_sregs s;
    memset(&s, 0, sizeof(s));
    segment_import(&in->cs, &s.cs);
    segment_import(&in->ds, &s.ds);
    segment_import(&in->es, &s.es);
    segment_import(&in->fs, &s.fs);
    segment_import(&in->gs, &s.gs);
    segment_import(&in->ss, &s.ss);
    segment_import(&in->tr, &s.tr);
    segment_import(&in->ldt, &s.ldt);
    s.gdt.base = in->gdt.base;
    s.gdt.limit = in->gdt.limit;
    s.idt.base = in->idt.base;
    s.idt.limit = in->idt.limit;
    s.cr0 = in->cr0;
    s.cr2 = in->cr2;
    s.cr3 = in->cr3;
    s.cr4 = in->cr4;
    s.cr8 = in->cr8;
    s.efer = in->efer;
    s.apic_base = in->apic_base;
    memcpy(s.interrupt_bitmap, in->interrupt_bitmap, sizeof(s.interrupt_bitmap));
    long rc = pyhv_ioctl(v->fd, KVM_SET_SREGS, &s);
    if (rc == 0)
        v->run->kvm_dirty_regs &= ~KVM_SYNC_X86_SREGS;   /* this write is newer */
    return rc < 0 ? (int)rc : 0;
}

/*
 * FPU state.  Where KVM keeps the guest FPU in XSAVE format, KVM_SET_FPU writes the legacy
 * area but leaves the XSAVE header's XSTATE_BV alone, so x87/SSE state set that way can be
 * dropped as "in its initial state" at the next entry.  With KVM_CAP_XSAVE, pyhv therefore
 * reads and writes the FXSAVE-layout legacy area of KVM_GET/SET_XSAVE and marks x87 and SSE
 * as present.
 */
#define FX_FCW 0
#define FX_FSW 2
#define FX_FTW 4
#define FX_FOP 6
#define FX_FIP 8
#define FX_FDP 16
#define FX_MXCSR 24
#define FX_ST0 32
#define FX_XMM0 160
#define XSAVE_HEADER_XSTATE_BV 512
#define XSTATE_X87_SSE 3ull

static void fpu_from_fxsave(const uint8_t *fx, struct pyhv_fpu *out)
{
    memcpy(&out->fcw, fx + FX_FCW, 2);
    memcpy(&out->fsw, fx + FX_FSW, 2);
    out->ftwx = fx[FX_FTW];
    memcpy(&out->last_opcode, fx + FX_FOP, 2);
    memcpy(&out->last_ip, fx + FX_FIP, 8);
    memcpy(&out->last_dp, fx + FX_FDP, 8);
    memcpy(&out->mxcsr, fx + FX_MXCSR, 4);
    memcpy(out->fpr, fx + FX_ST0, sizeof(out->fpr));
    memcpy(out->xmm, fx + FX_XMM0, sizeof(out->xmm));
}

static void fpu_to_fxsave(const struct pyhv_fpu *in, uint8_t *fx)
{
    memcpy(fx + FX_FCW, &in->fcw, 2);
    memcpy(fx + FX_FSW, &in->fsw, 2);
    fx[FX_FTW] = in->ftwx;
    memcpy(fx + FX_FOP, &in->last_opcode, 2);
    memcpy(fx + FX_FIP, &in->last_ip, 8);
    memcpy(fx + FX_FDP, &in->last_dp, 8);
    memcpy(fx + FX_MXCSR, &in->mxcsr, 4);
    memcpy(fx + FX_ST0, in->fpr, sizeof(in->fpr));
    memcpy(fx + FX_XMM0, in->xmm, sizeof(in->xmm));
}

int pyhv_vcpu_get_fpu(struct pyhv_vcpu *v, struct pyhv_fpu *out)
{
    if (v->has_xsave) {
        struct kvm_xsave x;
        long rc = pyhv_ioctl(v->fd, KVM_GET_XSAVE, &x);
        if (rc < 0)
            return (int)rc;
        fpu_from_fxsave((const uint8_t *)x.region, out);
        return 0;
    }
    struct kvm_fpu f;
    long rc = pyhv_ioctl(v->fd, KVM_GET_FPU, &f);
    if (rc < 0)
        return (int)rc;
    memcpy(out->fpr, f.fpr, sizeof(out->fpr));
    out->fcw = f.fcw;
    out->fsw = f.fsw;
    out->ftwx = f.ftwx;
    out->last_opcode = f.last_opcode;
    out->last_ip = f.last_ip;
    out->last_dp = f.last_dp;
    memcpy(out->xmm, f.xmm, sizeof(out->xmm));
    out->mxcsr = f.mxcsr;
    return 0;
}

int pyhv_vcpu_set_fpu(struct pyhv_vcpu *v, const struct pyhv_fpu *in)
{
    if (v->has_xsave) {
        struct kvm_xsave x;
        long rc = pyhv_ioctl(v->fd, KVM_GET_XSAVE, &x);
        if (rc < 0)
            return (int)rc;
        uint8_t *region = (uint8_t *)x.region;
        fpu_to_fxsave(in, region);
        uint64_t bv;
        memcpy(&bv, region + XSAVE_HEADER_XSTATE_BV, sizeof(bv));
        bv |= XSTATE_X87_SSE;
        memcpy(region + XSAVE_HEADER_XSTATE_BV, &bv, sizeof(bv));
        rc = pyhv_ioctl(v->fd, KVM_SET_XSAVE, &x);
        return rc < 0 ? (int)rc : 0;
    }
    struct kvm_fpu f;
    memset(&f, 0, sizeof(f));
    memcpy(f.fpr, in->fpr, sizeof(f.fpr));
    f.fcw = in->fcw;
    f.fsw = in->fsw;
    f.ftwx = in->ftwx;
    f.last_opcode = in->last_opcode;
    f.last_ip = in->last_ip;
    f.last_dp = in->last_dp;
    memcpy(f.xmm, in->xmm, sizeof(f.xmm));
    f.mxcsr = in->mxcsr;
    long rc = pyhv_ioctl(v->fd, KVM_SET_FPU, &f);
    return rc < 0 ? (int)rc : 0;
}

/* KVM_GET_MSRS / KVM_SET_MSRS return how many entries they processed; a short count means
   the entry after them was refused.  KVM takes at most PYHV_MSRS_PER_IOCTL entries a call, so
   longer lists go in chunks (through one stack buffer: no allocation per call). */
int pyhv_msrs_transfer(struct pyhv_vcpu *v, unsigned long request, const uint32_t *index,
                       uint64_t *value, uint32_t n, uint32_t *done_out)
{
    _Alignas(struct kvm_msrs) uint8_t buf[sizeof(struct kvm_msrs) +
                                          PYHV_MSRS_PER_IOCTL * sizeof(struct kvm_msr_entry)];
    struct kvm_msrs *m = (struct kvm_msrs *)buf;
    uint32_t done = 0;
    while (done < n) {
        uint32_t chunk = n - done < PYHV_MSRS_PER_IOCTL ? n - done : PYHV_MSRS_PER_IOCTL;
        memset(buf, 0, sizeof(struct kvm_msrs) + chunk * sizeof(struct kvm_msr_entry));
        m->nmsrs = chunk;
        for (uint32_t i = 0; i < chunk; i++) {
            m->entries[i].index = index[done + i];
            m->entries[i].data = request == KVM_SET_MSRS ? value[done + i] : 0;
        }
        long rc = pyhv_ioctl(v->fd, request, m);
        if (rc < 0) {
            *done_out = done;
            return (int)rc;
        }
        uint32_t ok = rc > (long)chunk ? chunk : (uint32_t)rc;   /* never past what we gave */
        if (request == KVM_GET_MSRS)
            for (uint32_t i = 0; i < ok; i++)
                value[done + i] = m->entries[i].data;
        done += ok;
        if (ok < chunk) {
            *done_out = done;
            return -EINVAL;    /* index[done] was refused */
        }
    }
    *done_out = done;
    return 0;
}

int pyhv_vcpu_get_msrs(struct pyhv_vcpu *v, const uint32_t *index, uint64_t *value, uint32_t n,
                       uint32_t *done_out)
{
    return pyhv_msrs_transfer(v, KVM_GET_MSRS, index, value, n, done_out);
}

int pyhv_vcpu_set_msrs(struct pyhv_vcpu *v, const uint32_t *index, const uint64_t *value,
                       uint32_t n, uint32_t *done_out)
{
    return pyhv_msrs_transfer(v, KVM_SET_MSRS, index, (uint64_t *)value, n, done_out);
}

int pyhv_vcpu_set_cpuid(struct pyhv_vcpu *v, const struct pyhv_cpuid_entry *entries, uint32_t n)
{
    if (n > 4096)
        return -E2BIG;
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
    if (!c)
        return -ENOMEM;
    c->nent = n;
    for (uint32_t i = 0; i < n; i++) {
        const struct pyhv_cpuid_entry *e = &entries[i];
        c->entries[i] = (struct kvm_cpuid_entry2){
            .function = e->function, .index = e->index, .flags = e->flags,
            .eax = e->eax, .ebx = e->ebx, .ecx = e->ecx, .edx = e->edx,
        };
    }
    long rc = pyhv_ioctl(v->fd, KVM_SET_CPUID2, c);
    free(c);
    return rc < 0 ? (int)rc : 0;
}

int pyhv_vcpu_get_cpuid(struct pyhv_vcpu *v, struct pyhv_cpuid_entry *out, uint32_t max,
                        uint32_t *count_out)
{
    return pyhv_cpuid_query(v->fd, KVM_GET_CPUID2, out, max, count_out);
}

int pyhv_push_dirty_regs(struct pyhv_vcpu *v)
{
    struct kvm_run *run = v->run;
    long r;
    if ((run->kvm_dirty_regs & KVM_SYNC_X86_REGS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_REGS, &run->s.regs.regs)) < 0)
        return (int)r;
    if ((run->kvm_dirty_regs & KVM_SYNC_X86_SREGS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_SREGS, &run->s.regs.sregs)) < 0)
        return (int)r;
    if ((run->kvm_dirty_regs & KVM_SYNC_X86_EVENTS) &&
        (r = pyhv_ioctl(v->fd, KVM_SET_VCPU_EVENTS, &run->s.regs.events)) < 0)
        return (int)r;
    run->kvm_dirty_regs = 0;    /* the run area still holds the same values: regs_in_run stays */
    return 0;
}

_Static_assert(sizeof(((struct kvm_guest_debug_arch *)0)->debugreg) == 8 * sizeof(uint64_t),
               "debugreg[8]");

int pyhv_vcpu_set_guest_debug(struct pyhv_vcpu *v, uint32_t control, const uint64_t *debugreg)
{
    /* KVM reads RIP and RFLAGS when single-stepping starts (it remembers where, and sets TF):
       registers still waiting in the run area for the next entry must reach it first */
    int rc = pyhv_push_dirty_regs(v);
    if (rc < 0)
        return rc;
    struct kvm_guest_debug dbg;
    memset(&dbg, 0, sizeof(dbg));
    dbg.control = control;
    if (debugreg)
        memcpy(dbg.arch.debugreg, debugreg, sizeof(dbg.arch.debugreg));
    long r = pyhv_ioctl(v->fd, KVM_SET_GUEST_DEBUG, &dbg);
    if (r < 0)
        return (int)r;
    /* with single-step, KVM has changed RFLAGS: the copy in the run area is stale */
    v->regs_in_run = 0;
    return 0;
}

int pyhv_vcpu_translate(struct pyhv_vcpu *v, uint64_t gva, uint64_t *gpa_out,
                        uint32_t *flags_out)
{
    /* the page tables KVM walks are the ones in its CR3/CR0/CR4/EFER: special registers a
       restore left in the run area for the next entry go first */
    int rc = pyhv_push_dirty_regs(v);
    if (rc < 0)
        return rc;
    struct kvm_translation t;
    memset(&t, 0, sizeof(t));
    t.linear_address = gva;
    long r = pyhv_ioctl(v->fd, KVM_TRANSLATE, &t);
    if (r < 0)
        return (int)r;
    *gpa_out = t.physical_address;
    *flags_out = (t.valid ? 1u : 0u) | (t.writeable ? 2u : 0u) | (t.usermode ? 4u : 0u);
    return 0;
}
