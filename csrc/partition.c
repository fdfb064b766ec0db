/* partition.c - the VM fd (a "partition"): creation with its x86 setup and interrupt
   controllers, memory slots, irqchip/PIT state, IRQ lines, the MSR filter, coalesced zones,
   ioeventfds and MSIs. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Intel's real-mode emulation needs three pages for a TSS and one for an identity-mapped page
   table somewhere in guest-physical space that no slot uses; AMD ignores both. */
static long setup_x86(int vm_fd, uint64_t tss_addr, uint64_t identity_map_addr, uint32_t *stage)
{
    *stage = PYHV_STAGE_TSS;
    long r = pyhv_ioctl(vm_fd, KVM_SET_TSS_ADDR, (void *)(unsigned long)tss_addr);
    if (r < 0)
        return r;
    *stage = PYHV_STAGE_IDENTITY_MAP;
    __u64 addr = identity_map_addr;
    return pyhv_ioctl(vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &addr);
}

int pyhv_partition_create_x86(int kvm_fd, uint32_t flags, uint64_t tss_addr,
                              uint64_t identity_map_addr, uint32_t *stage_out, int *vm_fd_out)
{
    uint32_t stage = 0;
    long r = -EINVAL;
    /* KVM_CREATE_PIT2 needs the in-kernel PIC: refuse before making anything */
    if ((flags & ~(uint32_t)(PYHV_PARTITION_IRQCHIP | PYHV_PARTITION_PIT)) ||
        ((flags & PYHV_PARTITION_PIT) && !(flags & PYHV_PARTITION_IRQCHIP)))
        goto out;
    stage = PYHV_STAGE_CREATE;
    long fd = pyhv_ioctl(kvm_fd, KVM_CREATE_VM, (void *)0ul);   /* type 0: the default VM */
    if (fd < 0) {
        r = fd;
        goto out;
    }
    if ((r = setup_x86((int)fd, tss_addr, identity_map_addr, &stage)) < 0)
        goto fail;
    if (flags & PYHV_PARTITION_IRQCHIP) {
        /* PIC, IOAPIC, and a LAPIC for each vCPU made from now on: it must precede them */
        stage = PYHV_STAGE_IRQCHIP;
        if ((r = pyhv_ioctl((int)fd, KVM_CREATE_IRQCHIP, NULL)) < 0)
            goto fail;
    }
    if (flags & PYHV_PARTITION_PIT) {
        stage = PYHV_STAGE_PIT;
        struct kvm_pit_config config = { .flags = KVM_PIT_SPEAKER_DUMMY };
        if ((r = pyhv_ioctl((int)fd, KVM_CREATE_PIT2, &config)) < 0)
            goto fail;
    }
    *vm_fd_out = (int)fd;
    if (stage_out)
        *stage_out = 0;
    return 0;
fail:
    close((int)fd);
out:
    if (stage_out)
        *stage_out = stage;
    return (int)r;
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

int pyhv_partition_map_memory(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa,
                              uint64_t size, void **host_out)
{
    void *host;
    int rc = pyhv_memory_alloc(size, &host);
    if (rc < 0)
        return rc;
    rc = pyhv_partition_set_slot(vm_fd, slot, flags, gpa, size, host);
    if (rc < 0) {
        pyhv_memory_free(host, size);
        return rc;
    }
    *host_out = host;
    return 0;
}

int pyhv_partition_unmap_memory(int vm_fd, uint32_t slot, uint64_t gpa, void *host,
                                uint64_t size)
{
    if (vm_fd >= 0) {
        int rc = pyhv_partition_set_slot(vm_fd, slot, 0, gpa, 0, host);
        /* the VM still maps it: unmapping now would let whatever the host maps at that address
           next show through to the guest */
        if (rc < 0)
            return rc;
    }
    return pyhv_memory_free(host, size);
}

int pyhv_partition_coalesced_zone(int vm_fd, uint64_t address, uint32_t size, int pio, int add)
{
    struct kvm_coalesced_mmio_zone zone = { .addr = address, .size = size, .pio = pio ? 1 : 0 };
    long r = pyhv_ioctl(vm_fd, add ? KVM_REGISTER_COALESCED_MMIO : KVM_UNREGISTER_COALESCED_MMIO,
                        &zone);
    return r < 0 ? (int)r : 0;
}

static long ioeventfd_call(int vm_fd, uint64_t address, uint32_t len, int pio, int match,
                           uint64_t datamatch, int fd, int remove)
{
    struct kvm_ioeventfd io = {
        .datamatch = datamatch,
        .addr = address,
        .len = len,
        .fd = fd,
        .flags = (pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | (match ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) |
                 (remove ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0),
    };
    return pyhv_ioctl(vm_fd, KVM_IOEVENTFD, &io);
}

int pyhv_partition_ioeventfd(int vm_fd, uint64_t address, uint32_t len, int pio, int match,
                             uint64_t datamatch, int *fd_out)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    long r = ioeventfd_call(vm_fd, address, len, pio, match, datamatch, fd, 0);
    if (r < 0) {
        close(fd);
        return (int)r;
    }
    *fd_out = fd;
    return 0;
}

int pyhv_partition_ioeventfd_remove(int vm_fd, uint64_t address, uint32_t len, int pio,
                                    int match, uint64_t datamatch, int fd)
{
    long r = ioeventfd_call(vm_fd, address, len, pio, match, datamatch, fd, 1);
    close(fd);
    return r < 0 ? (int)r : 0;
}

int pyhv_eventfd_take(int fd, uint64_t *count_out)
{
    uint64_t count;
    ssize_t n = read(fd, &count, sizeof(count));
    if (n < 0)
        return -errno;
    if (n != sizeof(count))
        return -EIO;
    *count_out = count;
    return 0;
}

int pyhv_partition_irq_line(int vm_fd, uint32_t irq, int level)
{
    struct kvm_irq_level line = { .irq = irq, .level = level ? 1 : 0 };
    long r = pyhv_ioctl(vm_fd, KVM_IRQ_LINE, &line);
    return r < 0 ? (int)r : 0;
}

_Static_assert(sizeof(((struct kvm_irqchip *)0)->chip) == 512, "irqchip union size");
_Static_assert(sizeof(struct kvm_pit_state2) == 112, "kvm_pit_state2 size");

int pyhv_partition_get_irqchip(int vm_fd, uint32_t chip, uint8_t *out512)
{
    struct kvm_irqchip c = { .chip_id = chip };
    long r = pyhv_ioctl(vm_fd, KVM_GET_IRQCHIP, &c);
    if (r < 0)
        return (int)r;
    memcpy(out512, &c.chip, 512);
    return 0;
}

int pyhv_partition_set_irqchip(int vm_fd, uint32_t chip, const uint8_t *in512)
{
    struct kvm_irqchip c = { .chip_id = chip };
    memcpy(&c.chip, in512, 512);
    long r = pyhv_ioctl(vm_fd, KVM_SET_IRQCHIP, &c);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_get_pit(int vm_fd, uint8_t *out112)
{
    long r = pyhv_ioctl(vm_fd, KVM_GET_PIT2, out112);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_set_pit(int vm_fd, const uint8_t *in112)
{
    long r = pyhv_ioctl(vm_fd, KVM_SET_PIT2, (void *)in112);
    return r < 0 ? (int)r : 0;
}

/* KVM's MSR filter: ranges of (base, nmsrs, bitmap), checked in order; an MSR in a range takes
   its bit (1 = KVM handles it, 0 = denied: #GP, or an exit to user space when user-space MSR
   exits are on for KVM_MSR_EXIT_REASON_FILTER), any other the default.  The sorted indices
   are packed into as few ranges as the kernel's bounds allow: a range spans at most
   KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8 indices from its first, and there are at most
   KVM_MSR_FILTER_MAX_RANGES of them. */
int pyhv_partition_set_msr_filter(int vm_fd, int default_allow, const uint32_t *indices,
                                  uint32_t n)
{
    enum { SPAN = KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8 };
    struct kvm_msr_filter filter;
    memset(&filter, 0, sizeof(filter));
    filter.flags = default_allow ? KVM_MSR_FILTER_DEFAULT_ALLOW : KVM_MSR_FILTER_DEFAULT_DENY;
    /* whole bitmaps, so the kernel's copy of BITS_TO_LONGS(nmsrs) longs stays inside them */
    uint8_t (*bitmaps)[KVM_MSR_FILTER_MAX_BITMAP_SIZE] =
        calloc(KVM_MSR_FILTER_MAX_RANGES, KVM_MSR_FILTER_MAX_BITMAP_SIZE);
    if (!bitmaps)
        return -ENOMEM;
    uint32_t ranges = 0;
    long rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct kvm_msr_filter_range *r = ranges ? &filter.ranges[ranges - 1] : NULL;
        if (i > 0 && indices[i] < indices[i - 1]) {
            rc = -EINVAL;
            goto out;
        }
        if (!r || indices[i] - r->base >= SPAN) {
            if (ranges == KVM_MSR_FILTER_MAX_RANGES) {
                rc = -E2BIG;
                goto out;
            }
            r = &filter.ranges[ranges];
            r->flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
            r->base = indices[i];
            r->bitmap = bitmaps[ranges];
            /* default allow: the range's other MSRs must stay allowed, so all bits start 1 */
            if (default_allow)
                memset(r->bitmap, 0xff, KVM_MSR_FILTER_MAX_BITMAP_SIZE);
            ranges++;
        }
        uint32_t bit = indices[i] - r->base;
        if (default_allow)
            r->bitmap[bit / 8] &= (uint8_t)~(1u << (bit % 8));
        else
            r->bitmap[bit / 8] |= (uint8_t)(1u << (bit % 8));
        if (bit + 1 > r->nmsrs)
            r->nmsrs = bit + 1;
    }
    /* with no ranges and default allow, KVM drops the filter */
    rc = pyhv_ioctl(vm_fd, KVM_X86_SET_MSR_FILTER, &filter);
out:
    free(bitmaps);
    return rc < 0 ? (int)rc : 0;
}

int pyhv_partition_enable_user_msr(int vm_fd, uint32_t reasons)
{
    struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_USER_SPACE_MSR, .args = { reasons } };
    long r = pyhv_ioctl(vm_fd, KVM_ENABLE_CAP, &cap);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_signal_msi(int vm_fd, uint64_t address, uint32_t data)
{
    /* the in-kernel LAPICs decode address and data as the bus would (destination, vector,
       delivery mode): INIT and SIPI messages work too */
    struct kvm_msi msi = {
        .address_lo = (uint32_t)address,
        .address_hi = (uint32_t)(address >> 32),
        .data = data,
    };
    return (int)pyhv_ioctl(vm_fd, KVM_SIGNAL_MSI, &msi);
}

/* KVM_SET_GSI_ROUTING replaces the whole table; pyhv routes GSIs to irqchip pins only (MSIs
   go by KVM_SIGNAL_MSI, which needs no route). */
#define PYHV_MAX_GSI_ROUTES 1024u

int pyhv_partition_set_gsi_routing(int vm_fd, const uint32_t *gsi, const uint32_t *chip,
                                   const uint32_t *pin, uint32_t n)
{
    if (n > PYHV_MAX_GSI_ROUTES)
        return -E2BIG;
    for (uint32_t i = 0; i < n; i++)
        if (chip[i] > KVM_IRQCHIP_IOAPIC || pin[i] >= (chip[i] == KVM_IRQCHIP_IOAPIC ?
                                                        KVM_IOAPIC_NUM_PINS : 8u))
            return -EINVAL;
    struct kvm_irq_routing *table = calloc(1, sizeof(*table) +
                                           n * sizeof(struct kvm_irq_routing_entry));
    if (!table)
        return -ENOMEM;
    table->nr = n;
    for (uint32_t i = 0; i < n; i++) {
        table->entries[i].gsi = gsi[i];
        table->entries[i].type = KVM_IRQ_ROUTING_IRQCHIP;
        table->entries[i].u.irqchip.irqchip = chip[i];
        table->entries[i].u.irqchip.pin = pin[i];
    }
    long r = pyhv_ioctl(vm_fd, KVM_SET_GSI_ROUTING, table);
    free(table);
    return r < 0 ? (int)r : 0;
}

int pyhv_partition_pit_reinject(int vm_fd, int reinject)
{
    /* QEMU's kvm-pit.lost_tick_policy: "delay" reinjects ticks the guest missed, "discard"
       drops them */
    struct kvm_reinject_control control;
    memset(&control, 0, sizeof(control));
    control.pit_reinject = reinject ? 1 : 0;
    long r = pyhv_ioctl(vm_fd, KVM_REINJECT_CONTROL, &control);
    return r < 0 ? (int)r : 0;
}

/* The PICs and PIT as PC firmware (SeaBIOS) leaves them before it boots a kernel: both PICs
   initialized (ICW1-4: edge, cascade on IRQ 2, 8086 mode) with vector bases master_base and
   slave_base, the IRQs of `unmasked` open, those of `level` level-triggered in the ELCR; and,
   with `pit`, PIT channel 0 counting 65536 in mode 3 (18.2 Hz), the BIOS tick. */
int pyhv_partition_firmware_chips(int vm_fd, uint8_t master_base, uint8_t slave_base,
                                  uint16_t unmasked, uint16_t level, int pit)
{
    for (uint32_t chip = KVM_IRQCHIP_PIC_MASTER; chip <= KVM_IRQCHIP_PIC_SLAVE; chip++) {
        struct kvm_irqchip state;
        memset(&state, 0, sizeof(state));
        state.chip_id = chip;
        long r = pyhv_ioctl(vm_fd, KVM_GET_IRQCHIP, &state);
        if (r < 0)
            return (int)r;
        struct kvm_pic_state *pic = &state.chip.pic;
        int slave = chip == KVM_IRQCHIP_PIC_SLAVE;
        pic->irq_base = slave ? slave_base : master_base;
        pic->imr = (uint8_t)~(slave ? unmasked >> 8 : unmasked);
        pic->init_state = 0;
        pic->init4 = 1;
        pic->auto_eoi = 0;
        pic->special_fully_nested_mode = 0;
        pic->read_reg_select = 0;
        pic->elcr = (uint8_t)((slave ? level >> 8 : level) & pic->elcr_mask);
        if ((r = pyhv_ioctl(vm_fd, KVM_SET_IRQCHIP, &state)) < 0)
            return (int)r;
    }
    if (!pit)
        return 0;
    struct kvm_pit_state2 timer;
    long r = pyhv_ioctl(vm_fd, KVM_GET_PIT2, &timer);
    if (r < 0)
        return (int)r;
    struct kvm_pit_channel_state *c0 = &timer.channels[0];
    c0->count = 0;                  /* 65536: 1193182 Hz / 65536 = 18.2 Hz */
    c0->mode = 3;
    c0->rw_mode = 3;                /* low byte, then high byte */
    c0->read_state = c0->write_state = 3;
    c0->bcd = 0;
    c0->gate = 1;
    c0->count_latched = c0->status_latched = 0;
    r = pyhv_ioctl(vm_fd, KVM_SET_PIT2, &timer);
    return r < 0 ? (int)r : 0;
}
