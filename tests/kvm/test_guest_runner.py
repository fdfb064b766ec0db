"""Guests written in C on the real /dev/kvm: the ucall channel, assertions, exceptions,
SMP, stepping through syncs, and guests that break the protocol."""

from __future__ import annotations

import threading

import pytest

import pyhv
from pyhv.testing import (
    Done,
    GuestAssertionError,
    GuestCrash,
    GuestExceptionError,
    GuestFailure,
    GuestProtocolError,
    GuestTimeout,
    GuestVM,
    Print,
    Sync,
    build_guest,
    run_guest,
)

from ..conftest import fd_count

MODES = ["user", "long", "protected"]


@pytest.mark.parametrize("mode", MODES)
def test_syncs_prints_and_done_come_back_in_order(kvm, mode):
    image = build_guest(c="""
void guest_main(int cpu)
{
    uint64_t answer = GUEST_SYNC(0x1122334455667788ull);
    GUEST_PRINTF("answer %llu on vCPU %d of %d\\n", (unsigned long long)answer, cpu,
                 guest_cpu_count());
    GUEST_SYNC(answer + 1);
    GUEST_SYNC(guest_memory_size());
    GUEST_DONE();
    GUEST_FAIL("not reached");
}
""", mode=mode)
    result = run_guest(image, timeout=30, memory="32M", answer=lambda s: 41 if s.value >> 60
                       else None)
    log = result.cpus[0]
    assert [type(e) for e in log.events] == [Sync, Print, Sync, Sync, Done]
    assert log.syncs == (0x1122334455667788, 42, 32 << 20)
    assert log.output == "answer 41 on vCPU 0 of 1\n" and result.output == log.output
    done = log.events[-1]
    assert done.file is not None and done.file.endswith("test_guest_runner.py")
    sync = log.events[0]
    assert sync.file == done.file and sync.line == done.line - 5
    assert result.done and result.events == log.events and result[0] is log


def test_prints_are_echoed_as_they_come_and_logged(kvm, caplog):
    image = build_guest(c="""
void guest_main(int cpu)
{
    GUEST_PRINTF("one\\n");
    GUEST_SYNC(1);
    GUEST_PRINTF("two\\n");
}
""")
    echoed = []
    caplog.set_level("INFO", logger="pyhv.testing")
    with GuestVM(image, echo=echoed.append) as vm:
        vm.run(timeout=10, answer=lambda s: echoed.append(f"sync {s.value}"))
    assert echoed == ["one\n", "sync 1", "two\n"]
    assert [r.getMessage() for r in caplog.records] == ["guest vCPU 0: one", "guest vCPU 0: two"]


def test_returning_from_guest_main_is_done(kvm):
    result = run_guest(build_guest(c="void guest_main(int cpu) { }"), timeout=10)
    assert result.cpus[0].events == (Done(0, None, 0),)


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_assertion_names_the_line_the_expression_and_both_values(kvm, mode):
    image = build_guest(c="""
void guest_main(int cpu)
{
    int8_t small = -3;
    GUEST_PRINTF("checking\\n");
    GUEST_ASSERT_EQ(small * 2, 6);
}
""", mode=mode)
    with pytest.raises(GuestAssertionError) as info:
        run_guest(image, timeout=30)
    err = info.value
    assert type(err) is GuestAssertionError and isinstance(err, AssertionError)
    assert err.file.endswith("test_guest_runner.py") and err.expression == "small * 2 == 6"
    assert err.values == (-6, 6) and err.cpu == 0 and err.output == "checking\n"
    with open(err.file) as f:
        assert "GUEST_ASSERT_EQ(small * 2, 6);" in f.readlines()[err.line - 1]
    assert "left:  -6 (-0x6)" in str(err) and "right: 6 (0x6)" in str(err)


