"""Testing with real guests: guests written in C (:func:`build_guest`, the guest library
``<pyhv/guest.h>``, :class:`GuestVM`), the pytest plugin's pieces, and the assembler
helpers.

>>> from pyhv.testing import build_guest, run_guest
>>> image = build_guest(c='''
... void guest_main(int cpu)
... {
...     GUEST_PRINTF("%d + %d = %d\\\\n", 2, 2, 2 + 2);
...     GUEST_SYNC(2 + 2);
... }
... ''', mode="user")
>>> result = run_guest(image, timeout=10)
>>> result.output, result.syncs, result.done
('2 + 2 = 4\\n', (4,), True)

``build_guest`` needs gcc; :func:`assemble` needs GNU ``as``, ``ld`` and ``objcopy``
(Debian: ``apt-get install gcc binutils``).  The pytest plugin (:mod:`pyhv.testing.plugin`,
loaded when pyhv is installed) gives tests a ``guest`` fixture; see docs/testing-guests.md.
"""

from __future__ import annotations

from .asm import assemble, assemble_file, kvm_usable
from .build import build_guest
from .errors import (
    GuestAssertionError,
    GuestCrash,
    GuestExceptionError,
    GuestFailure,
    GuestProtocolError,
    ToolchainError,
)
from .image import GuestImage, SourceLine
from .results import CpuLog, Done, GuestResult, Print, Sync
from .runner import GuestTimeout, GuestVM, run_guest
from .usable import guest_usable

__all__ = [
    "CpuLog",
    "Done",
    "GuestAssertionError",
    "GuestCrash",
    "GuestExceptionError",
    "GuestFailure",
    "GuestImage",
    "GuestProtocolError",
    "GuestResult",
    "GuestTimeout",
    "GuestVM",
    "Print",
    "SourceLine",
    "Sync",
    "ToolchainError",
    "assemble",
    "assemble_file",
    "build_guest",
    "guest_usable",
    "kvm_usable",
    "run_guest",
]
