"""``pyhv run``'s QEMU-compatible command line (pyhv.tools.run), in process and without KVM:
both flag spellings, QEMU's values, the refusals (status 126) and the exit statuses."""

from __future__ import annotations

import pytest

from pyhv import InvalidArgument, exits
from pyhv.tools import run
from pyhv.tools.cli import build_parser, main


def parse(*argv: str):
    return build_parser().parse_args(["run", *argv])


def test_qemu_flags_in_both_spellings():
    qemu = parse("-kernel", "k.flat", "-append", "a b", "-initrd", "env", "-m", "512",
                 "-smp", "2", "-cpu", "max", "-device", "edu", "-device", "pc-testdev",
                 "-serial", "none", "-no-reboot", "-nodefaults", "-display", "none",
                 "-machine", "accel=kvm", "-global", "kvm-pit.lost_tick_policy=discard",
                 "-enable-kvm", "-nographic", "-name", "t", "-accel", "kvm")
    double = parse("--kernel", "k.flat", "--append", "a b", "--initrd", "env", "--memory",
                   "512", "--cpus", "2", "--cpu", "max", "--device", "edu", "--device",
                   "pc-testdev", "--serial", "none", "--no-reboot", "--nodefaults",
                   "--display", "none", "--machine", "accel=kvm", "--global",
                   "kvm-pit.lost_tick_policy=discard", "--enable-kvm", "--nographic",
                   "--name", "t", "--accel", "kvm")
    assert {k: v for k, v in vars(qemu).items() if k != "usage_error"} == {
        k: v for k, v in vars(double).items() if k != "usage_error"}
    assert (qemu.kernel, qemu.append, qemu.initrd, qemu.memory, qemu.cpus, qemu.cpu,
            qemu.device, qemu.serial) == ("k.flat", "a b", "env", "512", "2", "max",
                                          ["edu", "pc-testdev"], "none")


def test_defaults_are_qemus():
    args = parse("kernel")
    assert (args.image, args.memory, args.cpus, args.cpu, args.irqchip, args.serial,
            args.debug_exit, args.format) == ("kernel", "128M", "1", "qemu64", True, "stdio",
                                              0xF4, "auto")
    assert parse("k", "--no-irqchip").irqchip is False