def test_assertion_values_keep_their_type(kvm):
    image = build_guest(c="""
struct thing { int x; };
static struct thing one;
void guest_main(int cpu)
{
    switch ((int)GUEST_SYNC(0)) {
    case 1: { uint8_t u = 200; GUEST_ASSERT_EQ(u, 1); }
    case 2: { uint64_t big = ~0ull; GUEST_ASSERT_LT(big, 5); }
    case 3: { int64_t neg = -5; GUEST_ASSERT_GE(neg, 0); }
    case 4: { struct thing *p = &one; GUEST_ASSERT_EQ(p, NULL); }
    case 5: { double d = 1.5; GUEST_ASSERT_NE(d, 1.5); }
    case 6: { GUEST_ASSERT_MSG(cpu == 7, "cpu is %d, wanted %d", cpu, 7); }
    case 7: { GUEST_ASSERT(cpu > 3); }
    case 8: { GUEST_FAIL("a %s failure (%d)", "custom", 42); }
    }
}
""", mode="user")
    seen = {}
    for case in range(1, 9):
        with pytest.raises(GuestAssertionError) as info:
            run_guest(image, timeout=10, answer=lambda s, case=case: case)
        seen[case] = info.value
    assert seen[1].values == (200, 1)
    assert seen[2].values == (2**64 - 1, 5) and seen[2].expression == "big < 5"
    assert seen[3].values == (-5, 0)
    assert seen[4].values[0] == image.symbol("one") and seen[4].values[1] == 0
    assert seen[5].values == (1.5, 1.5)
    assert seen[6].values is None and seen[6].message == "cpu is 0, wanted 7"
    assert seen[6].expression == "cpu == 7" and "cpu is 0, wanted 7" in str(seen[6])
    assert seen[7].expression == "cpu > 3" and seen[7].message == ""
    assert type(seen[8]) is GuestFailure and seen[8].message == "a custom failure (42)"


def test_printf_formats_as_c_does(kvm):
    cases = [("%d|%i|%u", "-5, 7, 3000000000u"), ("%5d|%-5d|%05d", "42, 42, -42"),
             ("%x|%X|%#x|%08x|%#o|%o", "255, 255, 255, 255, 8, 0"),
             ("%lld|%llu|%llx", "-9223372036854775807ll - 1, 18446744073709551615ull, "
                                "0xdeadbeefcafeull"),
             ("%hhd|%hd|%hhu", "300, 70000, 257"),
             ("%s|%10s|%-6s|%.2s", '"a", "right", "l", "abc"'),
             ("%c%c|%%|%+d|% d", "'o', 'k', 5, 5"), ("%zu|%p", "(size_t)12, (void *)0x1000"),
             ("%*d|%.*s|%.3d", "4, 7, 2, \"xyz\", 5"), ("%s", "(const char *)0"),
             ("%q|%", "0")]
    body = "\n".join(f"    GUEST_PRINTF(\"{fmt}\\n\", {args});" for fmt, args in cases)
    result = run_guest(build_guest(c=f"void guest_main(int cpu)\n{{\n{body}\n}}\n",
                                   cflags="-Wno-format"), timeout=10)
    assert result.cpus[0].prints == (
        "-5|7|3000000000\n", "   42|42   |-0042\n", "ff|FF|0xff|000000ff|010|0\n",
        "-9223372036854775808|18446744073709551615|deadbeefcafe\n", "44|4464|1\n",
        "a|     right|l     |ab\n", "ok|%|+5| 5\n", "12|0x1000\n", "   7|xy|005\n", "(null)\n",
        "%q|%\n")


@pytest.mark.parametrize("mode", ["user", "long"])
def test_a_long_print_arrives_whole(kvm, mode):
    image = build_guest(c="""
void guest_main(int cpu)
{
    for (int i = 0; i < 3000; i++)
        GUEST_PRINTF("%c", 'a' + i % 26);
    char line[3001];
    for (int i = 0; i < 3000; i++)
        line[i] = 'A' + i % 26;
    line[3000] = 0;
    GUEST_PRINTF("%s|%d\\n", line, 7);
}
""", mode=mode)
    prints = run_guest(image, timeout=60).cpus[0].prints
    letters = "".join(chr(ord("A") + i % 26) for i in range(3000))
    assert len(prints) == 3001 and "".join(prints[:3000]) == letters.lower()
    assert prints[3000] == letters + "|7\n"          # 3 records, one print


