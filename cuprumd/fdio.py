"""Event-loop readers and writers for raw descriptors the runner owns.

They are callback-driven rather than coroutines so that a job with many
streams costs no task per chunk, and each closes its descriptor when done so
that the runner's bookkeeping is "hand over, then forget".
"""

from __future__ import annotations

import asyncio
import errno
import os

__all__ = ["Capture", "Feeder", "OutputBudget", "close_quietly"]

_READ_SIZE = 256 * 1024
_BURST = 16


def close_quietly(fd: int) -> None:
    """Close ``fd``; it may already be gone on a teardown path."""
    try:
        os.close(fd)
    except OSError:
        pass


class OutputBudget:
    """The bytes of output one job may keep: stdout and every stderr
    together draw on it, so the job's result, not each stream, is bounded."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit

    def take(self, wanted: int) -> int:
        """Grant up to ``wanted`` bytes; 0 once the budget is spent."""
        granted = min(wanted, self.remaining)
        self.remaining -= granted
        return granted


class Capture:
    """Read a stream to EOF, keeping what the job's budget grants.

    Once the budget is spent and more arrives, the capture closes its end:
    the writer gets SIGPIPE (or EPIPE) on its next write, as it would writing
    into ``| head -c N``, so a job whose output can no longer be kept stops
    costing a core. ``cut`` says that this capture, not the writer, ended
    the stream.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, budget: OutputBudget
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._budget = budget
        self.data = bytearray()
        self.truncated = False
        self.cut = False
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Begin reading; the future resolves at EOF (or at the cut)."""
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_ready)
        return self.done

    def _on_ready(self) -> None:
        for _ in range(_BURST):
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                return
            if not chunk:
                self.abort()
                return
            granted = self._budget.take(len(chunk))
            self.data += chunk[:granted]
            if granted < len(chunk):
                self.truncated = self.cut = True
                self.abort()
                return

    def contents(self) -> tuple[bytes, bool]:
        """What was kept, and whether anything was dropped."""
        return bytes(self.data), self.truncated

    def abort(self) -> None:
        """Stop reading and close the descriptor (idempotent)."""
        if self.done.done():
            return
        self._loop.remove_reader(self._fd)
        close_quietly(self._fd)
        self.done.set_result(None)


class Feeder:
    """Write a job's stdin into the first stage, then close it (EOF).

    A first stage that exits without reading everything is normal (``head``):
    EPIPE ends the feed quietly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
        self._loop = loop
        self._fd = fd
        self._data = memoryview(data)
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Begin writing; the future resolves when all is written or refused."""
        os.set_blocking(self._fd, False)
        self._on_ready()
        if not self.done.done():
            self._loop.add_writer(self._fd, self._on_ready)
        return self.done

    def _on_ready(self) -> None:
        while self._data:
            try:
                written = os.write(self._fd, self._data[:_READ_SIZE])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                break
            self._data = self._data[written:]
        self.abort()

    def abort(self) -> None:
        """Stop writing and close the descriptor (idempotent)."""
        if self.done.done():
            return
        self._loop.remove_writer(self._fd)
        close_quietly(self._fd)
        self.done.set_result(None)
