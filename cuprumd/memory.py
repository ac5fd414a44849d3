"""Give freed heap back to the kernel after a large request or reply.

CPython frees a multi-megabyte frame or reply into glibc's heap, which keeps
it (and per-thread arenas keep theirs) unless asked: without this a daemon
that once served a burst of large requests stays that large. ``malloc_trim``
is glibc's; elsewhere this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer"]


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """Trims at most once per ``interval`` seconds, so a stream of large
    requests costs one trim per interval, not one each; a trim that is due
    too soon is made once the interval has passed, so the last of a burst
    is not left in the heap."""

    def __init__(
        self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trim = _find_malloc_trim()
        self._interval = interval
        self._clock = clock
        self._last = -interval
        self._pending: asyncio.TimerHandle | None = None
        self.trims = 0

    def after_large(self) -> None:
        if self._trim is None or self._pending is not None:
            return
        wait = self._last + self._interval - self._clock()
        if wait > 0:
            self._pending = asyncio.get_running_loop().call_later(wait, self._run)
        else:
            self._run()

    def _run(self) -> None:
        self._pending = None
        self._last = self._clock()
        assert self._trim is not None
        self._trim(0)
        self.trims += 1

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