@pytest.mark.parametrize("mode", MODES)
def test_exception_handlers_see_and_change_the_interrupted_state(kvm, mode):
    image = build_guest(c="""
static volatile uint64_t seen_vector, seen_rip, seen_rbx, seen_error;
static void skip_ud2(struct ex_regs *regs)
{
    seen_vector = regs->vector;
    seen_rip = regs->rip;
    seen_rbx = regs->rbx;
    regs->rip += 2;
    regs->rax = 0x1234;
}
static void on_gp(struct ex_regs *regs)
{
    seen_error = regs->error_code;
    regs->rip += 3;                    /* mov %ax, %ds: 8e d8 ... 2 bytes + prefix below */
}
void guest_main(int cpu)
{
    guest_install_handler(UD_VECTOR, skip_ud2);
    unsigned long rax, rbx = 0x5a5a;
    __asm__ __volatile__("1: ud2\\n" : "=a"(rax), "+b"(rbx) : "a"(7));
    extern char pyhv_exception_entry[];
    GUEST_ASSERT_EQ(seen_vector, UD_VECTOR);
    GUEST_ASSERT_EQ(rax, 0x1234);
    GUEST_ASSERT_EQ(seen_rbx, 0x5a5a);
    GUEST_ASSERT_EQ(rbx, 0x5a5a);
    GUEST_SYNC(seen_rip);
    /* the handler works again, and after removal the exception fails the test */
    __asm__ __volatile__("ud2" ::: "memory");
    guest_install_handler(UD_VECTOR, NULL);
    GUEST_SYNC(1);
    __asm__ __volatile__("ud2" ::: "memory");
}
""", mode=mode)
    syncs = []
    with pytest.raises(GuestExceptionError) as info:
        run_guest(image, timeout=30, answer=lambda s: syncs.append(s.value))
    err = info.value
    assert len(syncs) == 2 and image.function_at(syncs[0]) == "guest_main"
    assert err.vector == 6 and err.name == "#UD invalid opcode" and err.function == "guest_main"
    assert err.file.endswith("test_guest_runner.py") and err.rip != syncs[0]
    with open(err.file) as f:
        assert "ud2" in f.readlines()[err.line - 1]


@pytest.mark.parametrize("mode", ["user", "long"])
def test_page_faults_reach_their_handler_with_the_address(kvm, mode):
    image = build_guest(c="""
static volatile uint64_t cr2, error;
static void on_pf(struct ex_regs *regs)
{
    cr2 = regs->cr2;
    error = regs->error_code;
    regs->rip += 3;                                   /* movb %al, (%rdx) = 88 02 + 1 nop */
}
void guest_main(int cpu)
{
    guest_install_handler(PF_VECTOR, on_pf);
    __asm__ __volatile__("movb %%al, (%%rdx)\\n nop" :: "a"(1), "d"(0x5000000000ull));
    GUEST_SYNC(cr2);
    GUEST_SYNC(error);
}
""", mode=mode)
    result = run_guest(image, timeout=30)
    cr2, error = result.syncs
    assert cr2 == 0x5000000000
    assert error & 0b10 and bool(error & 0b100) == (mode == "user")    # a write, from ring 3?


@pytest.mark.parametrize("mode", ["user", "long"])
def test_a_fault_inside_the_library_is_reported_where_the_test_called_it(kvm, mode):
    image = build_guest(c="""
static void __attribute__((noinline)) copy(void *to, const void *from)
{
    memcpy(to, from, 64);
}
void guest_main(int cpu)
{
    copy((void *)0x7000000000ull, "source");
}
""", mode=mode)
    with pytest.raises(GuestExceptionError) as info:
        run_guest(image, timeout=30)
    err = info.value
    assert err.function == "memcpy" and err.vector == 14
    with open(__file__) as f:
        assert "memcpy(to, from, 64);" in f.readlines()[err.line - 1]      # the test's line
    names = [frame.function for frame in err.backtrace]
    assert names[:3] == ["memcpy", "copy", "guest_main"]
    assert err.backtrace[0].in_library and not err.backtrace[1].in_library
    assert "guest backtrace (innermost first):" in str(err)


