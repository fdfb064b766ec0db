/*
 * pyhv_core.h - everything the Python layer sees of the C core.
 *
 * The part between the "cdef" markers is read verbatim by csrc/ffi_build.py and handed to
 * cffi's cdef(), so it holds only plain declarations (no #include, no macros).  The kernel's
 * structures, kvm_run and its exit union above all, stay inside the .c files: Python gets the
 * small structs below, which the C code fills field by field.
 *
 * Every function returns 0 (or a non-negative count/value where it says so) on success and a
 * negative errno on failure; Python turns the latter into an exception (check_rc in
 * pyhv/errors.py).
 */
#ifndef PYHV_CORE_H
#define PYHV_CORE_H

#include <stdint.h>
#include <stddef.h>

/* cdef begin */

/* Why a vCPU run returned (struct pyhv_exit.reason). */
enum pyhv_exit_reason {
    PYHV_EXIT_NONE = 0,
    PYHV_EXIT_IO = 1,             /* port IO; io_in tells the direction */
    PYHV_EXIT_MMIO = 2,           /* access to a GPA with no writable RAM behind it */
    PYHV_EXIT_HALT = 3,
    PYHV_EXIT_SHUTDOWN = 4,       /* triple fault */
    PYHV_EXIT_INTERNAL_ERROR = 5,
    PYHV_EXIT_FAIL_ENTRY = 6,
    PYHV_EXIT_SYSTEM_EVENT = 7,
    PYHV_EXIT_DEBUG = 8,
    PYHV_EXIT_HYPERCALL = 9,
    PYHV_EXIT_CANCELED = 10,      /* pyhv_vcpu_cancel() stopped the run */
    PYHV_EXIT_TIMEOUT = 11,       /* the deadline given to pyhv_vcpu_run() passed */
    PYHV_EXIT_INTERRUPTED = 12,   /* a signal that is not pyhv's own: let Python handle it */
    PYHV_EXIT_UNKNOWN = 13,       /* a KVM exit pyhv does not decode; kvm_reason says which */
    PYHV_EXIT_BAD_EXIT = 14,      /* the kernel described an exit pyhv refuses to trust */
    PYHV_EXIT_DEBUG_EXIT = 15,    /* the guest wrote V to a debug-exit port: data[0] = V,
                                     data[1] = the port (Python makes (V << 1) | 1) */
    PYHV_EXIT_OUTPUT_FULL = 16,   /* a buffered port's buffer needs emptying; then run again */
    PYHV_EXIT_MSR = 17            /* a guest RDMSR/WRMSR for user space (msr_* fields); answer
                                     with pyhv_vcpu_complete_msr, unanswered it raises #GP */
};

/* Ports the C run loop completes by itself, without returning to Python. */
enum pyhv_port_kind {
    PYHV_PORT_NONE = 0,
    PYHV_PORT_BUFFERED = 1,       /* OUT: bytes collected, handed to Python in bulk */
    PYHV_PORT_CONSTANT = 2,       /* IN: answered with a fixed value (e.g. "transmitter ready") */
    PYHV_PORT_DEBUG_EXIT = 3      /* OUT of V: the run ends with exit code (V << 1) | 1 */
};

enum pyhv_limits {
    PYHV_MAX_FAST_PORTS = 16,
    PYHV_OUTPUT_BUFFER = 8192,    /* per buffered port; Python empties it past half full */
    PYHV_STAT_REASONS = 64
};

/* Per-vCPU counters, kept by the C run loop. */
struct pyhv_stats {
    uint64_t runs;                /* KVM_RUN calls */
    uint64_t exits_in_c;          /* exits completed by the C core (fast ports) */
    uint64_t exits_to_python;     /* runs that returned an exit to Python */
    uint64_t guest_ns;            /* time in the C run loop: KVM_RUN and C-completed exits */
    uint64_t io_in, io_out, mmio_read, mmio_write;
    uint64_t by_kvm_reason[64];   /* indexed by KVM_EXIT_* (reasons >= 63 count in [63]) */
    uint64_t msr_read, msr_write; /* PYHV_EXIT_MSR exits */
};

/* One write the kernel collected in its coalesced MMIO/PIO ring. */
struct pyhv_coalesced_write {
    uint64_t address;
    uint32_t len;
    uint32_t pio;
    uint8_t data[8];
};

