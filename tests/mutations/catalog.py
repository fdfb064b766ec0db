"""The mutations ``python -m tests.mutations.run`` applies, one at a time: each is a small change
that breaks one feature, and names the tests that must then fail.

Adding one (do, with every feature): copy an entry, give it a new ``id``, say what it breaks
(``guards``), put the exact text to change (``old``, which must occur ``times`` times in
``path``; all of them are changed) and what it becomes (``new``), and the tests that must catch
it: pytest arguments, as narrow as still catches it (files, ``file::test`` names).  ``hosts``
limits it to the backends where the change is observable (others report it "n/a");
``bounded`` marks a change that makes something hang: it counts as caught when the tests fail
by their timeouts and the run ends.  ``tests/unit/test_mutations.py`` checks that every
``old`` is still in its file and every test still exists, so the list cannot go stale
silently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    id: str
    guards: str                    # the feature the change breaks
    path: str                      # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]         # pytest arguments that must fail with the change
    times: int = 1                 # how often ``old`` occurs in ``path`` (all are changed)
    hosts: tuple[str, ...] = ()    # backends where it applies (empty: every one)
    bounded: bool = False          # a hang, caught by the tests' timeouts
    timeout: int | None = None     # per-test timeout for its run (default: the runner's)

    @property
    def in_c(self) -> bool:
        return self.path.startswith("csrc/")


RECORDS = "tests/unit/test_exit_records.py"
EXITS = "tests/kvm/test_exits.py"
RUN_LOOP = "tests/kvm/test_run_loop.py"
FAST = "tests/kvm/test_fastpaths.py"
NATIVE = "tests/kvm/test_native.py"

MUTATIONS: tuple[Mutation, ...] = (
    # -- the C core: answers to exits ---------------------------------------------------------
    Mutation(
        "complete-in-seq", "a stale answer to an IN or MMIO read is refused (both C paths)",
        "csrc/run.c",
        "    if (seq != v->seq ||\n"
        "        (v->pending != PYHV_PENDING_IO_IN && v->pending != PYHV_PENDING_MMIO_READ))",
        "    if ((v->pending != PYHV_PENDING_IO_IN && v->pending != PYHV_PENDING_MMIO_READ))",
        (f"{RECORDS}::test_a_stale_answer_never_lands_in_the_next_in",
         f"{EXITS}::test_a_stale_answer_is_refused_when_the_next_exit_is_an_in_too"),
        times=2),
    Mutation(
        "complete-in-bytes-seq", "a stale answer given as bytes is refused",
        "csrc/run.c",
        "uint32_t len)\n{\n    if (seq != v->seq ||",
        "uint32_t len)\n{\n    if (",
        (f"{RECORDS}::test_a_stale_answer_never_lands_in_the_next_in",
         f"{RECORDS}::test_a_stale_answer_never_lands_in_the_next_mmio_read")),
    Mutation(
        "complete-in-once", "an IN answered once cannot be answered again",
        "csrc/run.c",
        "    memcpy(v->pending_data, data, len);\n"
        "    v->pending = PYHV_PENDING_NONE;     /* answered: a second answer is stale */",
        "    memcpy(v->pending_data, data, len);",
        ("tests/kvm/test_corners.py::test_a_second_complete_raises_instead_of_replacing_the_answer",)),
    Mutation(
        "in-reads-all-ones", "an IN nobody answers reads all ones (an empty ISA bus)",
        "csrc/exit_decode.c", "        memset(data, 0xff, len);", "        (void)len;",
        (f"{RECORDS}::test_the_largest_io_records_that_fit_decode",
         f"{EXITS}::test_unanswered_in_reads_all_ones")),
    Mutation(
        "msr-unanswered-gp", "an MSR exit nobody answers raises #GP in the guest",
        "csrc/exit_decode.c", "    run->msr.error = 1;", "    run->msr.error = 0;",
        (f"{RECORDS}::test_an_msr_record_presets_its_error_and_takes_the_answer",)),
    # -- the C core: what the kernel's record says, bounded before use ------------------------
    Mutation(
        "io-data-one-page", "an IO exit carries at most one page of data",
        "csrc/internal.h",
        "len > v->run_size - offset || len > PYHV_IO_DATA_MAX)", "len > v->run_size - offset)",
        (f"{RECORDS}::test_io_records_outside_the_run_area_are_bad_exits",)),
    Mutation(
        "io-data-in-run-area", "IO data lies inside the run area",
        "csrc/internal.h",
        "offset > v->run_size || len > v->run_size - offset ||", "offset > v->run_size ||",
        (f"{RECORDS}::test_io_records_outside_the_run_area_are_bad_exits",)),
    Mutation(
        "io-offset-in-run-area", "an IO data offset past the run area is refused",
        "csrc/internal.h",
        "offset > v->run_size || len > v->run_size - offset ||", "len > v->run_size - offset ||",
        (f"{RECORDS}::test_io_records_outside_the_run_area_are_bad_exits",)),
    Mutation(
        "io-offset-past-header", "IO data never overlaps the kvm_run header",
        "csrc/internal.h",
        "count == 0 || offset < sizeof(struct kvm_run) ||", "count == 0 ||",
        (f"{RECORDS}::test_io_records_outside_the_run_area_are_bad_exits",)),
    Mutation(
        "io-size-1-2-4", "port IO is 1, 2 or 4 bytes wide",
        "csrc/internal.h", "if ((size != 1 && size != 2 && size != 4) || count == 0 ||",
        "if (count == 0 ||",
        (f"{RECORDS}::test_io_records_outside_the_run_area_are_bad_exits",)),
    Mutation(
        "mmio-len-bounded", "an MMIO exit carries at most 8 bytes",
        "csrc/exit_decode.c", "if (len == 0 || len > sizeof(run->mmio.data)) {",
        "if (len == 0) {",
        (f"{RECORDS}::test_mmio_records_of_impossible_length_are_bad_exits",)),
    Mutation(
        "exit-words-bounded", "internal-error and system-event data counts are bounded",
        "csrc/exit_decode.c", "    if (n > PYHV_EXIT_WORDS)\n        return -1;",
        "    if (0)\n        return -1;",
        (f"{RECORDS}::test_more_data_words_than_the_union_holds_is_a_bad_exit",)),
    Mutation(
        "msr-reason-bounded", "an MSR exit's reason is one of KVM's single bits",
        "csrc/exit_decode.c", "    if (why > 0xff) {", "    if (0) {",
        (f"{RECORDS}::test_an_msr_reason_beyond_a_byte_is_a_bad_exit",)),
    Mutation(
        "ring-indices-bounded", "coalesced-ring indices past the ring are refused",
        "csrc/fastpath.c",
        "        if (first >= v->ring_max || last >= v->ring_max)\n            return -EIO;",
        "", (f"{NATIVE}::test_ring_indices_past_the_ring_are_refused_not_followed",),
        timeout=30),
    Mutation(
        "ring-entry-len-bounded", "a coalesced-ring entry longer than 8 bytes is cut to 8",
        "csrc/fastpath.c",
        "uint32_t len = e->len <= sizeof(out[n].data) ? e->len : sizeof(out[n].data);",
        "uint32_t len = e->len;",
        (f"{NATIVE}::test_a_ring_entry_longer_than_its_data_is_cut_to_its_data",)),
    # -- the C core: fast paths ---------------------------------------------------------------
    Mutation(
        "buffered-half-full", "a buffered port past half full ends the run",
        "csrc/fastpath.c", "if (f->fill > PYHV_OUTPUT_BUFFER / 2) {\n            ex->reason",
        "if (f->fill > PYHV_OUTPUT_BUFFER) {\n            ex->reason",
        (f"{RECORDS}::test_a_buffered_port_past_half_full_ends_the_run",)),
    Mutation(
        "constant-every-element", "a constant port answers every element of a string IN",
        "csrc/fastpath.c", "for (uint32_t i = 0; i < len; i += ex->io_size)",
        "for (uint32_t i = 0; i < ex->io_size; i += ex->io_size)",
        (f"{RECORDS}::test_a_constant_port_answers_string_input_in_every_element",
         f"{FAST}::test_a_string_in_from_a_constant_port_gets_the_constant_in_every_element")),
    Mutation(
        "debug-exit-value", "a debug-exit port ends the run with the value written",
        "csrc/fastpath.c", "        ex->data[0] = ex->io_value;", "        ex->data[0] = 0;",
        (f"{RECORDS}::test_a_debug_exit_port_record_ends_the_run_with_its_value",
         f"{FAST}::test_serial_output_and_debug_exit_handled_in_c")),
    # -- the C core: stopping runs (these hang without the fix: caught by the timeouts) -------
    Mutation(
        "cancel-does-nothing", "cancel() and stop() end a run",
        "csrc/kick.c",
        "    atomic_store(&v->cancel_requested, 1);\n"
        "    /* catches a run about to enter the guest; the signal catches one already inside */\n"
        "    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);\n"
        "    kick_running(v);",
        "    (void)v;",
        (f"{RUN_LOOP}::test_stop_from_another_thread",
         f"{RUN_LOOP}::test_cancel_before_run_stops_the_next_run",
         "tests/kvm/test_concurrency.py::test_a_thousand_cancel_races_lose_no_exit"),
        bounded=True, timeout=20),
    Mutation(
        "deadline-ignored", "a run ends at its timeout",
        "csrc/run.c", "        if (v->deadline_ns && now >= v->deadline_ns) {",
        "        if (0 && v->deadline_ns && now >= v->deadline_ns) {",
        (f"{RUN_LOOP}::test_vcpu_run_timeout",), bounded=True, timeout=20),
    Mutation(
        "watchdog-never-kicks", "the watchdog kicks a run whose deadline has passed",
        "csrc/kick.c", "        v->wd_kicked = when;\n        kick_running(v);",
        "        v->wd_kicked = when;",
        (f"{RUN_LOOP}::test_vcpu_run_timeout",), bounded=True, timeout=20),
    # -- the C core: snapshots ----------------------------------------------------------------
    Mutation(
        "restore-ignores-guest-writes", "a tracked restore copies back the pages the guest wrote",
        "csrc/memory.c", "    if (logging) {\n        int rc = pyhv_partition_dirty_merge",
        "    if (logging && 0) {\n        int rc = pyhv_partition_dirty_merge",
        ("tests/kvm/test_snapshots.py::test_restore_brings_back_memory_the_guest_reads_again",)),
    # -- Python: exits and run loops ----------------------------------------------------------
    Mutation(
        "answer-the-current-exit", "an answer goes to the exit it was given for, or is refused",
        "pyhv/_native/vcpu.py", "rc = lib.pyhv_vcpu_complete_in_value(ptr, seq, value)",
        "rc = lib.pyhv_vcpu_complete_in_value(ptr, self.record.seq, value)",
        (f"{EXITS}::test_a_stale_answer_is_refused_when_the_next_exit_is_an_in_too",)),
    Mutation(
        "typed-string-out-whole", "a string OUT of many elements is one exit with all its data",
        "pyhv/_native/decode.py", "data = ffi.buffer(c.io_data, size * count)[:]",
        "data = ffi.buffer(c.io_data, size)[:]",
        (f"{EXITS}::test_a_string_out_of_many_elements_is_one_typed_exit",)),
    Mutation(
        "serve-string-out-each", "a handler sees every element of a string OUT",
        "pyhv/core/loop.py", "for i in range(0, size * count, size):",
        "for i in range(0, size, size):",
        (f"{RUN_LOOP}::test_a_string_out_of_many_elements_reaches_the_handler_element_by_"
         "element",)),
    Mutation(
        "serve-string-in-each", "a handler is asked for every element of a string IN",
        "pyhv/core/loop.py", "value = [h.read(port, size) for _ in range(count)]",
        "value = [h.read(port, size)] * count",
        (f"{RUN_LOOP}::test_a_string_in_of_many_elements_asks_the_handler_for_each",)),
    Mutation(
        "run-all-late-start", "run_all stops a vCPU that starts after another poisoned it",
        "pyhv/core/loop.py", "                if poisoned_before:\n                    raise",
        "                if not ended.is_set():\n                    raise",
        ("tests/kvm/test_concurrency.py::test_run_all_stops_a_vcpu_that_starts_after_another_"
         "poisoned_the_partition",)),
    Mutation(
        "tracked-restore-copies-nothing", "a tracked restore copies the changed pages back",
        "pyhv/core/memory.py",
        "        if tracked and self._changed is not None:\n            return self._vm",
        "        if tracked and self._changed is not None:\n            return 0\n"
        "            return self._vm",
        ("tests/kvm/test_snapshots.py::test_restore_brings_back_memory_the_guest_reads_again",)),
    # -- Python: devices and loaders ----------------------------------------------------------
    Mutation(
        "uart-thr-python-drops", "the UART transmits what reaches its Python THR path",
        "pyhv/devices/uart.py",
        "                else:\n                    self._emit(bytes([value]))",
        "                else:\n                    pass",
        ("tests/kvm/test_devices.py::test_uart_transmits_by_thre_interrupts_as_linux_8250_does",
         "tests/unit/test_devices.py::test_uart_transmits_through_the_fast_path_and_the_"
         "handler_alike")),
    Mutation(
        "memory-map-rom-as-ram", "ROM slots are not reported as RAM in the memory map",
        "pyhv/loaders/layout.py", "        if slot.readonly:\n            continue\n", "",
        ("tests/unit/test_loaders.py::test_the_memory_map_of_ram_rom_and_high_memory",
         "tests/kvm/test_loaders.py::test_multiboot_kernel_reads_its_info_structure")),
    # -- Python: hardening --------------------------------------------------------------------
    Mutation(
        "sanitized-keeps-vmx-svm", "a hardened guest's CPUID shows no VMX and no SVM",
        "pyhv/x86/cpuid.py", "        for function, register, bit in (VMX, SVM):",
        "        for function, register, bit in ():",
        ("tests/kvm/test_hardening.py::test_what_a_guest_is_shown_when_kvm_offers_vmx_and_svm",
         "tests/unit/test_x86_cpuid.py::test_sanitized_clears_vmx_and_svm_and_nothing_else")),
    Mutation(
        "hardened-cpuid-unfiltered", "a hardened partition's vCPUs get the filtered CPUID",
        "pyhv/core/vcpu.py", "default_cpuid(sanitized=machine.hardened)",
        "default_cpuid(sanitized=False)",
        ("tests/kvm/test_hardening.py",)),
    # -- Python: what the backend does, probed ------------------------------------------------
    Mutation(
        "port-io-probe-says-yes", "the port-IO probe reports an IOPL the backend ignores",
        "pyhv/core/probes.py", "        return False\n    raise HypervisorError",
        "        return True\n    raise HypervisorError",
        ("tests/kvm/test_user_mode.py::test_the_port_io_probe_says_what_an_iopl3_payload_meets",),
        hosts=("kvm_pvm",)),
    Mutation(
        "port-io-probe-says-no", "the port-IO probe reports an IOPL the backend honours",
        "pyhv/core/probes.py", "        return True\n    if isinstance(ex, GuestException)",
        "        return False\n    if isinstance(ex, GuestException)",
        ("tests/kvm/test_user_mode.py::test_the_port_io_probe_says_what_an_iopl3_payload_meets",),
        hosts=("kvm_intel", "kvm_amd")),
    Mutation(
        "allow-port-io-unchecked", "allow_port_io=True is refused where IOPL is ignored",
        "pyhv/partition.py", "            require_port_io_at_cpl3(self.hypervisor)",
        "            pass",
        ("tests/kvm/test_user_mode.py::test_allow_port_io_lets_the_payload_use_ports_or_says_it_"
         "cannot",), hosts=("kvm_pvm",)),
    Mutation(
        "unknown-backend-is-hardware", "an unknown backend is reported as unknown",
        "pyhv/core/hypervisor.py", '"loaded)", None)', '"loaded)", True)',
        ("tests/kvm/test_system.py::test_an_unknown_backend_is_neither_hardware_nor_software",)),
    Mutation(
        "doctor-verdict-fixed", "the doctor's CPL0 verdict follows the measured numbers",
        "pyhv/tools/doctor.py", "        if slower >= EMULATED_PAST:", "        if True:",
        ("tests/unit/test_doctor.py",)),
    # -- the C core: Ctrl-C and the run summary -------------------------------------------
    Mutation(
        "sigint-mark-unread", "a Ctrl-C that lands between two guest entries stops the run",
        "csrc/run.c", "        if (pyhv_tls_interrupted) {\n", "        if (0) {\n",
        (f"{NATIVE}::test_a_ctrl_c_python_saw_before_the_run_still_stops_it_first",)),
    Mutation(
        "sigint-not-chained", "pyhv's SIGINT handler stands in front of Python's",
        "csrc/kick.c", "            chain_sigint();\n", "",
        (f"{NATIVE}::test_a_ctrl_c_python_saw_before_the_run_still_stops_it_first",)),
    Mutation(
        "single-out-port-shift", "a single OUT's summary carries its port",
        "csrc/run.c", "(int)ex->io_port << PYHV_RUN_PORT_SHIFT",
        "(int)ex->io_port << (PYHV_RUN_PORT_SHIFT + 1)",
        (f"{NATIVE}::test_a_single_outs_summary_carries_its_port_size_and_rip", EXITS)),
    # -- Python: statuses and loaders -------------------------------------------------------
    Mutation(
        "unhandled-status-is-halt", "an exit pyhv could not handle gives status 4, not 0",
        "pyhv/exits.py", "    return STATUS_UNHANDLED\n", "    return STATUS_HALT\n",
        ("pyhv/exits.py",)),
    Mutation(
        "address-for-any-format", "address and mode are refused for images that say them",
        "pyhv/loaders/__init__.py", 'if chosen != "flat" and (address is not None',
        'if False and (address is not None',
        ("tests/kvm/test_loaders.py::test_address_and_mode_are_refused_where_the_image_"
         "says_them",)),
    # -- Python: stress tools -----------------------------------------------------------------
    Mutation(
        "fuzz-ignores-seed", "the fuzzer's cases follow its seed",
        "pyhv/tools/stress.py", 'random.Random(f"pyhv-fuzz:{seed}:{case}")',
        'random.Random(f"pyhv-fuzz:{case}")',
        ("tests/kvm/test_stress.py::test_fuzz_every_mode_is_contained_and_each_seed_"
         "reproducible",)),
)
