/* exceptions.c - guest_install_handler() and the C half of the exception entry.

   pyhv's ring-0 stub reports a guest exception to the host (the vCPU halts in the stub).
   When the guest installed a handler for the vector, the host fills the vCPU's
   pyhv_ex_slots[] entry (vector, error code, CR2, the faulting RIP and the RDI it borrows),
   points RDI at it and returns from the exception to pyhv_exception_entry (start64.S or
   start32.S), which saves the interrupted registers, calls the handler here and resumes
   where struct ex_regs then says (pyhv/testing/exceptions.py is the host's half).  The same
   path serves every mode, ring 3 included. */
#include <pyhv/guest.h>

guest_handler_t pyhv_handlers[32];
struct pyhv_ex_slot pyhv_ex_slots[PYHV_MAX_CPUS];

void guest_install_handler(int vector, guest_handler_t fn)
{
    if (vector < 0 || vector >= 32)
        GUEST_FAIL("guest_install_handler: vector %d is not a CPU exception (0-31)", vector);
    __atomic_store_n(&pyhv_handlers[vector], fn, __ATOMIC_RELEASE);
}

void pyhv_exception_dispatch(struct ex_regs *regs);
void pyhv_exception_dispatch(struct ex_regs *regs)
{
    guest_handler_t fn = 0;
    if (regs->vector < 32)
        fn = __atomic_load_n(&pyhv_handlers[regs->vector], __ATOMIC_ACQUIRE);
    if (!fn)   /* removed since the host looked */
        pyhv_fail(0, 0, "exception %u at rip %#llx: its handler was removed",
                  (unsigned)regs->vector, (unsigned long long)regs->rip);
    fn(regs);
}