/* One decoded exit.  Flat on purpose: the Python run loop reads a few fields per exit. */
struct pyhv_exit {
    uint32_t reason;          /* enum pyhv_exit_reason */
    uint32_t kvm_reason;      /* the raw KVM_EXIT_* value */
    uint64_t rip;             /* guest RIP after the exit, when rip_valid */
    uint32_t rip_valid;
    uint32_t seq;             /* counts runs of this vCPU; completions must name the latest */
    uint32_t output_pending;  /* a buffered port holds bytes for Python */
    uint32_t coalesced_pending; /* the kernel's coalesced ring holds writes for Python */

    /* PYHV_EXIT_IO: size*count bytes at io_data (inside the run area, checked) */
    uint16_t io_port;
    uint8_t io_size;          /* 1, 2 or 4 */
    uint8_t io_in;            /* 1 = IN (guest reads), 0 = OUT */
    uint32_t io_count;        /* > 1 for string IO (rep ins/outs) */
    uint8_t *io_data;
    uint32_t io_value;        /* OUT: the first element, zero-extended (saves Python a cast) */

    /* PYHV_EXIT_MMIO */
    uint64_t mmio_gpa;
    uint32_t mmio_len;        /* 1..8 */
    uint8_t mmio_write;
    uint8_t mmio_data[8];
    uint64_t mmio_value;      /* write: mmio_data as a little-endian number */

    /* INTERNAL_ERROR: suberror + data words; SYSTEM_EVENT: type + data words;
       FAIL_ENTRY: hardware reason + cpu; DEBUG: exception, pc, dr6, dr7;
       HYPERCALL: nr + args; UNKNOWN: hardware exit reason */
    uint32_t code;            /* suberror, event type, debug exception, ... */
    uint32_t ndata;           /* words valid in data[] (at most 16) */
    uint64_t data[16];

    /* PYHV_EXIT_MSR */
    uint32_t msr_index;
    uint8_t msr_write;        /* 1 = WRMSR */
    uint8_t msr_reason;       /* KVM_MSR_EXIT_REASON_*: why it reached user space */
    uint64_t msr_value;       /* WRMSR: the value the guest wrote */
};

struct pyhv_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct pyhv_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable;
};

struct pyhv_dtable {
    uint64_t base;
    uint16_t limit;
};

struct pyhv_sregs {
    struct pyhv_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct pyhv_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    uint64_t interrupt_bitmap[4];
};

struct pyhv_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw, fsw;
    uint8_t ftwx;
    uint16_t last_opcode;
    uint64_t last_ip, last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr;
};

struct pyhv_cpuid_entry {
    uint32_t function, index, flags;
    uint32_t eax, ebx, ecx, edx;
};

/* A vCPU's whole architectural state, as the kernel's own structures (opaque bytes to
   Python, stored in snapshots).  `present` says which parts the kernel provided. */
enum pyhv_state_parts {
    PYHV_STATE_VERSION = 1,
    PYHV_STATE_MAX_MSRS = 256,
    PYHV_HAS_XSAVE = 1, PYHV_HAS_XCRS = 2, PYHV_HAS_DEBUGREGS = 4, PYHV_HAS_EVENTS = 8,
    PYHV_HAS_MP_STATE = 16, PYHV_HAS_LAPIC = 32,
    PYHV_KVM_CAP_DEBUGREGS = 50        /* KVM_CAP_DEBUGREGS (state.c checks the value) */
};
struct pyhv_vcpu_state {
    uint32_t version;
    uint32_t present;
    uint8_t regs[144];                 /* struct kvm_regs */
    uint8_t sregs[312];                /* struct kvm_sregs */
    uint8_t fpu[416];                  /* struct kvm_fpu, where XSAVE is missing */
    uint8_t xsave[4096];               /* struct kvm_xsave */
    uint8_t xcrs[392];                 /* struct kvm_xcrs */
    uint8_t debugregs[128];            /* struct kvm_debugregs */
    uint8_t events[64];                /* struct kvm_vcpu_events */
    uint8_t lapic[1024];               /* struct kvm_lapic_state */
    uint32_t mp_state;
    uint32_t nmsrs;
    uint32_t msr_index[256];
    uint64_t msr_value[256];
};

