/*
 * reference.c - the raw C KVM loops pyhv is measured against (benchmarks/run.py builds this
 * into a shared library and calls it through ctypes).  Plain ioctls, no pyhv code: what a
 * hand-written C VMM does for the same guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Run an already set-up vCPU (pyhv made it: same VM, same guest, same registers) until it
   halts: OUTs are taken, INs answered with 1.  Returns the number of IO exits, or -errno.
   Sync regs are switched off while it runs, as a raw loop would not ask for them. */
long ref_run_to_halt(int vcpu_fd, int mmap_size)
{
    struct kvm_run *run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    if (run == MAP_FAILED)
        return -errno;
    uint64_t valid = run->kvm_valid_regs;
    run->kvm_valid_regs = 0;
    long outs = 0;
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR)
                continue;
            outs = -errno;
            break;
        }
        if (run->exit_reason == KVM_EXIT_IO) {
            if (run->io.direction == KVM_EXIT_IO_IN) {
                uint8_t *data = (uint8_t *)run + run->io.data_offset;
                memset(data, 0, run->io.size);
                data[0] = 1;
            }
            outs++;
            continue;
        }
        if (run->exit_reason != KVM_EXIT_HLT)
            outs = -EPROTO;
        break;
    }
    run->kvm_valid_regs = valid;
    munmap(run, mmap_size);
    return outs;
}

/* Create a VM with `mem_size` bytes of RAM at GPA 0, put `code` at `entry`, create a vCPU in
   real mode at `entry`, run it to hlt, and destroy it all; `iterations` times.  Like any VMM
   (kvmtool, Firecracker) it gives the vCPU KVM's supported CPUID table.  Returns 0 or -errno. */
long ref_create_run_destroy(const uint8_t *code, size_t len, uint64_t entry, uint64_t mem_size,
                            int iterations)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return -errno;
    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    static struct {
        struct kvm_cpuid2 head;
        struct kvm_cpuid_entry2 entries[256];
    } cpuid = { .head.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) {
        close(kvm);
        return -errno;
    }
    long rc = 0;
    for (int i = 0; i < iterations && rc == 0; i++) {
        int vm = ioctl(kvm, KVM_CREATE_VM, 0);
        if (vm < 0) {
            rc = -errno;
            break;
        }
        uint64_t identity_map = 0xfffbc000ul;
        ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
        ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity_map);
        void *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        memcpy((uint8_t *)mem + entry, code, len);
        struct kvm_userspace_memory_region region = {
            .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size,
            .userspace_addr = (uint64_t)(uintptr_t)mem,
        };
        int vcpu = -1;
        struct kvm_run *run = MAP_FAILED;
        if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0 ||
            (vcpu = ioctl(vm, KVM_CREATE_VCPU, 0)) < 0 ||
            (run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0)) ==
                MAP_FAILED) {
            rc = -errno;
        } else {
            struct kvm_sregs sregs;
            struct kvm_regs regs = { .rip = entry, .rflags = 2 };
            ioctl(vcpu, KVM_GET_SREGS, &sregs);
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0 || ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0 ||
                ioctl(vcpu, KVM_SET_REGS, &regs) < 0 || ioctl(vcpu, KVM_RUN, 0) < 0)
                rc = -errno;
            else if (run->exit_reason != KVM_EXIT_HLT)
                rc = -EPROTO;
        }
        if (run != MAP_FAILED)
            munmap(run, mmap_size);
        if (vcpu >= 0)
            close(vcpu);
        close(vm);
        munmap(mem, mem_size);
    }
    close(kvm);
    return rc;
}

/* Keep `n` idle VMs alive, each with `mem_size` bytes of RAM at GPA 0, `code` at `entry` and
   one vCPU that ran it (real mode) to hlt: the raw C counterpart of 1,000 idle partitions.
   ref_free_idle() destroys them.  Returns 0 or -errno. */
static struct idle_vm {
    int vm, vcpu;
    void *mem;
    struct kvm_run *run;
} *idle;
static int idle_count, idle_mmap_size;
static uint64_t idle_mem_size;

long ref_free_idle(void)
{
    for (int i = 0; i < idle_count; i++) {
        munmap(idle[i].run, idle_mmap_size);
        close(idle[i].vcpu);
        close(idle[i].vm);
        munmap(idle[i].mem, idle_mem_size);
    }
    free(idle);
    idle = NULL;
    idle_count = 0;
    return 0;
}

long ref_make_idle(int n, const uint8_t *code, size_t len, uint64_t entry, uint64_t mem_size)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return -errno;
    idle_mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    idle_mem_size = mem_size;
    idle = calloc(n, sizeof(*idle));
    long rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        struct idle_vm *v = &idle[i];
        v->vm = ioctl(kvm, KVM_CREATE_VM, 0);
        if (v->vm < 0) {
            rc = -errno;
            break;
        }
        ioctl(v->vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
        v->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        memcpy((uint8_t *)v->mem + entry, code, len);
        struct kvm_userspace_memory_region region = {
            .slot = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)(uintptr_t)v->mem,
        };
        if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0 ||
            (v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0)) < 0) {
            rc = -errno;
            break;
        }
        v->run = mmap(NULL, idle_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
        struct kvm_sregs sregs;
        struct kvm_regs regs = { .rip = entry, .rflags = 2 };
        ioctl(v->vcpu, KVM_GET_SREGS, &sregs);
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        if (v->run == MAP_FAILED || ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0 ||
            ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0 || ioctl(v->vcpu, KVM_RUN, 0) < 0)
            rc = -errno;
        idle_count = i + 1;
    }
    close(kvm);
    if (rc < 0)
        ref_free_idle();
    return rc;
}

/* Nanoseconds one clock_gettime(CLOCK_MONOTONIC) takes here, averaged over `n` calls: pyhv's
   run loop reads the clock at least twice per run, so a host whose clock is slow to read
   (no vDSO for its clocksource: a system call each time) pays for it on every exit. */
double ref_clock_ns(int n)
{
    struct timespec a, b, t;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++)
        clock_gettime(CLOCK_MONOTONIC, &t);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n;
}
