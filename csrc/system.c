/* system.c - the KVM system handle (/dev/kvm): open/close, API version, extensions, the vCPU
   mmap size, supported CPUID and the MSR index list. */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Bounds on what the kernel may hand back, so a count never sizes an unbounded allocation. */
#define PYHV_MAX_CPUID_ENTRIES 4096u
#define PYHV_MAX_MSR_INDICES 16384u

long pyhv_ioctl(int fd, unsigned long request, void *arg)
{
    long r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

int pyhv_system_open(const char *path, int *fd_out)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

int pyhv_close(int fd)
{
    return close(fd) < 0 ? -errno : 0;
}

int pyhv_system_api_version(int kvm_fd)
{
    return (int)pyhv_ioctl(kvm_fd, KVM_GET_API_VERSION, NULL);
}

int pyhv_check_extension(int fd, long capability)
{
    return (int)pyhv_ioctl(fd, KVM_CHECK_EXTENSION, (void *)capability);
}

int pyhv_system_vcpu_mmap_size(int kvm_fd)
{
    return (int)pyhv_ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, NULL);
}

static struct kvm_cpuid2 *cpuid_alloc(uint32_t n)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
    if (c)
        c->nent = n;
    return c;
}

static void cpuid_export(const struct kvm_cpuid2 *c, struct pyhv_cpuid_entry *out)
{
    for (uint32_t i = 0; i < c->nent; i++) {
        const struct kvm_cpuid_entry2 *e = &c->entries[i];
        out[i] = (struct pyhv_cpuid_entry){ e->function, e->index, e->flags,
                                            e->eax, e->ebx, e->ecx, e->edx };
    }
}

int pyhv_cpuid_query(int fd, unsigned long request, struct pyhv_cpuid_entry *out, uint32_t max,
                     uint32_t *count_out)
{
    if (max > PYHV_MAX_CPUID_ENTRIES)
        max = PYHV_MAX_CPUID_ENTRIES;
    struct kvm_cpuid2 *c = cpuid_alloc(max);
    if (!c)
        return -ENOMEM;
    long r = pyhv_ioctl(fd, request, c);
    if (r >= 0) {
        if (c->nent > max) {   /* never trust a count beyond the buffer we gave */
            r = -E2BIG;
        } else {
            cpuid_export(c, out);
            *count_out = c->nent;
            r = 0;
        }
    }
    free(c);
    return (int)r;
}

int pyhv_system_supported_cpuid(int kvm_fd, struct pyhv_cpuid_entry *out, uint32_t max,
                                uint32_t *count_out)
{
    return pyhv_cpuid_query(kvm_fd, KVM_GET_SUPPORTED_CPUID, out, max, count_out);
}

int pyhv_system_msr_index_list(int kvm_fd, uint32_t *out, uint32_t max, uint32_t *count_out)
{
    if (max > PYHV_MAX_MSR_INDICES)
        max = PYHV_MAX_MSR_INDICES;
    struct kvm_msr_list *l = calloc(1, sizeof(*l) + max * sizeof(uint32_t));
    if (!l)
        return -ENOMEM;
    l->nmsrs = max;
    long r = pyhv_ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l);
    if (r >= 0) {
        if (l->nmsrs > max) {
            r = -E2BIG;
        } else {
            memcpy(out, l->indices, l->nmsrs * sizeof(uint32_t));
            *count_out = l->nmsrs;
            r = 0;
        }
    }
    free(l);
    return (int)r;
}
