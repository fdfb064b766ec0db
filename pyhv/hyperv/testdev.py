"""QEMU's ``hyperv-testdev``, which the kvm-unit-tests Hyper-V tests drive: a write-only
32-bit port at 0x3000 taking ``conn_id << 24 | ctl << 16 | vp << 8 | sint``.

===  =====================================================================================
ctl  what it does
===  =====================================================================================
1    create a SINT route to (vp, sint)
2    destroy that route
3    assert the route's SINT (an interrupt with the SINT's vector)
4    create message connection ``conn_id`` -> (vp, sint): the guest's HvPostMessage lands there
5    destroy message connection ``conn_id``
6    create event connection ``conn_id`` -> (vp, sint), event flag number ``conn_id``
7    destroy event connection ``conn_id``
===  =====================================================================================

It works on the partition's :class:`pyhv.HyperV` (attach that first, with hv-synic).

>>> from pyhv.devices import registry
>>> import pyhv.hyperv
>>> type(registry.create("hyperv-testdev")).__name__
'HypervTestDev'
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..devices import registry
from ..devices.base import Device
from ..errors import HypervisorError, InvalidArgument

if TYPE_CHECKING:
    from ..devices.host import DeviceHost
    from .device import HyperV

log = logging.getLogger("pyhv.hyperv")

PORT = 0x3000
SINT_ROUTE_CREATE, SINT_ROUTE_DESTROY, SINT_ROUTE_SET_SINT = 1, 2, 3
MSG_CONN_CREATE, MSG_CONN_DESTROY, EVT_CONN_CREATE, EVT_CONN_DESTROY = 4, 5, 6, 7


class HypervTestDev(Device):
    """The test device; ``hyperv`` is the partition's HyperV (default: the one attached to
    the partition as ``"hyperv"``, looked up at the first write)."""

    name = "hyperv-testdev"

    def __init__(self, hyperv: HyperV | None = None) -> None:
        self.hyperv = hyperv
        self.routes: set[tuple[int, int]] = set()
        self.ignored = 0                       # writes it could not act on (logged)

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(range(PORT, PORT + 4), write=self._write)

    def _hv(self) -> HyperV:
        if self.hyperv is None:
            from .device import HyperV
            found = getattr(self.partition, "devices", {}).get("hyperv")
            if not isinstance(found, HyperV):
                raise HypervisorError("hyperv-testdev needs the partition's Hyper-V "
                                      "enlightenments (attach pyhv.HyperV with hv-synic)")
            self.hyperv = found
        return self.hyperv

    def _write(self, port: int, size: int, value: int) -> None:
        if port != PORT or size != 4:          # QEMU's device takes 4-byte writes at 0x3000
            self._ignore(f"a {size}-byte write to port {port:#x}")
            return
        self.control(value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF, value >> 24 & 0xFF)

    def control(self, ctl: int, vp: int, sint: int, conn_id: int) -> None:
        """Do what a write of ``conn_id << 24 | ctl << 16 | vp << 8 | sint`` asks."""
        hv = self._hv()
        try:
            if ctl == SINT_ROUTE_CREATE:
                hv.vp(vp)
                self.routes.add((vp, sint & 0xF))
            elif ctl == SINT_ROUTE_DESTROY:
                self.routes.discard((vp, sint & 0xF))
            elif ctl == SINT_ROUTE_SET_SINT:
                if (vp, sint & 0xF) not in self.routes:
                    self._ignore(f"SINT {sint} of VP {vp} has no route")
                else:
                    hv.assert_sint(vp, sint & 0xF)
            elif ctl == MSG_CONN_CREATE:
                hv.add_message_connection(conn_id, vp, sint & 0xF)
            elif ctl == MSG_CONN_DESTROY:
                hv.remove_message_connection(conn_id)
            elif ctl == EVT_CONN_CREATE:
                hv.add_event_connection(conn_id, vp, sint & 0xF)
            elif ctl == EVT_CONN_DESTROY:
                hv.remove_event_connection(conn_id)
            else:
                self._ignore(f"control code {ctl}")
        except InvalidArgument as exc:          # the guest's mistake, not the host's
            self._ignore(str(exc))

    def _ignore(self, what: str) -> None:
        self.ignored += 1
        log.warning("hyperv-testdev ignores %s", what)

    def get_state(self) -> dict[str, Any]:
        return {"routes": sorted(list(r) for r in self.routes)}

    def set_state(self, state: dict[str, Any]) -> None:
        try:
            self.routes = {(int(vp), int(sint) & 0xF) for vp, sint in state["routes"]}
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument("a malformed hyperv-testdev state") from None


def _factory(options: dict[str, str]) -> Device:
    registry.no_more("hyperv-testdev", options)
    return HypervTestDev()


registry.register("hyperv-testdev", _factory,
                  "QEMU's Hyper-V test device at port 0x3000 (needs --cpu ...,hv-synic)")
