"""x86 knowledge as plain values: registers, CPUID tables, pyhv's setup region (GDT, IDT,
stubs, page tables) and the register state of each guest mode.

Nothing here talks to KVM: the modules compute bytes and dataclasses, and the layers above
write them into a vCPU or guest memory.
"""
