"""Event-loop readers and writers for raw descriptors the runner owns.

They are callback-driven rather than coroutines so that a job with many
streams costs no task per chunk, and each closes its descriptor when done so
that the runner's bookkeeping is "hand over, then forget".
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess

__all__ = ["Capture", "Feeder", "close_quietly", "watch_exit"]

_READ_SIZE = 256 * 1024
_BURST = 16


def close_quietly(fd: int) -> None:
    """Close ``fd``; it may already be gone on a teardown path."""
    try:
        os.close(fd)
    except OSError:
        pass


class Capture:
    """Read a stream to EOF, keeping at most ``limit`` bytes.

    Past the limit it keeps draining (a stage blocked on a full pipe would
    otherwise never finish) and only remembers that it dropped something.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, limit: int) -> None:
        self._loop = loop
        self._fd = fd
        self._limit = limit
        self.data = bytearray()
        self.truncated = False
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Begin reading; the future resolves at EOF."""
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
            room = self._limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > room:
                self.truncated = True

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


def watch_exit(
    loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]
) -> asyncio.Future[int]:
    """Resolve with the return code once ``proc`` exits, reaping it.

    A pidfd turns the exit into an ordinary readable descriptor, so both
    asyncio and uvloop can wait for it without a SIGCHLD handler or a
    thread per child, and no other waiter can steal the status.
    """
    future: asyncio.Future[int] = loop.create_future()
    pidfd = os.pidfd_open(proc.pid)

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        close_quietly(pidfd)
        returncode = proc.wait()
        if not future.done():
            future.set_result(returncode)

    loop.add_reader(pidfd, on_exit)
    return future
