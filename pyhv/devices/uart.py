"""A 16550A UART (COM1 by default: ports 0x3F8-0x3FF, IRQ 4).

Registers: RBR/THR and the divisor latch (DLAB), IER, IIR/FCR (FIFOs reported as on, as a
16550A does), LCR, MCR (with loopback, which Linux's driver uses to probe), LSR, MSR, SCR.
What the guest transmits goes to ``output`` (a callable taking bytes, or a binary stream);
:meth:`feed` queues bytes for the guest to receive.  With the partition's in-kernel irqchip,
the IRQ line follows the UART's interrupt state (receive data, transmitter empty).

Speed: while the guest transmits with THR interrupts off and nothing to receive, the
transmit register is a C buffered port and the line status a C constant, so printing costs
no Python call per byte; the device switches those fast paths off whenever its state needs
Python (divisor latch, loopback, interrupts, received data).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.buses import sink_writer
from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

COM1, COM1_IRQ = 0x3F8, 4
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
THR, FCR, DLL, DLM = RBR, IIR, RBR, IER

IER_RX, IER_THRE = 0x01, 0x02
IIR_NONE, IIR_THRE, IIR_RX, IIR_FIFOS = 0x01, 0x02, 0x04, 0xC0
LCR_DLAB = 0x80
MCR_LOOP = 0x10
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
FIFO_DEPTH = 16                        # a 16550A's receive FIFO
MSR_IDLE = 0xB0                        # DCD, DSR and CTS asserted: a cable that is "there"


class Uart16550(Device):
    """A 16550A UART at ``base`` (COM1) raising ``irq`` (4); see the module docstring.

    >>> import pyhv
    >>> with pyhv.Partition(memory="1M") as part:
    ...     uart = part.attach(Uart16550())             # no sink: output kept in .transmitted
    ...     uart.feed(b"keys for the guest")
    """

    def __init__(self, output: Callable[[bytes], Any] | Any = None, base: int = COM1,
                 irq: int = COM1_IRQ, name: str = "com1", buffered: bool = True) -> None:
        self.name = name
        # buffered=False: every byte reaches the sink at once, so the output of several
        # vCPUs stays in the order they wrote it (the C buffers are per vCPU)
        self.buffered = buffered
        self.base = base
        self.irq = irq
        self._write = None if output is None else sink_writer(output)
        self.transmitted = bytearray() if output is None else None   # kept when no sink
        self.rx: deque[int] = deque()
        self.ier = self.lcr = self.mcr = self.scr = 0
        self.divisor = 12              # 9600 baud
        self.fifo = False
        self.thre_pending = False      # "transmitter empty" interrupt not yet acknowledged
        self.irq_level = False
        self._lock = threading.RLock()
        self._fast = (False, False)    # (THR fast path on, LSR fast path on)

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        b = self.base
        partition.add_io_handler(range(b, b + 8), read=self._read, write=self._write_reg)
        # the C fast paths lie over the Python handlers, which take what they do not
        self._thr = partition.add_buffered_port(b + THR, self._emit, overlay=True)
        self._lsr = partition.add_constant_port(b + LSR, LSR_THRE | LSR_TEMT, overlay=True)
        self._fast = (True, True)
        self._update()

    def _emit(self, data: bytes) -> None:
        if self._write is not None:
            self._write(data)
        else:
            assert self.transmitted is not None
            self.transmitted += data

    def feed(self, data: bytes) -> None:
        """Queue ``data`` for the guest to receive (from any thread)."""
        with self._lock:
            self.rx.extend(data)
            self._update()

    # -- registers ------------------------------------------------------------------------
    def _read(self, port: int, size: int) -> int:
        with self._lock:
            reg = port - self.base
            if reg == RBR:
                if self.lcr & LCR_DLAB:
                    return self.divisor & 0xFF
                value = self.rx.popleft() if self.rx else 0
            elif reg == IER:
                value = self.divisor >> 8 if self.lcr & LCR_DLAB else self.ier
            elif reg == IIR:
                value = self._iir()
                if value & 0x0F == IIR_THRE:
                    self.thre_pending = False          # reading IIR acknowledges it
            elif reg == LCR:
                value = self.lcr
            elif reg == MCR:
                value = self.mcr
            elif reg == LSR:
                value = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
            elif reg == MSR:
                value = MSR_IDLE
                if self.mcr & MCR_LOOP:     # RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD
                    value = ((self.mcr & 0x02) << 3 | (self.mcr & 0x01) << 5
                             | (self.mcr & 0x04) << 4 | (self.mcr & 0x08) << 4)
            else:
                value = self.scr
            self._update()
            return value & 0xFF

    def _write_reg(self, port: int, size: int, value: int) -> None:
        with self._lock:
            reg, value = port - self.base, value & 0xFF
            if reg == THR:
                if self.lcr & LCR_DLAB:
                    self.divisor = (self.divisor & 0xFF00) | value
                elif self.mcr & MCR_LOOP:
                    if len(self.rx) < (FIFO_DEPTH if self.fifo else 1):
                        self.rx.append(value)      # a full FIFO drops it (an overrun)
                else:
                    self._emit(bytes([value]))
                    self.thre_pending = True       # sent at once: empty again
            elif reg == IER:
                if self.lcr & LCR_DLAB:
                    self.divisor = (self.divisor & 0xFF) | value << 8
                else:
                    if value & IER_THRE and not self.ier & IER_THRE:
                        self.thre_pending = True   # enabling it with THR empty raises it
                    self.ier = value & 0x0F
            elif reg == FCR:
                self.fifo = bool(value & 1)
                if value & 2:
                    self.rx.clear()
            elif reg == LCR:
                self.lcr = value
            elif reg == MCR:
                self.mcr = value & 0x1F
            elif reg == SCR:
                self.scr = value
            self._update()

    def _iir(self) -> int:
        fifos = IIR_FIFOS if self.fifo else 0
        if self.ier & IER_RX and self.rx:
            return IIR_RX | fifos
        if self.ier & IER_THRE and self.thre_pending:
            return IIR_THRE | fifos
        return IIR_NONE | fifos

    def _update(self) -> None:
        """Follow the state: the IRQ line, and which C fast paths may stay on (once
        attached: before that there is nothing to follow, attach() catches up)."""
        part = getattr(self, "partition", None)
        if part is None:
            return
        level = self._iir() & IIR_NONE == 0
        if level != self.irq_level and part.irqchip:
            part.set_irq(self.irq, level)
        self.irq_level = level
        plain = not self.lcr & LCR_DLAB and not self.mcr & MCR_LOOP
        fast = (self.buffered and plain and not self.ier & IER_THRE, plain and not self.rx)
        if fast != self._fast:
            self._thr.enabled, self._lsr.enabled = fast
            self._fast = fast

    # -- snapshots ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "scr": self.scr,
                "divisor": self.divisor, "fifo": self.fifo, "thre_pending": self.thre_pending,
                "rx": list(self.rx)}

    def set_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            for key in ("ier", "lcr", "mcr", "scr"):
                setattr(self, key, int(state[key]) & 0xFF)
            self.divisor = int(state["divisor"]) & 0xFFFF
            self.fifo = bool(state["fifo"])
            self.thre_pending = bool(state["thre_pending"])
            self.rx = deque(int(b) & 0xFF for b in state["rx"])
            self._update()
