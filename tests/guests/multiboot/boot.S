/* A multiboot (v1) test kernel's entry: the header, a stack, then kmain(magic, info).
   Built as an ELF by default; with -DAOUT_KLUDGE the header carries its own load addresses
   (flag bit 16) and the kernel is linked to a flat binary. */
#define MB_MAGIC 0x1BADB002
#ifdef AOUT_KLUDGE
#define MB_FLAGS 0x00010003      /* page-align modules, memory info, a.out kludge */
#else
#define MB_FLAGS 0x00000003      /* page-align modules, memory info */
#endif

    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    .long multiboot_header       /* header_addr */
    .long _load_start            /* load_addr */
    .long _load_end              /* load_end_addr */
    .long _bss_end               /* bss_end_addr */
    .long _start                 /* entry_addr */
#endif

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    push %ebx                    /* multiboot information */
    push %eax                    /* the boot loader's magic */
    call kmain
1:  hlt
    jmp 1b

    .bss
    .balign 16
    .space 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