/* Opaque: one per vCPU fd, owns the mmapped run area (a calloc'd one when detached). */
struct pyhv_vcpu;

/* ---- system.c: the KVM system handle (/dev/kvm) ---- */
int pyhv_system_open(const char *path, int *fd_out);   /* open(O_RDWR | O_CLOEXEC) */
int pyhv_close(int fd);                                 /* close any fd pyhv handed out */
int pyhv_system_api_version(int kvm_fd);                       /* >= 0: the version */
int pyhv_check_extension(int fd, long capability);              /* >= 0: the cap's value */
int pyhv_system_vcpu_mmap_size(int kvm_fd);                     /* >= 0: bytes */
/* KVM_GET_SUPPORTED_CPUID into out[max]; KVM_GET_MSR_INDEX_LIST likewise (-E2BIG: too small) */
int pyhv_system_supported_cpuid(int kvm_fd, struct pyhv_cpuid_entry *out, uint32_t max,
                                uint32_t *count_out);
int pyhv_system_msr_index_list(int kvm_fd, uint32_t *out, uint32_t max, uint32_t *count_out);

/* ---- partition.c: partitions (VM fds) ---- */
enum pyhv_partition_flags { PYHV_PARTITION_IRQCHIP = 1, PYHV_PARTITION_PIT = 2 };
enum pyhv_partition_stage { PYHV_STAGE_CREATE = 1, PYHV_STAGE_TSS = 2,
                            PYHV_STAGE_IDENTITY_MAP = 3, PYHV_STAGE_IRQCHIP = 4,
                            PYHV_STAGE_PIT = 5 };
/* KVM_CREATE_VM, TSS and identity-map addresses, then the in-kernel irqchip and PIT when asked;
   on failure closes the VM, sets *stage_out to the step that failed (0: flags refused, e.g.
   PIT without IRQCHIP, -EINVAL) and returns -errno */
int pyhv_partition_create_x86(int kvm_fd, uint32_t flags, uint64_t tss_addr,
                              uint64_t identity_map_addr, uint32_t *stage_out, int *vm_fd_out);
/* add, change (flags: KVM_MEM_*) or, with size 0, delete a memory slot over host_addr */
int pyhv_partition_set_slot(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa,
                            uint64_t size, void *host_addr);
/* map `size` bytes of fresh anonymous host memory (MAP_NORESERVE) and register it as `slot` at
   `gpa`; on failure nothing stays mapped */
int pyhv_partition_map_memory(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa,
                              uint64_t size, void **host_out);
/* delete the slot (when vm_fd >= 0) and unmap its host memory; if KVM refuses the deletion
   the memory stays mapped (the VM still uses it) */
int pyhv_partition_unmap_memory(int vm_fd, uint32_t slot, uint64_t gpa, void *host,
                                uint64_t size);
/* in-kernel interrupt controllers (made by create_x86): drive an IRQ line */
int pyhv_partition_irq_line(int vm_fd, uint32_t irq, int level);
/* chip state for snapshots: chip 0 = PIC master, 1 = PIC slave, 2 = IOAPIC (512 bytes each);
   the PIT as struct kvm_pit_state2 (112 bytes) */
int pyhv_partition_get_irqchip(int vm_fd, uint32_t chip, uint8_t *out512);
int pyhv_partition_set_irqchip(int vm_fd, uint32_t chip, const uint8_t *in512);
int pyhv_partition_get_pit(int vm_fd, uint8_t *out112);
int pyhv_partition_set_pit(int vm_fd, const uint8_t *in112);
/* install KVM's MSR filter: with default_allow, the sorted `indices` are denied (their
   RDMSR/WRMSR exit to user space when user-space MSR exits are on for
   KVM_MSR_EXIT_REASON_FILTER, else #GP); without it, only `indices` are allowed.  n == 0 with
   default_allow removes the filter.  Ranges are packed as KVM allows (bitmaps up to
   KVM_MSR_FILTER_MAX_BITMAP_SIZE bytes, at most KVM_MSR_FILTER_MAX_RANGES ranges: -E2BIG
   beyond); unsorted indices: -EINVAL */
int pyhv_partition_set_msr_filter(int vm_fd, int default_allow, const uint32_t *indices,
                                  uint32_t n);
/* KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) with a mask of KVM_MSR_EXIT_REASON_*: those
   RDMSR/WRMSR reach user space as PYHV_EXIT_MSR */
int pyhv_partition_enable_user_msr(int vm_fd, uint32_t reasons);
/* a zone whose guest writes the kernel queues in the coalesced ring instead of exiting */
int pyhv_partition_coalesced_zone(int vm_fd, uint64_t address, uint32_t size, int pio,
                                  int add);
/* an eventfd the kernel signals on guest writes to [address, +len) (optionally = datamatch) */
int pyhv_partition_ioeventfd(int vm_fd, uint64_t address, uint32_t len, int pio,
                             int match, uint64_t datamatch, int *fd_out);
int pyhv_partition_ioeventfd_remove(int vm_fd, uint64_t address, uint32_t len, int pio,
                                    int match, uint64_t datamatch, int fd);
int pyhv_eventfd_take(int fd, uint64_t *count_out);   /* 0 and count, or -EAGAIN if none */
/* KVM_SIGNAL_MSI (in-kernel irqchip): > 0 delivered, 0 blocked by the guest, or -errno */
int pyhv_partition_signal_msi(int vm_fd, uint64_t address, uint32_t data);
/* KVM_SET_GSI_ROUTING (in-kernel irqchip): the whole table, n routes of GSI gsi[i] to pin
   pin[i] of chip chip[i] (0 PIC master, 1 PIC slave, 2 IOAPIC; a GSI may have several); at
   most 1024 routes (-E2BIG), a pin outside its chip -EINVAL */
int pyhv_partition_set_gsi_routing(int vm_fd, const uint32_t *gsi, const uint32_t *chip,
                                   const uint32_t *pin, uint32_t n);
/* KVM_REINJECT_CONTROL (in-kernel PIT): whether PIT ticks the guest missed are reinjected */
int pyhv_partition_pit_reinject(int vm_fd, int reinject);
/* the in-kernel PICs (and with pit, the PIT) as PC firmware leaves them: vector bases, the
   IRQs of `unmasked` open, those of `level` level-triggered (ELCR), PIT channel 0 in mode 3
   at 18.2 Hz */
int pyhv_partition_firmware_chips(int vm_fd, uint8_t master_base, uint8_t slave_base,
                                  uint16_t unmasked, uint16_t level, int pit);

/* ---- vcpu.c: vCPUs and their registers ---- */
enum pyhv_vcpu_flags { PYHV_VCPU_IRQCHIP = 1 };   /* the VM has in-kernel irqchips */
/* what pyhv_vcpu_create applies to a new vCPU (in this order: CPUID, special registers, MSRs,
   registers); NULL pointers leave KVM's defaults */
struct pyhv_vcpu_init {
    uint32_t flags;                               /* PYHV_VCPU_* */
    const struct pyhv_cpuid_entry *cpuid; uint32_t ncpuid;   /* NULL: leave KVM's default */
    const struct pyhv_sregs *sregs;               /* NULL: leave the reset state */
    const struct pyhv_regs *regs;                 /* NULL: leave the reset state */
    const uint32_t *msr_index; const uint64_t *msr_value; uint32_t nmsrs;
};
/* create the vCPU, map its run area, and apply `init` (may be NULL); on failure nothing is
   left but the id, which KVM cannot free without the VM */
int pyhv_vcpu_create(int vm_fd, uint32_t id, uint32_t mmap_size,
                     const struct pyhv_vcpu_init *init, struct pyhv_vcpu **out);
void pyhv_vcpu_destroy(struct pyhv_vcpu *vcpu);             /* NULL is a no-op */
/* a vCPU with no kernel behind it: a run area of mmap_size bytes (calloc'd), fd -1.  Its runs
   never enter KVM: each run takes the record injected last (reported once), and a run with no
   record waiting (at its start, or after completing one in C) returns -ENODATA.  Every other
   vCPU call is safe on it (those that need the kernel return -EBADF) */
