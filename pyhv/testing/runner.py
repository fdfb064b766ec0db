"""Running guests built by :func:`pyhv.testing.build_guest`: a partition with the image
loaded, one vCPU per guest CPU, and the host half of the ucall channel.

>>> from pyhv.testing import GuestVM, build_guest
>>> image = build_guest(c='''
... void guest_main(int cpu)
... {
...     uint64_t twice = GUEST_SYNC(21);
...     GUEST_PRINTF("got %llu\\\\n", (unsigned long long)twice);
...     GUEST_ASSERT_EQ(twice, 42);
... }
... ''')
>>> with GuestVM(image) as vm:
...     for sync in vm.syncs(timeout=10):      # the guest waits while the host looks
...         sync.reply(sync.value * 2)
...     vm.result.output, vm.result.syncs
('got 42\\n', (21,))

Each vCPU enters ``guest_main(cpu)``: pyhv creates every vCPU directly in the image's mode
with its index in RDI (no INIT/SIPI), and the start code gives it the stack of that index.
A ucall is one exit: port ``UCALL_PORT`` at ring 0, an MMIO write to ``UCALL_MMIO`` in user
mode (ring 3 cannot use ports on every KVM), carrying the vCPU's index; the record it
points at is in guest memory, read with bounds and checked against the vCPU that rang.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import exits, loaders
from ..core.buses import EndRun
from ..core.memory import parse_size
from ..errors import HypervisorError, InvalidArgument, StateError, Timeout
from ..partition import Partition
from . import layout
from .errors import GuestCrash, GuestProtocolError
from .exceptions import ExceptionEntry
from .image import GuestImage, SourceLine, first_in_test
from .results import CpuLog, Done, Event, GuestResult, Print, Sync, SyncAnswer
from .ucall import UcallChannel

__all__ = ["GuestDone", "GuestStopped", "GuestTimeout", "GuestVM", "run_guest"]

log = logging.getLogger("pyhv.testing")

MAX_PRINT = 1 << 20             # one GUEST_PRINTF, however many records it takes

class _Gate:
    """Where a vCPU thread waits while the caller of :meth:`GuestVM.syncs` holds its sync."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.abandoned = False

    def open(self, abandon: bool = False) -> None:
        self.abandoned = self.abandoned or abandon
        self.event.set()


@dataclass(frozen=True, slots=True, repr=False)
class GuestDone(exits.Exit):
    """The exit a vCPU's run ends on at ``GUEST_DONE`` (a clean end, for that vCPU only)."""

    clean_end: ClassVar[bool] = True

    cpu: int = 0


@dataclass(frozen=True, slots=True, repr=False)
class GuestStopped(exits.Exit):
    """The exit a run ends on when the guest failed (an assertion, an unhandled exception):
    the whole machine stops, and the failure is raised once every vCPU has stopped."""

    clean_end: ClassVar[bool] = True
    machine_end: ClassVar[bool] = True

    cpu: int = 0


class GuestTimeout(GuestCrash, TimeoutError):
    """A vCPU was still running when the run's time was up; ``rip`` says where."""

    kind = "guest timed out"


class _Output:
    """Where a guest's prints are shown as they come (besides the log)."""

    def __init__(self, echo: Any) -> None:
        if echo is None or echo is False:
            self.write: Callable[[str], Any] | None = None
        elif hasattr(echo, "write"):
            self.write = echo.write
        elif callable(echo):
            self.write = echo
        else:
            raise InvalidArgument(f"echo={echo!r}: give a text stream, a callable or None")


