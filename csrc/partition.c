/* partition.c - VM fds: creation, x86 setup, memory slots, dirty logging. */
#include "internal.h"

#include <sys/ioctl.h>
#include <unistd.h>

int pyhv_partition_create(int kvm_fd, unsigned long type, int *vm_fd_out)
{
    long fd = pyhv_ioctl(kvm_fd, KVM_CREATE_VM, (void *)type);
    if (fd < 0)
        return (int)fd;
    *vm_fd_out = (int)fd;
    return 0;
}

int pyhv_partition_setup_x86(int vm_fd, uint64_t tss_addr, uint64_t identity_map_addr)
{
    /* Intel's real-mode emulation needs three pages for a TSS and one for an identity-mapped
       page table somewhere in guest-physical space that no slot uses. */
    long r = pyhv_ioctl(vm_fd, KVM_SET_TSS_ADDR, (void *)(unsigned long)tss_addr);
    if (r < 0)
        return (int)r;
    __u64 addr = identity_map_addr;
    r = pyhv_ioctl(vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &addr);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_set_slot(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa,
                            uint64_t size, void *host_addr)
{
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .flags = flags,
        .guest_phys_addr = gpa,
        .memory_size = size,   /* 0 deletes the slot */
        .userspace_addr = (uint64_t)(uintptr_t)host_addr,
    };
    long r = pyhv_ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap)
{
    /* bitmap: one bit per page of the slot, rounded up to 64 bits (the caller sizes it) */
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };
    long r = pyhv_ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log);
    return r < 0 ? (int)r : 0;
}
