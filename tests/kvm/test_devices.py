"""pyhv's PC devices driven by real guests: the 16550 UART (registers, loopback, receive
interrupts through the in-kernel PIC), the CMOS clock, fw_cfg and the i8042 reset."""

from __future__ import annotations

import calendar
import io

import pytest

import pyhv
from pyhv import devices, exits
from pyhv.testing import assemble

from ..conftest import boot, guest_code

FIXED_TIME = calendar.timegm((2031, 7, 24, 13, 45, 56, 0, 0, 0))


def reports(part: pyhv.Partition) -> list[int]:
    seen: list[int] = []
    part.add_io_handler(0xE9, write=lambda port, size, value: seen.append(value))
    return seen


def test_uart_registers_as_a_driver_probes_them(part):
    out = io.BytesIO()
    uart = part.attach(devices.Uart16550(out))
    seen = reports(part)
    boot(part, "uart_probe")
    assert part.run(timeout=30).halted
    scratch, divisor, iir, msr, lsr, looped = seen
    assert (scratch, divisor, looped) == (0x5A, 3, 0x42)
    assert iir == 0xC1                        # FIFOs on (a 16550A), no interrupt pending
    assert msr == 0x90                        # loopback: RTS -> CTS, OUT2 -> DCD
    assert lsr & 0x61 == 0x61                 # data ready, transmitter empty
    assert out.getvalue() == b"ok"            # not the looped-back byte
    state = uart.get_state()
    assert state["lcr"] == 0x03 and state["divisor"] == 3 and state["mcr"] == 0x0B


def test_uart_receive_interrupt_through_the_in_kernel_pic(kvm):
    with pyhv.Partition(memory="1M", irqchip=True) as part:
        uart = part.attach(devices.Uart16550())
        part.attach(devices.IsaDebugExit())
        uart.feed(b"Z")
        part.memory.write(0x1000, guest_code("uart_irq", "real"))
        part.create_vcpu(mode="real", entry=0x1000, stack=0x8000)
        result = part.run(timeout=30)
        assert isinstance(result.exit, exits.DebugExit) and result.exit.value == ord("Z")
        assert not uart.rx and not uart.irq_level      # read, and the line went low


def test_uart_transmits_by_thre_interrupts_as_linux_8250_does(kvm):
    # with THRE interrupts on, every byte goes through the UART's Python THR path (the C
    # buffered port is off), one interrupt per byte
    message = b"sent by THRE interrupts\r\n"
    with pyhv.Partition(memory="1M", irqchip=True) as part:
        out = io.BytesIO()
        uart = part.attach(devices.Uart16550(out))
        part.attach(devices.IsaDebugExit())
        part.memory.write(0x1000, guest_code("uart_thre", "real"))
        cpu = part.create_vcpu(mode="real", entry=0x1000, stack=0x8000)
        result = part.run(timeout=30)
        assert isinstance(result.exit, exits.DebugExit), result.exit
        assert result.exit.value == len(message)       # one THRE interrupt per byte
        assert out.getvalue() == message
        assert uart.ier == 0 and not uart.irq_level
        assert cpu.stats.exits_in_c == 1      # the debug-exit: no byte took the C buffered port


def test_clock_fw_cfg_and_reset(part):
    part.attach(devices.Rtc(clock=lambda: FIXED_TIME))
    part.attach(devices.FwCfg())
    part.attach(devices.I8042())
    seen = reports(part)
    boot(part, "pc_devices")
    result = part.run(timeout=30)
    assert result.exit == exits.Reset(source="i8042 command 0xfe", rip=result.exit.rip)
    assert part.state == pyhv.PartitionState.STOPPED           # a reset is not a fault
    clock, signature, ram = seen[:7], bytes(seen[7:11]), bytes(seen[11:19])
    assert clock == [0x56, 0x45, 0x13, 0x24, 0x07, 0x31, 0x20]  # BCD 2031-07-24 13:45:56
    assert signature == b"QEMU"
    assert int.from_bytes(ram, "little") == 16 << 20


def i8042_guest(steps: list[tuple[str, int]]) -> str:
    """Long-mode code: ("cmd", c) writes port 0x64, ("data", v) port 0x60, ("status", 0) and
    ("read", 0) report ports 0x64 and 0x60 on port 0xE9; then hlt."""
    code = {"cmd": "mov ${:#x}, %al\nout %al, $0x64", "data": "mov ${:#x}, %al\nout %al, $0x60",
            "status": "in $0x64, %al\nout %al, $0xE9", "read": "in $0x60, %al\nout %al, $0xE9"}
    return "\n".join(code[op].format(value) for op, value in steps) + "\nhlt"