def test_a_timeout_in_the_library_names_the_tests_call(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    guest_barrier();                     /* one vCPU of two never arrives */
    GUEST_SYNC(1);
}
void never(void) { }
""")
    with GuestVM(image, 1) as vm:
        vm.write("pyhv_guest_info", vm.read("pyhv_guest_info", 16) + (2).to_bytes(8, "little"))
        with pytest.raises(GuestTimeout, match="in guest_barrier") as info:
            vm.run(timeout=0.5)
    with open(__file__) as f:
        assert "guest_barrier();" in f.readlines()[info.value.line - 1]


def test_a_handler_that_faults_again_and_again_is_stopped(kvm):
    image = build_guest(c="""
static void worse(struct ex_regs *regs) { __asm__ __volatile__("ud2"); }
void guest_main(int cpu)
{
    guest_install_handler(UD_VECTOR, worse);
    __asm__ __volatile__("ud2");
}
""")
    with pytest.raises(GuestExceptionError, match="raised inside its own handler, 4 deep"):
        run_guest(image, timeout=30)


def test_unhandled_exceptions_say_what_and_where(kvm):
    user = build_guest(c="""
void guest_main(int cpu)
{
    volatile uint32_t *p = (uint32_t *)0x80000;   /* pyhv's setup region */
    GUEST_SYNC(*p);
}
""")
    with pytest.raises(GuestExceptionError, match="#PF page fault") as info:
        run_guest(user, timeout=10)
    assert info.value.cr2 == 0x80000 and "setup region" in str(info.value)
    privileged = build_guest(c="void guest_main(int cpu) { outb(0x80, 1); }")
    with pytest.raises(GuestExceptionError, match="(?s)#GP.*build it with mode='long'"):
        run_guest(privileged, timeout=10)


def test_ring_0_guests_may_use_ports_with_a_handler_on_the_partition(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    outb(0x80, 0x5a);
    GUEST_SYNC(inb(0x81));
    outb(0x90, 1);               /* nothing handles this one */
}
""", mode="long")
    seen = []
    with GuestVM(image) as vm:
        vm.partition.add_io_handler(range(0x80, 0x82), read=lambda p, s: 0x77,
                                    write=lambda p, s, v: seen.append((p, v)))
        with pytest.raises(GuestCrash, match="port IO to 0x90, which nothing handles") as info:
            vm.run(timeout=30)
    assert seen == [(0x80, 0x5A)] and info.value.exit.port == 0x90
    assert vm.result is None


def test_a_stray_hlt_is_a_crash_with_its_line(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    __asm__ __volatile__("cli; hlt");
}
""", mode="long")
    with pytest.raises(GuestCrash, match="executed hlt") as info:
        run_guest(image, timeout=30)
    assert info.value.file.endswith("test_guest_runner.py")


def test_a_guest_that_runs_too_long_times_out_with_its_location(kvm):
    image = build_guest(c="""
static volatile int forever = 1;
void guest_main(int cpu)
{
    GUEST_PRINTF("spinning\\n");
    while (forever)
        ;
}
""")
    with pytest.raises(GuestTimeout, match="still running after 0.3 s") as info:
        run_guest(image, timeout=0.3)
    err = info.value
    assert isinstance(err, TimeoutError) and err.output == "spinning\n"
    assert err.file.endswith("test_guest_runner.py")


@pytest.mark.parametrize("mode", ["user", "long"])
def test_smp_guests_each_enter_guest_main_with_their_index(kvm, mode):
    image = build_guest(c="""
static guest_spinlock_t lock = GUEST_SPINLOCK_INIT;
static uint64_t counter;
void guest_main(int cpu)
{
    GUEST_ASSERT_EQ(cpu, guest_cpu_id());
    for (int i = 0; i < 200; i++) {
        guest_spin_lock(&lock);
        counter++;
        guest_spin_unlock(&lock);
    }
    guest_barrier();
    GUEST_SYNC(READ_ONCE(counter));
    guest_barrier();
    GUEST_SYNC(cpu);
}
""", mode=mode)
    result = run_guest(image, cpus=3, timeout=120)
    assert [log.syncs for log in result.cpus] == [(600, 0), (600, 1), (600, 2)]
    assert result.done and sorted(result.syncs) == [0, 1, 2, 600, 600, 600]


def test_one_failing_vcpu_stops_the_others(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    if (cpu == 1)
        GUEST_ASSERT_EQ(cpu, 0);
    for (;;)
        cpu_relax();
}
""")
    with pytest.raises(GuestAssertionError) as info:
        run_guest(image, cpus=2, timeout=30)
    assert info.value.cpu == 1


