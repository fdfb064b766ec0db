"""pyhv's PC devices driven by real guests: the 16550 UART (registers, loopback, receive
interrupts through the in-kernel PIC), the CMOS clock, fw_cfg and the i8042 reset."""

from __future__ import annotations

import calendar
import io

import pytest

import pyhv
from pyhv import devices, exits

from .conftest import boot

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
        part.memory.write(0x1000, pyhv.testing.assemble_file(
            __import__("pathlib").Path(__file__).parent / "guests" / "uart_irq.S", bits=16,
            origin=0x1000))
        part.create_vcpu(mode="real", entry=0x1000, stack=0x8000)
        result = part.run(timeout=30)
        assert isinstance(result.exit, exits.DebugExit) and result.exit.value == ord("Z")
        assert not uart.rx and not uart.irq_level      # read, and the line went low


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


def test_rtc_binary_and_12_hour_modes_and_guest_set_time():
    rtc = devices.Rtc(clock=lambda: FIXED_TIME)

    def read(reg):
        rtc._write_index(0x70, 1, reg)
        return rtc._read_data(0x71, 1)

    def write(reg, value):
        rtc._write_index(0x70, 1, reg)
        rtc._write_data(0x71, 1, value)

    write(0x0B, 0x04)                                   # binary, 12-hour
    assert read(0x04) == 0x80 | 1 and read(0x00) == 56  # 1 PM
    write(0x0B, 0x02)                                   # BCD, 24-hour
    write(0x09, 0x32)                                   # the guest sets the year to 2032
    assert read(0x09) == 0x32 and read(0x07) == 0x24
    state = rtc.get_state()
    other = devices.Rtc(clock=lambda: FIXED_TIME)
    other.set_state(state)
    other._write_index(0x70, 1, 0x09)
    assert other._read_data(0x71, 1) == 0x32


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
        part.memory.write(0x1000, pyhv.testing.assemble_file(
            __import__("pathlib").Path(__file__).parent / "guests" / "uart_irq.S", bits=16,
            origin=0x1000))
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