def test_i8042_output_port_aux_echo_and_interface_bits(part):
    i8042 = part.attach(devices.I8042())
    seen = reports(part)
    part.memory.write(0x1000, pyhv.testing.assemble(i8042_guest([
        ("cmd", 0xD0), ("read", 0),                           # output port: 0x03
        ("cmd", 0xD1), ("data", 0x01), ("cmd", 0xD0), ("read", 0),   # A20 off
        ("cmd", 0xD1), ("data", 0x03), ("cmd", 0xD0), ("read", 0),   # A20 on again
        ("cmd", 0xD3), ("data", 0x5A), ("status", 0), ("read", 0),   # from the mouse port
        ("cmd", 0xD2), ("data", 0x5B), ("status", 0), ("read", 0),   # from the keyboard
        ("cmd", 0xA7), ("cmd", 0x20), ("read", 0),            # mouse port disabled: bit 5
        ("cmd", 0xAD), ("cmd", 0x20), ("read", 0),            # keyboard disabled: bit 4
        ("cmd", 0xA8), ("cmd", 0xAE), ("cmd", 0x20), ("read", 0),    # both enabled again
        ("cmd", 0xD1), ("data", 0x02),                        # reset line low: reset
    ]), origin=0x1000))
    part.create_vcpu(mode="long", entry=0x1000)
    result = part.run(timeout=30)
    assert result.exit == exits.Reset(source="i8042 output port bit 0 cleared",
                                      rip=result.exit.rip)
    assert seen == [0x03, 0x01, 0x03,
                    0x25, 0x5A,                 # output full, system, aux data
                    0x05, 0x5B,                 # the same without the aux bit
                    0x65, 0x75, 0x45]
    state = i8042.get_state()
    assert state["output_port"] == 0x02
    other = devices.I8042()
    other.set_state(state)
    other._write_command(0x64, 1, 0xD0)
    assert other._read_data(0x60, 1) == 0x02


class CountingFiles(dict):
    """fw_cfg's file table, counting how often it is walked."""

    walks = 0

    def values(self):
        CountingFiles.walks += 1
        return super().values()

    def items(self):
        CountingFiles.walks += 1
        return super().items()


def test_fw_cfg_arch_selectors_and_a_file_read_once(part):
    fw = part.attach(devices.FwCfg())
    for i in range(50):
        fw.add_file(f"etc/file{i}", bytes([i]) * 64)
    payload = bytes(range(256)) * 16
    fw.add_file("etc/payload", payload)                  # selector 0x20 + 50
    fw.files = CountingFiles(fw.files)
    seen = reports(part)
    part.memory.write(0x1000, pyhv.testing.assemble("""
        mov $0x510, %dx
        mov $0x8003, %ax                  /* QEMU's arch-specific e820 table: not offered */
        out %ax, %dx
        mov $0x511, %dx
        mov $8, %ecx
    1:  in %dx, %al
        out %al, $0xE9
        loop 1b
        mov $0x510, %dx
        mov $0x4003, %ax                  /* the write-channel bit reads the RAM size */
        out %ax, %dx
        mov $0x511, %dx
        mov $8, %ecx
    2:  in %dx, %al
        out %al, $0xE9
        loop 2b
        mov $0x510, %dx
        mov $0x52, %ax
        out %ax, %dx
        mov $0x511, %dx
        mov $0x200000, %edi
        mov $4096, %ecx
        cld
        rep insb
        hlt
    """, origin=0x1000))
    part.create_vcpu(mode="long", entry=0x1000)
    CountingFiles.walks = 0
    assert part.run(timeout=60).halted
    assert bytes(seen[:8]) == bytes(8)                   # not the RAM size of item 0x0003
    assert int.from_bytes(bytes(seen[8:16]), "little") == 16 << 20
    assert part.memory.read(0x200000, 4096) == payload
    assert CountingFiles.walks <= 3                      # once a selection, not once a byte


def rtc_guest(steps: list[tuple[str, int, int]]) -> str:
    """Long-mode code that writes (``"w"``, register, value) and reports (``"r"``, register, 0)
    CMOS registers on port 0xE9, then halts."""
    lines = []
    for op, reg, value in steps:
        lines.append(f"mov ${reg:#x}, %al\nout %al, $0x70")
        lines.append(f"mov ${value:#x}, %al\nout %al, $0x71" if op == "w"
                     else "in $0x71, %al\nout %al, $0xE9")
    return "\n".join(lines) + "\nhlt"