def test_stepping_through_syncs_with_the_host(kvm):
    image = build_guest(c="""
uint64_t shared;
void guest_main(int cpu)
{
    uint64_t v = 1;
    for (int i = 0; i < 4; i++) {
        shared = v * 100;
        v = GUEST_SYNC(v);
    }
    GUEST_ASSERT_EQ(v, 16);
}
""")
    with GuestVM(image) as vm:
        seen = []
        for sync in vm.syncs(timeout=10):
            assert not sync.resumed
            assert vm.read_u64("shared") == sync.value * 100     # the guest holds still
            seen.append(sync.value)
            sync.reply(sync.value * 2)
        assert seen == [1, 2, 4, 8] and vm.result.done
        with pytest.raises(pyhv.StateError):
            sync.reply(1)                                       # the guest went on
        with pytest.raises(pyhv.StateError, match="runs once"):
            vm.run()


def test_smp_syncs_interleave_and_each_vcpu_waits_for_its_own_answer(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    uint64_t got = GUEST_SYNC(cpu);
    GUEST_ASSERT_EQ(got, cpu + 10);
    GUEST_SYNC(got);
}
""")
    answers = {}
    with GuestVM(image, 4) as vm:
        for sync in vm.syncs(timeout=60):
            if sync.value < 10:
                sync.reply(sync.value + 10)
            else:
                answers[sync.cpu] = sync.value
    assert answers == {0: 10, 1: 11, 2: 12, 3: 13}


def test_leaving_a_sync_loop_early_stops_the_guest_and_leaks_nothing(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    for (uint64_t i = 0;; i++)
        GUEST_SYNC(i);
}
""")
    GuestVM(image).close()                 # warm up: the first partition opens /dev/kvm
    fds, threads = fd_count(), threading.active_count()
    for cpus in (1, 2):
        with GuestVM(image, cpus) as vm:
            for sync in vm.syncs(timeout=30):
                if sync.value == 3:
                    break
            assert vm.result is not None and not vm.result.done     # what happened so far
    assert fd_count() == fds and threading.active_count() == threads
    with GuestVM(image) as vm:             # an exception in the loop body: the same
        with pytest.raises(KeyError):
            for sync in vm.syncs(timeout=30):
                raise KeyError(sync.value)
    assert threading.active_count() == threads


def test_a_failure_while_stepping_is_raised_in_the_loop(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    GUEST_ASSERT_EQ(GUEST_SYNC(1), 2);
}
""")
    with GuestVM(image) as vm:
        with pytest.raises(GuestAssertionError, match="GUEST_SYNC\\(1\\) == 2"):
            for sync in vm.syncs(timeout=10):
                sync.reply(3)


def test_bad_answers_and_arguments_are_refused(kvm):
    image = build_guest(c="void guest_main(int cpu) { GUEST_SYNC(0); }")
    with pytest.raises(pyhv.InvalidArgument, match="fits 64 bits"):
        run_guest(image, timeout=10, answer=lambda s: 1 << 64)
    with pytest.raises(pyhv.InvalidArgument, match="fits 64 bits"):
        run_guest(image, timeout=10, answer=lambda s: "1")
    assert run_guest(image, timeout=10, answer=lambda s: -1).done   # wraps, as C does
    with pytest.raises(pyhv.InvalidArgument, match="cpus must be 1..16"):
        GuestVM(image, 17)
    with pytest.raises(pyhv.InvalidArgument, match="not a GuestImage"):
        GuestVM("guest.elf")
    with pytest.raises(pyhv.InvalidArgument, match="not callable"):
        with GuestVM(image) as vm:
            vm.run(answer=5)
    vm = GuestVM(image)
    vm.close()
    with pytest.raises(pyhv.StateError, match="closed"):
        vm.run()


def test_boots_leave_no_descriptors_behind(kvm):
    image = build_guest(c="void guest_main(int cpu) { GUEST_SYNC(cpu); }")
    run_guest(image, timeout=10)
    before = fd_count()
    for cpus in (1, 3):
        run_guest(image, cpus, timeout=30)
        with pytest.raises(ZeroDivisionError):            # the host's own failure
            run_guest(image, cpus, timeout=30, answer=lambda s: 1 // 0)
    assert fd_count() == before


def test_a_stack_overflow_is_caught_at_the_next_ucall(kvm):
    image = build_guest(c="""
