"""Host memory behind guest RAM, and page bitmaps: the C core's memory-imaging calls.

A :class:`HostMapping` is an anonymous, lazily backed mapping (a "1G" guest costs nothing
until it touches its pages); a :class:`PageBitmap` has one bit per 4 KiB page.

>>> from pyhv._native.memory import HostMapping, PageBitmap
>>> m = HostMapping(16 << 12)
>>> m.write(0x1000, b"hi"); m.read(0x1000, 2)
b'hi'
>>> pages = PageBitmap(16); pages.set_range(1, 2); list(pages)
[1, 2]
>>> m.free()
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidArgument, KvmError, check_rc
from .binding import ffi, lib

PAGE_SIZE = 4096


class PageBitmap:
    """One bit per page of a range of ``pages`` pages (C ``uint64_t`` words)."""

    __slots__ = ("pages", "words", "c")

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.words = max((pages + 63) // 64, 1)
        self.c = ffi.new("uint64_t[]", self.words)

    def set_range(self, first: int, count: int) -> None:
        """Set ``count`` bits from ``first`` (none when ``count <= 0``); a range past the
        bitmap's pages is refused."""
        if count <= 0:
            return
        if first < 0 or first + count > self.pages:
            raise InvalidArgument(f"pages [{first}, {first + count}) are outside a bitmap of "
                                  f"{self.pages} pages")
        lib.pyhv_bitmap_set(self.c, first, count)

    def clear(self) -> None:
        ffi.memmove(self.c, bytes(self.words * 8), self.words * 8)

    def move_from(self, other: PageBitmap) -> None:
        """OR ``other`` into this bitmap, then clear ``other``."""
        lib.pyhv_bitmap_move(self.c, other.c, min(self.words, other.words))

    def copy(self) -> PageBitmap:
        dup = PageBitmap(self.pages)
        ffi.memmove(dup.c, self.c, self.words * 8)
        return dup

    def count(self) -> int:
        return sum(w.bit_count() for w in ffi.unpack(self.c, self.words))

    def __iter__(self) -> Iterator[int]:
        """The set pages, in order."""
        for index, word in enumerate(ffi.unpack(self.c, self.words)):
            while word:
                bit = (word & -word).bit_length() - 1
                page = index * 64 + bit
                if page >= self.pages:
                    return
                yield page
                word &= word - 1

    def runs(self) -> list[tuple[int, int]]:
        """(first page, count) of each run of set pages."""
        runs: list[tuple[int, int]] = []
        for page in self:
            if runs and runs[-1][0] + runs[-1][1] == page:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((page, 1))
        return runs


class HostMapping:
    """``size`` bytes of anonymous host memory (freed by :meth:`free` or the GC)."""

    __slots__ = ("size", "pointer", "address", "_finalizer", "__weakref__")

    def __init__(self, size: int, pointer: Any = None) -> None:
        """Map fresh memory, or adopt ``pointer`` (a mapping of ``size`` bytes the C core
        made, e.g. with a memory slot)."""
        if pointer is None:
            out = ffi.new("void **")
            rc = lib.pyhv_memory_alloc(size, out)
            if rc < 0:
                raise KvmError(-rc, f"mmap of {size:#x} bytes of guest memory")
            pointer = out[0]
        self.size = size
        self.pointer = ffi.cast("uint8_t *", pointer)
        self.address = int(ffi.cast("uintptr_t", self.pointer))
        self._finalizer = weakref.finalize(self, lib.pyhv_memory_free, self.pointer, size)

    def free(self) -> None:
        self._finalizer()

    def detach(self) -> None:
        """Forget the mapping without unmapping it (someone else unmapped it)."""
        self._finalizer.detach()

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` (the caller checked the range)."""
        data: bytes = ffi.buffer(self.pointer + offset, length)[:]
        return data

    def write(self, offset: int, data: Any) -> None:
        """Copy ``data`` (bytes-like) to ``offset`` (the caller checked the range)."""
        ffi.memmove(self.pointer + offset, data, len(data))

    def fill(self, offset: int, length: int, byte: int) -> None:
        ffi.buffer(self.pointer + offset, length)[:] = bytes([byte]) * length

    def view(self, offset: int, length: int) -> Any:
        """A writable buffer over ``[offset, offset + length)`` (no copy)."""
        return ffi.buffer(self.pointer + offset, length)

    # -- page images ------------------------------------------------------------------------
    def mark_resident(self, pages: PageBitmap) -> None:
        """Set the bit of every page that holds data (present or swapped out)."""
        check_rc(lib.pyhv_memory_resident(self.pointer, pages.pages, pages.c), "page residency")

    def copy_pages_from(self, source: HostMapping, pages: PageBitmap) -> int:
        """Copy the pages whose bit is set from ``source`` (then clear the bits); how many."""
        return int(lib.pyhv_copy_pages(self.pointer, source.pointer, pages.c, pages.pages))

    def drop_zero_pages(self, pages: PageBitmap) -> int:
        """Clear the bits of pages that hold only zeros; how many remain."""
        return int(lib.pyhv_pages_drop_zero(self.pointer, pages.c, pages.pages))
