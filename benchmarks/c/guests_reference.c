/*
 * guests_reference.c - the raw C exits pyhv.testing's ucalls are measured against
 * (benchmarks/bench_guests.py builds it into a shared library and calls it through ctypes).
 * Plain ioctls on a vCPU pyhv set up: what a hand-written C loop pays for the same exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* Run the vCPU until it halts, taking every MMIO write (user-mode ucalls ring an MMIO
   doorbell) and every port OUT (ring-0 ucalls ring a port).  Returns the number of those
   exits, or -errno (-EPROTO for any other exit). */
long ref_doorbells_to_halt(int vcpu_fd, int mmap_size)
{
    struct kvm_run *run = mmap(0, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    if (run == MAP_FAILED)
        return -errno;
    uint64_t valid = run->kvm_valid_regs;
    run->kvm_valid_regs = 0;
    long rings = 0;
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR)
                continue;
            rings = -errno;
            break;
        }
        if ((run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write) ||
            (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT)) {
            rings++;
            continue;
        }
        if (run->exit_reason != KVM_EXIT_HLT)
            rings = -EPROTO;
        break;
    }
    run->kvm_valid_regs = valid;
    munmap(run, mmap_size);
    return rings;
}
