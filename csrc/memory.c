/* memory.c - host memory for guests and page-granular memory imaging: mappings, page bitmaps,
   page copies, residency, dropping zero pages, merging KVM's dirty log, and the one-call tracked
   restore of a slot.  (Snapshots use these; none of it is vCPU state.) */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u

int pyhv_memory_alloc(uint64_t size, void **addr_out)
{
    if (size == 0)
        return -EINVAL;
    /* NORESERVE: a "1G" guest costs nothing until it touches its pages */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    *addr_out = p;
    return 0;
}

int pyhv_memory_free(void *addr, uint64_t size)
{
    return munmap(addr, size) < 0 ? -errno : 0;
}

/* KVM_GET_DIRTY_LOG reads and resets the log: only the merge below calls it, so no reader
   loses what another has not seen (see pyhv_partition_dirty_merge's `user`). */
static int get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap)
{
    /* bitmap: one bit per page of the slot, rounded up to 64 bits (the caller sizes it) */
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };
    long r = pyhv_ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log);
    return r < 0 ? (int)r : 0;
}

int64_t pyhv_copy_pages(uint8_t *dst, const uint8_t *src, uint64_t *pages, uint64_t npages)
{
    int64_t copied = 0;
    for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
        uint64_t bits = pages[w];
        while (bits) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (i >= npages)
                break;
            memcpy(dst + i * PAGE, src + i * PAGE, PAGE);
            copied++;
        }
        pages[w] = 0;
    }
    return copied;
}

int pyhv_partition_dirty_merge(int vm_fd, uint32_t slot, uint64_t *pages, uint64_t *scratch,
                               uint64_t npages, uint64_t *user)
{
    uint64_t words = (npages + 63) / 64;
    memset(scratch, 0, words * sizeof(uint64_t));
    int rc = get_dirty_log(vm_fd, slot, scratch);
    if (rc < 0)
        return rc;
    for (uint64_t w = 0; w < words; w++) {
        if (pages)
            pages[w] |= scratch[w];
        if (user)
            user[w] |= scratch[w];
    }
    return 0;
}

/* Pages that hold data: present or swapped out, from /proc/self/pagemap (bits 63 and 62).
   mincore, the fallback, cannot see swapped-out anonymous pages. */
static int resident_from_pagemap(const void *addr, uint64_t npages, uint64_t *pages)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    enum { CHUNK = 8192 };
    uint64_t *entries = malloc(CHUNK * sizeof(uint64_t));
    int rc = entries ? 0 : -ENOMEM;
    uint64_t first_page = (uint64_t)(uintptr_t)addr / PAGE;
    for (uint64_t done = 0; rc == 0 && done < npages; done += CHUNK) {
        uint64_t n = npages - done < CHUNK ? npages - done : CHUNK;
        ssize_t got = pread(fd, entries, n * sizeof(uint64_t),
                            (off_t)((first_page + done) * sizeof(uint64_t)));
        if (got != (ssize_t)(n * sizeof(uint64_t))) {
            rc = got < 0 ? -errno : -EIO;
            break;
        }
        for (uint64_t i = 0; i < n; i++)
            if (entries[i] & (3ull << 62))
                pages[(done + i) / 64] |= 1ull << ((done + i) % 64);
    }
    free(entries);
    close(fd);
    return rc;
}

int pyhv_memory_resident(const void *addr, uint64_t npages, uint64_t *pages)
{
    if (resident_from_pagemap(addr, npages, pages) == 0)
        return 0;
    /* mincore in chunks: one status byte per page */
    enum { CHUNK = 65536 };
    unsigned char *vec = malloc(CHUNK);
    if (!vec)
        return -ENOMEM;
    int rc = 0;
    for (uint64_t first = 0; first < npages && rc == 0; first += CHUNK) {
        uint64_t n = npages - first < CHUNK ? npages - first : CHUNK;
        if (mincore((uint8_t *)addr + first * PAGE, n * PAGE, vec) < 0) {
            rc = -errno;
            break;
        }
        for (uint64_t i = 0; i < n; i++)
            if (vec[i] & 1)
                pages[(first + i) / 64] |= 1ull << ((first + i) % 64);
    }
    free(vec);
    return rc;
}

int64_t pyhv_pages_drop_zero(const uint8_t *addr, uint64_t *pages, uint64_t npages)
{
    int64_t kept = 0;
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t bit = 1ull << (i % 64);
        if (!(pages[i / 64] & bit))
            continue;
        const uint64_t *words = (const uint64_t *)(addr + i * PAGE);
        uint64_t any = 0;
        for (unsigned j = 0; j < PAGE / 8 && !any; j++)
            any |= words[j];
        if (any)
            kept++;
        else
            pages[i / 64] &= ~bit;
    }
    return kept;
}

void pyhv_bitmap_set(uint64_t *bitmap, uint64_t first, uint64_t count)
{
    for (uint64_t i = first; i < first + count; i++)
        bitmap[i / 64] |= 1ull << (i % 64);
}

void pyhv_bitmap_move(uint64_t *dst, uint64_t *src, uint64_t words)
{
    for (uint64_t w = 0; w < words; w++) {
        dst[w] |= src[w];
        src[w] = 0;
    }
}

int64_t pyhv_restore_slot(int vm_fd, uint32_t slot, int logging, uint8_t *memory,
                          const uint8_t *image, uint64_t *changed, uint64_t *scratch,
                          uint64_t *host_dirty, uint64_t *user, uint64_t npages)
{
    if (logging) {
        int rc = pyhv_partition_dirty_merge(vm_fd, slot, changed, scratch, npages, user);
        if (rc < 0)
            return rc;
    }
    pyhv_bitmap_move(changed, host_dirty, (npages + 63) / 64);
    return pyhv_copy_pages(memory, image, changed, npages);
}