class GuestVM:
    """A partition running a :class:`GuestImage` on ``cpus`` vCPUs (1 to 16).

    ``partition`` is the :class:`pyhv.Partition`: add devices or handlers there before the
    run.  :meth:`run` runs every vCPU to ``GUEST_DONE`` answering syncs with ``answer``;
    :meth:`syncs` instead hands each sync to the caller, the guest waiting until the caller
    asks for the next.  A VM runs once; :meth:`close` it (or use ``with``).  Guest prints go
    to ``echo`` as they come (a text stream or a callable), to the ``pyhv.testing`` logger,
    and to the result.
    """

    def __init__(self, image: GuestImage, cpus: int = 1, *, memory: int | str = "64M",
                 echo: Any = None) -> None:
        if not isinstance(image, GuestImage):
            raise InvalidArgument(f"{image!r} is not a GuestImage (see build_guest)")
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not \
                1 <= cpus <= layout.MAX_CPUS:
            raise InvalidArgument(f"cpus must be 1..{layout.MAX_CPUS}, not {cpus!r}")
        size = parse_size(memory)
        self.image = image
        self._echo = _Output(echo)
        self.result: GuestResult | None = None
        self._events: list[Event] = []
        self._logs: list[list[Event]] = [[] for _ in range(cpus)]
        self._partial: list[list[str]] = [[] for _ in range(cpus)]   # a print in pieces
        self._threads: dict[int, int] = {}       # thread ident -> vCPU index
        self._on_sync: SyncAnswer = None
        self._ran = False
        self._runner: threading.Thread | None = None
        self._gates: list[_Gate] = []
        self._abandoned = False           # a syncs() loop left early: cancels are expected
        self._failures: list[BaseException] = []
        self.partition = Partition(memory=size)
        try:
            boot = loaders.load(self.partition, image.data, "elf", name=str(image.path))
            self._channel = UcallChannel(self.partition.memory, image, cpus)
            self._channel.write_info(cpus, size)
            self._exceptions = ExceptionEntry(image, self.partition.memory,
                                              self.partition.setup_base)
            self.vcpus = tuple(self.partition.create_vcpu(
                mode=image.mode, entry=boot.entry, exceptions=True) for _ in range(cpus))
            for i, vcpu in enumerate(self.vcpus):
                vcpu.write_registers({"rdi": i})
            part = self.partition
            part.add_io_handler(layout.UCALL_PORT, write=self._doorbell)
            part.add_mmio_handler(layout.UCALL_MMIO, 4, write=self._doorbell)
            part.set_exception_handler(self._exception)
        except BaseException:
            self.partition.close()
            raise

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop a run still going (a :meth:`syncs` loop left early), release the partition
        (idempotent)."""
        self._stop_runner()
        self.partition.close()

    def __enter__(self) -> GuestVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyhv.testing.GuestVM {self.image.path.name} {self.image.mode} mode, " \
               f"{len(self._logs)} vCPU(s){' closed' if self.partition.closed else ''}>"

    # -- guest memory by symbol -------------------------------------------------------------
    def address(self, where: str | int) -> int:
        return self.image.symbol(where) if isinstance(where, str) else where

    def read(self, where: str | int, size: int) -> bytes:
        """``size`` bytes at a guest symbol (its name) or address."""
        return self.partition.memory.read(self.address(where), size)

    def write(self, where: str | int, data: bytes) -> None:
        self.partition.memory.write(self.address(where), data)

    def read_u64(self, where: str | int) -> int:
        return self.partition.memory.read_u64(self.address(where))

    def read_u32(self, where: str | int) -> int:
        return self.partition.memory.read_u32(self.address(where))

    # -- running ------------------------------------------------------------------------------
    def run(self, timeout: float | None = 30.0, *, answer: SyncAnswer = None) -> GuestResult:
        """Run every vCPU until it reaches ``GUEST_DONE`` (or returns from ``guest_main``);
        each sync gets ``answer(sync)`` (an int, or None to keep ``sync.answer``, 0 unless
        ``answer`` called :meth:`Sync.reply`).  A failed guest assertion raises
        :class:`GuestAssertionError`, an unhandled guest exception
        :class:`GuestExceptionError`, anything else that stops a vCPU :class:`GuestCrash`
        (:class:`GuestTimeout` past ``timeout`` seconds)."""
        if answer is not None and not callable(answer):
            raise InvalidArgument(f"answer={answer!r} is not callable")
        self._claim()
        return self._execute(timeout, answer)

    def syncs(self, timeout: float | None = 30.0) -> Iterator[Sync]:
        """Run the guest, yielding each sync as it happens; the guest that made it waits
        until the next one is asked for (answer with :meth:`Sync.reply` meanwhile; guest
        memory holds still for the vCPU that waits).  When the loop ends, :attr:`result`
        holds the result; failures raise as :meth:`run` says.  Leaving the loop early stops
        the guest.  ``timeout`` counts the whole run, the time the caller holds a sync
        included."""
        self._claim()
        return self._stepping(timeout)

    def _claim(self) -> None:
        if self.partition.closed:
            raise StateError("this GuestVM is closed")
        if self._ran:
            raise StateError("a GuestVM runs once: boot the image again for another run")
        self._ran = True

    def _stepping(self, timeout: float | None) -> Iterator[Sync]:
        handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()
        lock = threading.Lock()

        def on_sync(sync: Sync) -> None:     # on a vCPU thread
            gate = _Gate()
            with lock:
                self._gates.append(gate)
            handoff.put((sync, gate))
            gate.event.wait()
            with lock:
                self._gates.remove(gate)
            if gate.abandoned:
                raise EndRun(exits.Canceled())

        def body() -> None:
            try:
                handoff.put(("end", self._execute(timeout, on_sync)))
            except BaseException as exc:
                handoff.put(("error", exc))

        self._runner = threading.Thread(target=body, name="pyhv-guest-run", daemon=True)
        self._runner.start()
        try:
            while True:
                first, second = handoff.get()
                if isinstance(first, Sync):
                    try:
                        yield first
                    except GeneratorExit:
                        self._abandoned = True
                        second.open(abandon=True)
                        raise
                    first.resumed = True         # a reply from now on is refused
                    second.open()
                    continue
                if first == "error":
                    raise second
                return
        finally:
            self._stop_runner()

    def _stop_runner(self) -> None:
        runner = self._runner
        if runner is None:
            return
        if runner.is_alive():
            self._abandoned = True
            if not self.partition.closed:
                self.partition.stop()
            while runner.is_alive():
                for gate in list(self._gates):
                    gate.open(abandon=True)
                runner.join(0.05)
        self._runner = None

    def _execute(self, timeout: float | None, on_sync: SyncAnswer) -> GuestResult:
        self._on_sync = on_sync
        part = self.partition
        started = time.perf_counter()
        try:
            results = [part.run(timeout)] if len(self.vcpus) == 1 else part.run_all(timeout)
        except Timeout as exc:
            raise self._timed_out(exc) from None
        finally:
            self._flush_partial()
        if self._failures:
            raise self._failures[0]
        elapsed = time.perf_counter() - started
        # the vCPU that went wrong first: the others were stopped because of it
        ends = sorted(enumerate(results), key=lambda r: isinstance(r[1].exit, exits.Canceled))
        for i, result in ends:
            self._check_end(i, result.exit)
        self.result = GuestResult(tuple(CpuLog(i, tuple(events))
                                        for i, events in enumerate(self._logs)),
                                  tuple(self._events), elapsed)
        return self.result

    def _check_end(self, cpu: int, final: exits.Exit) -> None:
        """Raise unless vCPU ``cpu``'s run ended at GUEST_DONE (or was stopped)."""
        if isinstance(final, (GuestDone, GuestStopped)):
            return
        if isinstance(final, exits.Canceled):
            if not self._abandoned:
                raise GuestCrash(cpu=cpu, reason="its run was canceled (Partition.stop())",
                                 exit=final, output=self._output(cpu))
            return
        frames = self._backtrace(cpu, final.rip)
        where = first_in_test(frames)
        software = not self.partition.hypervisor.info().hardware
        reason = _describe_end(final, self.image.mode, software)
        if not self._channel.stack_intact(cpu):
            reason += f"; it had also overflowed its {layout.STACK_SIZE >> 10} KiB stack"
        self._flush_partial(cpu)
        raise GuestCrash(cpu=cpu, reason=reason, exit=final,
                         file=where.file if where else None, line=where.line if where else 0,
                         output=self._output(cpu), backtrace=frames)

    def _backtrace(self, cpu: int, rip: int | None, regs: Any = None) -> tuple[
            SourceLine, ...]:
        """vCPU ``cpu``'s call chain at ``rip`` (from ``regs``, else its registers now)."""
        if rip is None:
            return ()
        try:
            if regs is None:
                regs = self.vcpus[cpu].read_registers()
            return self.image.backtrace(rip, regs.rbp, self.partition.memory.read, regs.rsp)
        except HypervisorError:          # a closed vCPU: no chain, still a report
            return ()

    def _timed_out(self, exc: Timeout) -> GuestTimeout:
        cpu = next((i for i, v in enumerate(self.vcpus) if v is exc.vcpu), 0)
        frames = self._backtrace(cpu, exc.regs.rip, exc.regs)
        where = first_in_test(frames)
        at = f" in {frames[0].function}()" if frames and frames[0].function else ""
        if not self._channel.stack_intact(cpu):
            at += f"; it had overflowed its {layout.STACK_SIZE >> 10} KiB stack"
        return GuestTimeout(cpu=cpu, reason=f"still running after {exc.timeout:g} s, at rip "
                                            f"{exc.regs.rip:#x}{at}", exit=None,
                            file=where.file if where else None, line=where.line if where else 0,
                            output=self._output(cpu), backtrace=frames)

    # -- the ucall channel ------------------------------------------------------------------
    def _current_cpu(self) -> int:
        """The index of the vCPU whose run is calling a handler on this thread."""
        ident = threading.get_ident()
        cpu = self._threads.get(ident)
        if cpu is not None and self.vcpus[cpu].running_thread == ident:
            return cpu
        for i, vcpu in enumerate(self.vcpus):
            if vcpu.running_thread == ident:
                self._threads[ident] = i
                return i
        raise GuestProtocolError(cpu=-1, reason="a ucall from a vCPU this GuestVM did not "
                                                "make")

    def _doorbell(self, address: int, size: int, value: int) -> None:
        try:
            self._ucall(value)
        except EndRun:
            raise
        except BaseException as exc:      # the guest's protocol, or the host's answer
            self._fail(exc)

    def _ucall(self, value: int) -> None:
        cpu = self._current_cpu()
        if value != cpu:
            raise GuestProtocolError(cpu=cpu, reason=f"it rang the doorbell with index {value} "
                                                     "(its own ucall record is the only one)")
        channel = self._channel
        if not channel.stack_intact(cpu):
            self._fail(self._overflow(cpu))
        header = channel.header(cpu)
        command, value, file, line = header[0], header[1], header[4], header[5]
        if command == layout.Command.SYNC:          # the hot path: kept short
            sync = Sync(cpu, value, channel.strings.get(file) or channel.string(file), line)
            self._logs[cpu].append(sync)
            self._events.append(sync)
            if self._on_sync is not None:
                answer = self._on_sync(sync)
                if answer is not None:
                    sync.reply(answer)
            sync.resumed = True
            channel.reply(cpu, sync.answer)
            return
        channel.check_command(cpu, command)
        text = channel.text(cpu, header[8])
        if command == layout.Command.PRINT:
            pieces = self._partial[cpu]
            pieces.append(text)
            if len(pieces) * layout.UCALL_TEXT > MAX_PRINT:
                raise GuestProtocolError(cpu=cpu, reason="a print of more than "
                                                         f"{MAX_PRINT >> 20} MiB that never ends")
            if value == 0:             # the last piece of this print
                self._flush_partial(cpu)
            return
        self._flush_partial(cpu)
        if command == layout.Command.DONE:
            self._record(cpu, Done(cpu, channel.string(file), line))
            raise EndRun(GuestDone(cpu=cpu))
        self._fail(channel.failure(cpu, header, text, self._output(cpu)))

    def _fail(self, failure: BaseException) -> None:
        """End the run on a failure (the guest's, or an exception of the host's answer):
        every vCPU stops, then :meth:`run` raises it (a clean end: the partition is not
        poisoned, its memory can still be looked at)."""
        self._failures.append(failure)
        raise EndRun(GuestStopped(cpu=getattr(failure, "cpu", -1)))

    def _record(self, cpu: int, event: Event) -> None:
        self._logs[cpu].append(event)
        self._events.append(event)

    def _flush_partial(self, cpu: int | None = None) -> None:
        for i in range(len(self._partial)) if cpu is None else (cpu,):
            if not self._partial[i]:
                continue
            text = "".join(self._partial[i])
            self._partial[i].clear()
            self._record(i, Print(i, text))
            log.info("guest vCPU %d: %s", i, text.rstrip("\n"))
            if self._echo.write is not None:
                self._echo.write(text)

    def _output(self, cpu: int) -> str:
        return "".join(e.text for e in self._logs[cpu] if isinstance(e, Print))

    # -- guest exceptions -------------------------------------------------------------------
    def _overflow(self, cpu: int) -> GuestCrash:
        return GuestCrash(cpu=cpu, reason=f"it overflowed its {layout.STACK_SIZE >> 10} KiB "
                                          "stack (the guard at its bottom is overwritten): "
                                          "use less stack (large locals, deep recursion)",
                          output=self._output(cpu))

    def _exception(self, exit: exits.GuestException) -> None:
        try:
            self._redirect(exit)
        except EndRun:
            raise
        except BaseException as exc:
            self._fail(exc)

    def _redirect(self, exit: exits.GuestException) -> None:
        cpu = self._current_cpu()
        if not self._channel.stack_intact(cpu):
            self._fail(self._overflow(cpu))
        failure = self._exceptions.enter(exit, self.vcpus[cpu], cpu, self._output(cpu))
        if failure is not None:
            self._flush_partial(cpu)
            self._fail(failure)