int pyhv_vcpu_create_detached(uint32_t mmap_size, struct pyhv_vcpu **out);
/* copy `len` bytes (a kvm_run record, at most the run area's size: -EMSGSIZE; its layout is
   PYHV_RUN_SIZE and the PYHV_RUN_OFF_* offsets, from csrc/ffi_build.py) to the start of
   the run area, to be reported by the next pyhv_vcpu_run as if KVM_RUN had returned it (works
   on real vCPUs too, for tests).  The fields user space owns (immediate_exit,
   request_interrupt_window, kvm_valid_regs/kvm_dirty_regs, the sync-register area) are kept;
   -EBUSY during a run or while an exit is still waiting; -EINVAL for a record that would reach
   a real vCPU's coalesced ring page (exit_decode.c) */
int pyhv_vcpu_inject_record(struct pyhv_vcpu *vcpu, const uint8_t *record, uint32_t len);
int pyhv_vcpu_fd(const struct pyhv_vcpu *vcpu);           /* -1 when detached */
/* tell the vCPU its VM has in-kernel interrupt controllers (its MP state then matters) */
void pyhv_vcpu_set_irqchip(struct pyhv_vcpu *vcpu, int present);
/* general registers: through the run area where KVM has sync regs (no ioctl), else ioctls */
int pyhv_vcpu_get_regs(struct pyhv_vcpu *vcpu, struct pyhv_regs *out);
int pyhv_vcpu_set_regs(struct pyhv_vcpu *vcpu, const struct pyhv_regs *in);
/* special registers: KVM_GET/SET_SREGS (get returns ones a restore left for the next entry) */
int pyhv_vcpu_get_sregs(struct pyhv_vcpu *vcpu, struct pyhv_sregs *out);
int pyhv_vcpu_set_sregs(struct pyhv_vcpu *vcpu, const struct pyhv_sregs *in);
/* x87/SSE state (through the XSAVE area where KVM has it) */
int pyhv_vcpu_get_fpu(struct pyhv_vcpu *vcpu, struct pyhv_fpu *out);
int pyhv_vcpu_set_fpu(struct pyhv_vcpu *vcpu, const struct pyhv_fpu *in);
/* MSRs, any number (in chunks KVM accepts): *done_out tells how many of the n were
   transferred before one was refused (-EINVAL) or an ioctl failed */
int pyhv_vcpu_get_msrs(struct pyhv_vcpu *vcpu, const uint32_t *index, uint64_t *value,
                       uint32_t n, uint32_t *done_out);
int pyhv_vcpu_set_msrs(struct pyhv_vcpu *vcpu, const uint32_t *index, const uint64_t *value,
                       uint32_t n, uint32_t *done_out);
/* KVM_SET_CPUID2 of n entries (at most 4096); KVM_GET_CPUID2 into out[max] */
int pyhv_vcpu_set_cpuid(struct pyhv_vcpu *vcpu, const struct pyhv_cpuid_entry *entries,
                        uint32_t n);
int pyhv_vcpu_get_cpuid(struct pyhv_vcpu *vcpu, struct pyhv_cpuid_entry *out, uint32_t max,
                        uint32_t *count_out);
/* KVM_SET_GUEST_DEBUG: control = KVM_GUESTDBG_* flags, debugreg[8] = DR0-DR7 (DR4/5 unused;
   NULL: all zero).  Debug events then end runs as PYHV_EXIT_DEBUG */
int pyhv_vcpu_set_guest_debug(struct pyhv_vcpu *vcpu, uint32_t control,
                              const uint64_t *debugreg);
/* KVM_TRANSLATE of a guest-virtual address: *gpa_out and *flags_out (bit 0 valid, 1 writeable,
   2 usermode, as KVM reports them: its x86 code always says writeable and never usermode) */
int pyhv_vcpu_translate(struct pyhv_vcpu *vcpu, uint64_t gva, uint64_t *gpa_out,
                        uint32_t *flags_out);

/* ---- fastpath.c: exits completed in C, output buffers, the coalesced ring, counters ---- */
/* C fast paths: kind PYHV_PORT_NONE removes the port */
int pyhv_vcpu_set_fast_port(struct pyhv_vcpu *vcpu, uint16_t port, uint32_t kind,
                            uint32_t value);