@pytest.mark.parametrize("argv, message", [
    (["k", "--format", "exe"], "argument --format: invalid choice: 'exe'"),
    (["k", "--mode", "virtual86"], "argument --mode: invalid choice: 'virtual86'"),
    (["k", "--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["k", "--debug-exit", "zz"], "argument --debug-exit: 'zz' is not a whole number"),
    (["k", "--irqchip", "--no-irqchip"], "not allowed with argument --irqchip"),
    (["k", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["k", "-display", "sdl"], "argument -display/--display: invalid choice: 'sdl'"),
    (["k", "-ma", "pc"], "ambiguous option: -ma could match -m, -machine"),
])
def test_usage_errors_exit_126_not_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["run", *argv])
    assert info.value.code == 126
    err = capsys.readouterr().err
    assert err.startswith("usage: pyhv run") and message in err


def test_memory_in_mib_when_no_suffix():
    assert run.memory_size("512") == 512 << 20
    assert run.memory_size("2G") == 2 << 30 and run.memory_size("64M") == 64 << 20
    assert run.memory_size("size=1024") == 1 << 30
    with pytest.raises(InvalidArgument, match="hotplug"):
        run.memory_size("1G,slots=2,maxmem=4G")
    with pytest.raises(InvalidArgument):
        run.memory_size("lots")


@pytest.mark.parametrize("text, cpus", [("1", 1), ("4", 4), ("cpus=3", 3),
                                        ("2,sockets=1,cores=2,threads=1", 2),
                                        ("sockets=2,cores=2,threads=2", 8),
                                        ("4,maxcpus=4", 4)])
def test_smp_values(text, cpus):
    assert run.cpu_count(text) == cpus


@pytest.mark.parametrize("text, message", [("0", "at least one"), ("two", "not a number"),
                                           ("2,maxcpus=4", "hotplug"),
                                           ("2,books=1", "unknown property")])
def test_bad_smp_values(text, message):
    with pytest.raises(InvalidArgument, match=message):
        run.cpu_count(text)


def test_machine_options_take_the_pc_and_its_properties():
    assert run.machine_options(["accel=kvm", "pc,pit=off"]) == {"accel": "kvm", "pit": "off"}
    assert run.machine_options(["pc-i440fx-7.2,kernel-irqchip=off"]) == {
        "kernel-irqchip": "off"}
    for value, message in (("q35", "i440FX pc machine only"),
                           ("pc-q35-7.2", "i440FX pc machine only"),
                           ("accel=tcg", "accel=tcg: not provided"),
                           ("vmport=on", "vmport=on: not provided"),
                           ("kernel-irqchip=split", "not provided")):
        with pytest.raises(InvalidArgument, match=message):
            run.machine_options([value])


def test_globals_take_the_pit_policy_only():
    assert run.pit_reinject([]) is True
    assert run.pit_reinject(["kvm-pit.lost_tick_policy=discard"]) is False
    assert run.pit_reinject(["kvm-pit.lost_tick_policy=discard",
                             "kvm-pit.lost_tick_policy=delay"]) is True
    for value in ("isa-serial.chardev=x", "kvm-pit.lost_tick_policy=slew"):
        with pytest.raises(InvalidArgument, match="not provided"):
            run.pit_reinject([value])


def test_device_and_cpu_help_list_what_is_provided(capsys):
    assert main(["run", "-device", "help"]) == 0
    out = capsys.readouterr().out
    for name in ('name "pc-testdev"', 'name "pci-testdev"', 'name "edu"',
                 'name "isa-debug-exit"'):
        assert name in out
    assert main(["run", "-device", "?"]) == 0 and '"edu"' in capsys.readouterr().out
    assert main(["run", "-cpu", "help"]) == 0
    out = capsys.readouterr().out
    assert "qemu64" in out and "x2apic" in out and "tsc-deadline" in out


@pytest.mark.parametrize("argv, message", [
    ([], "no image: give IMAGE or -kernel IMAGE"),
    (["-machine", "q35"], "i440FX pc machine only"),
    (["-smp", "2,maxcpus=8"], "hotplug"),
    (["-m", "1G,slots=4"], "hotplug"),
    (["-cpu", "pentium9"], "unknown CPU model"),
    (["-cpu", "qemu64,+frob"], "unknown CPU feature"),
    (["-device", "gpu"], "unknown device 'gpu'"),
    (["-device", "edu,frob=1"], "edu takes no option frob"),
    (["-global", "foo.bar=1"], "-global foo.bar=1: not provided"),
])
def test_refusals_before_anything_runs(capsys, tmp_path, argv, message):
    image = tmp_path / "guest.bin"
    image.write_bytes(b"\xf4")
    args = argv if argv == [] else ["-kernel", str(image), *argv]
    assert main(["run", *args]) == 126
    assert message in capsys.readouterr().err


def test_two_different_images_are_refused(capsys, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"\xf4")
    assert main(["run", str(tmp_path / "a"), "-kernel", str(tmp_path / "b")]) == 126
    assert "two images" in capsys.readouterr().err


@pytest.mark.parametrize("exit, status", [
    (exits.DebugExit(1, 0, 0xF4), 1),
    (exits.DebugExit(0x63, 0x31, 0xF4), 0x63),
    (exits.DebugExit((0x85 << 1) | 1, 0x85, 0xF4), 0x0B),
    (exits.Halt(), 0),
    (exits.Reset(source="i8042"), 0),
    (exits.SystemEvent(1), 0),
    (exits.SystemEvent(5), 0),
    (exits.Shutdown(), 2),
    (exits.InternalError(1), 4),
    (exits.MmioRead(0xD0000000, 4), 4),
])
def test_exit_statuses_never_collide_with_a_guest_code(capsys, exit, status):
    assert run.exit_status(exit) == status
    if status in (2, 4):
        assert capsys.readouterr().err.startswith("pyhv run: the guest")


def test_debug_exit_statuses_are_odd_and_pyhvs_are_even():
    for value in range(256):
        assert run.exit_status(exits.DebugExit((value << 1) | 1, value, 0xF4)) % 2 == 1
    assert all(s % 2 == 0 for s in (run.HALT, run.TRIPLE_FAULT, run.UNHANDLED, run.TIMEOUT,
                                    run.CANNOT_RUN, run.INTERRUPTED))


def test_flags_are_judged_before_the_image_as_qemu_does(capsys, tmp_path):
    # scripts (the KVM unit tests' runner) tell "pyhv cannot run this configuration" from
    # "the kernel file is missing" by which error comes first
    missing = str(tmp_path / "missing")
    assert main(["run", "-kernel", missing, "-cpu", "max,-vmx-mbec"]) == 126
    err = capsys.readouterr().err
    assert "vmx-" in err and "could not load kernel" not in err
    assert main(["run", "-kernel", missing, "-cpu", "max"]) == 126
    assert "could not load kernel" in capsys.readouterr().err