def _describe_end(final: exits.Exit, mode: str, software: bool) -> str:
    if isinstance(final, exits.Shutdown):
        return "it triple-faulted (shutdown)"
    if isinstance(final, exits.Halt):
        return "it executed hlt (outside GUEST_DONE)"
    if isinstance(final, exits.InternalError):
        text = f"KVM could not run it: {final.message or final!r}"
        if mode != "user" and software:
            text += " (ring-0 code on this software KVM goes through KVM's instruction " \
                    "emulator, which cannot run SSE or int3)"
        return text
    if isinstance(final, (exits.IoOut, exits.IoIn)):
        return f"port IO to {final.port:#x}, which nothing handles (add a handler on " \
               "vm.partition)"
    if isinstance(final, (exits.MmioRead, exits.MmioWrite)):
        return f"an MMIO access at {final.gpa:#x}, which nothing handles (add a handler on " \
               "vm.partition, or map memory there)"
    if isinstance(final, exits.Syscall):
        return f"it made system call {final.nr}, which nothing handles " \
               "(vm.partition.set_syscall_handler)"
    return f"it stopped on {final!r}"


def run_guest(image: GuestImage, cpus: int = 1, *, timeout: float | None = 30.0,
              memory: int | str = "64M", answer: SyncAnswer = None,
              echo: Any = None) -> GuestResult:
    """Boot ``image`` on ``cpus`` vCPUs, run every one to ``GUEST_DONE`` and close: the
    :class:`GuestResult` (see :meth:`GuestVM.run`)."""
    with GuestVM(image, cpus, memory=memory, echo=echo) as vm:
        return vm.run(timeout, answer=answer)