def test_rtc_set_by_a_guest_field_by_field(part):
    # the clock reads Monday 2031-02-10 13:45:56; each group sets it the way a guest may
    part.attach(devices.Rtc(clock=lambda: calendar.timegm((2031, 2, 10, 13, 45, 56, 0, 0, 0))))
    seen = reports(part)
    W, R = "w", "r"
    part.memory.write(0x1000, pyhv.testing.assemble(rtc_guest([
        # without SET: day 31 (no such day in February), then January -> January 31
        (W, 0x07, 0x31), (R, 0x07, 0), (W, 0x08, 0x01), (R, 0x07, 0), (R, 0x08, 0),
        # with SET: Feb 29 (no such day in 2031) then 2032: applied once SET is cleared
        (W, 0x0B, 0x82), (W, 0x07, 0x29), (W, 0x08, 0x02), (R, 0x07, 0), (W, 0x09, 0x32),
        (W, 0x0B, 0x02), (R, 0x07, 0), (R, 0x08, 0), (R, 0x09, 0),
        # 12-hour mode: 1 PM is hour 13
        (W, 0x0B, 0x00), (W, 0x04, 0x81), (R, 0x04, 0), (W, 0x0B, 0x02), (R, 0x04, 0),
        # the weekday reads back what was written
        (W, 0x06, 0x05), (R, 0x06, 0),
    ]), origin=0x1000))
    part.create_vcpu(mode="long", entry=0x1000)
    assert part.run(timeout=30).halted
    assert seen == [0x31, 0x31, 0x01,             # January 31, not March 3 then January 3
                    0x29, 0x29, 0x02, 0x32,       # February 29 2032, not March 1
                    0x81, 0x13,                   # 1 PM, in 24-hour form 13
                    0x05]


def test_device_state_follows_snapshots(part):
    uart = part.attach(devices.Uart16550(io.BytesIO()))
    seen = reports(part)
    boot(part, "uart_probe")
    snap = part.snapshot()
    assert snap.devices["com1"]["scr"] == 0
    part.run(timeout=30)
    assert uart.scr == 0x5A and seen
    part.restore(snap)
    assert uart.scr == 0 and uart.lcr == 0
    clone = pyhv.Partition.from_snapshot(snap)
    assert clone.devices == {}               # devices are attached again by their owner
    clone.close()


def test_snapshots_carry_the_in_kernel_interrupt_controllers(kvm, tmp_path):
    with pyhv.Partition(memory="1M", irqchip=True, pit=True) as part:
        part.attach(devices.Uart16550())
        part.attach(devices.IsaDebugExit())
        part.memory.write(0x1000, guest_code("uart_irq", "real"))
        part.create_vcpu(mode="real", entry=0x1000, stack=0x8000)
        with pytest.raises(pyhv.Timeout):
            part.run(timeout=0.5)            # PIC programmed, interrupts on, halted
        snap = part.snapshot()
        assert set(snap.chips) == {"pic_master", "pic_slave", "ioapic", "pit"}
        assert snap.chips["pic_master"][2] == 0xEF      # kvm_pic_state.imr: only IRQ 4 open
        path = tmp_path / "irq.snap"
        snap.save(path)
        clone = pyhv.Partition.from_snapshot(pyhv.Snapshot.load(path))
        with clone:
            assert clone.irqchip and clone.pit
            uart = clone.attach(devices.Uart16550())
            clone.attach(devices.IsaDebugExit())
            uart.set_state(snap.devices["com1"])
            uart.feed(b"Q")                  # the restored PIC still routes IRQ 4
            result = clone.run(timeout=30)
            assert isinstance(result.exit, exits.DebugExit) and result.exit.value == ord("Q")


@pytest.mark.parametrize("fifo", [False, True], ids=["no-fifo", "fifo"])
def test_uart_loopback_is_bounded_by_its_fifo(part, fifo):
    """Regression: UART loopback queued every byte sent, not only what its FIFO holds."""
    # 100000 bytes looped back, none read: a 16550A holds 1 (FIFOs off) or 16 (FIFOs on)
    uart = part.attach(devices.Uart16550())
    enable_fifo = "mov $0x3fa, %dx\nmov $0x01, %al\nout %al, %dx\n" if fifo else ""
    part.memory.write(0x100000, assemble(
        enable_fifo + "mov $0x3fc, %dx\nmov $0x10, %al\nout %al, %dx\nmov $0x3f8, %dx\n"
        "mov $100000, %ecx\n1: out %al, %dx\nloop 1b\nhlt", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    assert part.run(timeout=120).halted
    assert len(uart.rx) <= 16
    assert len(uart.rx) == (16 if fifo else 1)