/* switch a fast port off (its exits go to Python) or on again; safe from any thread */
int pyhv_vcpu_enable_fast_port(struct pyhv_vcpu *vcpu, uint16_t port, int enabled);
/* move what a buffered port collected into out (at most max bytes); returns the count */
int pyhv_vcpu_take_output(struct pyhv_vcpu *vcpu, uint16_t port, uint8_t *out, uint32_t max);
/* move queued coalesced writes into out; returns the count */
int pyhv_vcpu_drain_coalesced(struct pyhv_vcpu *vcpu, struct pyhv_coalesced_write *out,
                              uint32_t max);
int pyhv_vcpu_get_stats(struct pyhv_vcpu *vcpu, struct pyhv_stats *out);   /* a copy */
void pyhv_vcpu_reset_stats(struct pyhv_vcpu *vcpu);                        /* all zero */

/* ---- vcpu_state.c: a vCPU's whole state ---- */
/* whole-state save and load; save first completes a pending IN/MMIO read (KVM_RUN with
   immediate_exit), load first discards one, so neither straddles an exit.  Save returns
   -EBUSY when an exit Python has not seen is pending.  `optional`: which of PYHV_HAS_XCRS and
   PYHV_HAS_DEBUGREGS the backend offers (its capabilities), so only those are asked for */
int pyhv_vcpu_save_state(struct pyhv_vcpu *vcpu, const uint32_t *msr_index, uint32_t nmsrs,
                         uint32_t optional, struct pyhv_vcpu_state *out);
int pyhv_vcpu_load_state(struct pyhv_vcpu *vcpu, const struct pyhv_vcpu_state *in);
/* finish the instruction an unanswered exit left the vCPU inside (reads get all ones), so
   that state can be loaded: 1 when guest code ran (it may have written memory), 0 when
   nothing was pending, or -errno */
int pyhv_vcpu_discard_pending(struct pyhv_vcpu *vcpu);
/* which of these MSRs KVM lets this vCPU read and write back (their current values, in a
   few bulk calls): their indices go to ok (returns the count, or -errno) */
int pyhv_vcpu_restorable_msrs(struct pyhv_vcpu *vcpu, const uint32_t *msr_index, uint32_t n,
                            uint32_t *ok);

/* ---- memory.c: host memory and page-granular memory images ---- */
/* guest memory: anonymous, lazily backed (MAP_NORESERVE) host mappings */
int pyhv_memory_alloc(uint64_t size, void **addr_out);
int pyhv_memory_free(void *addr, uint64_t size);

/* memory images: copy the pages whose bit is set in `pages` (then clear the bits); returns
   how many were copied */
int64_t pyhv_copy_pages(uint8_t *dst, const uint8_t *src, uint64_t *pages, uint64_t npages);
/* accumulate KVM's dirty log of a slot (reading it resets it) into `pages` and into `user`,
   either may be NULL (scratch: a bitmap of the same size).  `user` keeps the log for
   Partition.dirty_pages() of dirty_log=True slots, so other readers do not lose it */
int pyhv_partition_dirty_merge(int vm_fd, uint32_t slot, uint64_t *pages, uint64_t *scratch,
                               uint64_t npages, uint64_t *user);
/* set bit i of `pages` for each resident host page of [addr, addr + npages pages) */
int pyhv_memory_resident(const void *addr, uint64_t npages, uint64_t *pages);
/* the tracked restore of one slot in one call: fold KVM's dirty log (when `logging`) and the
   host-write bitmap into `changed`, copy those pages from `image` to `memory`, clear both
   bitmaps; the log also goes into `user` (may be NULL, see dirty_merge); returns the pages
   copied or -errno */
int64_t pyhv_restore_slot(int vm_fd, uint32_t slot, int logging, uint8_t *memory,
                          const uint8_t *image, uint64_t *changed, uint64_t *scratch,
                          uint64_t *host_dirty, uint64_t *user, uint64_t npages);
/* set `count` bits from bit `first` */
void pyhv_bitmap_set(uint64_t *bitmap, uint64_t first, uint64_t count);
/* OR `words` words of src into dst, then clear src */
void pyhv_bitmap_move(uint64_t *dst, uint64_t *src, uint64_t words);
/* clear the bits of pages that hold only zero bytes; returns how many remain */
int64_t pyhv_pages_drop_zero(const uint8_t *addr, uint64_t *pages, uint64_t npages);