static uint64_t deep(int n)
{
    volatile uint64_t frame[512];               /* 4 KiB a level, all of it written */
    for (int i = 0; i < 512; i++)
        frame[i] = n;
    return n ? deep(n - 1) + frame[7] : 0;
}
void guest_main(int cpu)
{
    /* vCPU 0 needs 48 KiB: it writes below its stack, into .bss, never into the stack of
       vCPU 1 (above it), which goes on */
    GUEST_SYNC(deep(cpu == 0 ? 12 : 2));
}
""")
    with pytest.raises(GuestCrash, match="overflowed its 32 KiB stack") as info:
        run_guest(image, cpus=2, timeout=30)
    assert info.value.cpu == 0


# -- hostile guests: they break the protocol, the host stays whole ------------------------
def test_a_doorbell_with_another_vcpus_index_is_refused(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    mmio_write32(PYHV_UCALL_MMIO, 5);
}
""")
    with pytest.raises(GuestProtocolError, match="index 5"):
        run_guest(image, timeout=10)


def test_records_that_lie_about_their_length_or_command_are_refused(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    struct pyhv_ucall *u = &pyhv_ucalls[cpu];
    u->cmd = GUEST_SYNC(0);
    u->length = 1 << 30;
    mmio_write32(PYHV_UCALL_MMIO, cpu);
}
""")
    with pytest.raises(GuestProtocolError, match="bytes of text"):
        run_guest(image, timeout=10, answer=lambda s: 2)
    with pytest.raises(GuestProtocolError, match="unknown ucall command 99"):
        run_guest(image, timeout=10, answer=lambda s: 99)


def test_a_print_that_never_ends_is_refused(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    struct pyhv_ucall *u = &pyhv_ucalls[cpu];
    for (;;) {
        u->cmd = PYHV_UCALL_PRINT;
        u->value = 1;                              /* "more follows", forever */
        u->length = PYHV_UCALL_TEXT;
        mmio_write32(PYHV_UCALL_MMIO, cpu);
    }
}
""")
    with pytest.raises(GuestProtocolError, match="a print of more than 1 MiB"):
        run_guest(image, timeout=60)


def test_an_instruction_kvm_cannot_run_is_a_crash_that_says_so(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    __asm__ __volatile__("int3");          /* kvm_pvm's ring-0 emulator cannot run it */
}
""", mode="long")
    if pyhv.check().hardware:
        # hardware KVM delivers the #BP: it has no handler
        with pytest.raises(GuestExceptionError, match="#BP breakpoint"):
            run_guest(image, timeout=30)
        return
    with pytest.raises(GuestCrash, match="KVM could not run it.*emulator") as info:
        run_guest(image, timeout=30)
    assert isinstance(info.value.exit, pyhv.exits.InternalError)
    assert info.value.file.endswith("test_guest_runner.py")


def test_strings_outside_guest_memory_are_named_not_read(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    pyhv_sync(1, (const char *)0xfff00000, 3);
    pyhv_sync(2, (const char *)(uintptr_t)(guest_memory_size() - 3), 4);
}
""")
    result = run_guest(image, timeout=10, memory="8M")
    first, second = result.cpus[0].events[:2]
    assert first.file == "<string at 0xfff00000, outside guest memory>"
    assert second.file is not None and len(second.file) <= 3       # stops at the end of RAM


def test_a_guest_that_overwrites_its_info_cannot_change_the_hosts_view(kvm):
    image = build_guest(c="""
void guest_main(int cpu)
{
    pyhv_guest_info.cpus = 1000;
    pyhv_ucalls[cpu].spare = ~0ull;
    GUEST_SYNC(guest_cpu_count());
}
""")
    result = run_guest(image, timeout=10)
    assert result.syncs == (1000,) and len(result.cpus) == 1