/* ---- run.c: running and completing exits ---- */
/* running: -errno, or a summary of the exit: its reason | the PYHV_RUN_* flags that apply */
enum pyhv_run_flags {
    PYHV_RUN_BULK = 0x100,        /* output_pending or coalesced_pending is set */
    PYHV_RUN_SINGLE_OUT = 0x200,  /* an IO exit: an OUT of one element (io_count == 1) */
    /* with PYHV_RUN_SINGLE_OUT (and then only), the summary also carries the OUT itself, so
       Python's hottest path reads two fields of the record (rip, io_value) instead of six */
    PYHV_RUN_RIP_VALID = 0x400,   /* rip_valid */
    PYHV_RUN_SIZE_SHIFT = 11,     /* log2(io_size): 2 bits */
    PYHV_RUN_PORT_SHIFT = 13      /* io_port: 16 bits, to bit 28 (the summary stays positive) */
};
/* run until an exit Python must see; deadline_ns: absolute CLOCK_MONOTONIC time past which the
   run returns PYHV_EXIT_TIMEOUT (0 = none), enforced by pyhv's watchdog thread */
int pyhv_vcpu_run(struct pyhv_vcpu *vcpu, struct pyhv_exit *exit, uint64_t deadline_ns);
/* data for the IN / MMIO read of the latest exit (run `seq`, else -ESTALE); len must match it
   exactly (-EMSGSIZE) */
int pyhv_vcpu_complete_in(struct pyhv_vcpu *vcpu, uint32_t seq, const uint8_t *data,
                          uint32_t len);
/* the same for a single IN/read of at most 8 bytes, given as a number (little-endian) */
int pyhv_vcpu_complete_in_value(struct pyhv_vcpu *vcpu, uint32_t seq, uint64_t value);
/* answer the MSR exit of run `seq`: RDMSR gets `value`; error != 0 injects #GP instead
   (WRMSR: value ignored); -ESTALE unless seq is the latest run and an MSR exit is pending */
int pyhv_vcpu_complete_msr(struct pyhv_vcpu *vcpu, uint32_t seq, uint64_t value, int error);
/* what the latest exit still waits for: 0 nothing (answered, or none asked), 1 an IN,
   2 an MMIO read, 3 an MSR access (answered exits clear it: a second answer is -ESTALE) */
int pyhv_vcpu_pending(const struct pyhv_vcpu *vcpu);

/* ---- halt.c: a machine halted for good ---- */
/* A halt watch groups the vCPUs of one VM (with in-kernel irqchip, where HLT never reaches
   user space).  While every member is inside pyhv_vcpu_run, each looks at itself every
   interval_ns (at least 1 ms); once all are halted with interrupts off and nothing can wake
   them (or wait for a SIPI), a confirming round with all of them outside the guest decides,
   and every member's run returns PYHV_EXIT_HALT with exit code PYHV_HALT_FOR_GOOD.  The
   verdict holds until every member has left its run. */
enum pyhv_halt_codes { PYHV_HALT_FOR_GOOD = 1 };
struct pyhv_halt_watch;
int pyhv_halt_watch_create(int vm_fd, uint64_t interval_ns, struct pyhv_halt_watch **out);
/* drop the creator's reference: the watch lives on until its last member leaves */
void pyhv_halt_watch_destroy(struct pyhv_halt_watch *watch);
int pyhv_halt_watch_ended(struct pyhv_halt_watch *watch);     /* 1 while the verdict holds */
/* join a watch (NULL: leave the current one), between runs only (-EBUSY during one); a
   vCPU leaves it when destroyed */
int pyhv_vcpu_join_halt_watch(struct pyhv_vcpu *vcpu, struct pyhv_halt_watch *watch);

/* ---- kick.c: stopping runs from outside, deadlines ---- */
/* process-wide: install the kick signal handler (idempotent); returns the signal number.
   Deadlines and output flushes are kicked by a watchdog thread started on first need */
int pyhv_init(void);
/* from any thread: stop the current or the next run of this vCPU */
void pyhv_vcpu_cancel(struct pyhv_vcpu *vcpu);
/* forget a cancel that no run has consumed yet */
void pyhv_vcpu_clear_cancel(struct pyhv_vcpu *vcpu);
uint64_t pyhv_monotonic_ns(void);                    /* CLOCK_MONOTONIC, for deadlines */

/* cdef end */

#endif /* PYHV_CORE_H */
