"""Event-loop readers and writers for raw descriptors the runner owns.

They are callback-driven rather than coroutines so that a job with many
streams costs no task per chunk, and each closes its descriptor when done so
that the runner's bookkeeping is "hand over, then forget".
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = [
    "Capture",
    "ChunkQueue",
    "Deliver",
    "Feeder",
    "OutputBudget",
    "Relay",
    "StreamFeeder",
    "close_quietly",
    "ready",
    "wake",
]

_READ_SIZE = 256 * 1024
_BURST = 16


def close_quietly(fd: int) -> None:
    """Close ``fd``; it may already be gone on a teardown path."""
    try:
        os.close(fd)
    except OSError:
        pass


class Sink(Protocol):
    """Where kept output goes instead of memory (a spool file)."""

    def write(self, data: memoryview) -> None: ...


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
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        budget: OutputBudget,
        sink: Sink | None = None,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._budget = budget
        #: A spool file the kept bytes go to instead of memory.
        self._sink = sink
        self.kept = 0
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
            try:
                self._keep(memoryview(chunk)[:granted])
            except OSError:  # the spool's disk is full: what is kept is cut
                self.truncated = self.cut = True
                self.abort()
                return
            if granted < len(chunk):
                self.truncated = self.cut = True
                self.abort()
                return

    def _keep(self, kept: memoryview) -> None:
        self.kept += len(kept)
        if self._sink is None:
            self.data += kept
        else:
            self._sink.write(kept)

    def contents(self) -> tuple[bytes, bool]:
        """What was kept in memory, and whether anything was dropped."""
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


#: Hands one chunk of a job's output to the client streaming it; ``None``
#: says the stream ended.
Deliver = Callable[[bytes | None], Awaitable[None]]


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve ``waiter`` unless it already is (a readiness callback may
    fire again before its waiter runs)."""
    if not waiter.done():
        waiter.set_result(None)


async def ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    """Wait until ``fd`` can be read (or written) without blocking."""
    waiter: asyncio.Future[None] = loop.create_future()
    if write:
        loop.add_writer(fd, wake, waiter)
    else:
        loop.add_reader(fd, wake, waiter)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class _DescriptorTask:
    """A descriptor served by one task: ``start`` runs ``_run``, and the
    descriptor is closed once, when the task ends or ``abort`` is called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        os.set_blocking(self._fd, False)
        self._task = self._loop.create_task(self._run())
        return self.done

    async def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        if not self.done.done():
            close_quietly(self._fd)
            self.done.set_result(None)

    def abort(self) -> None:
        """Stop and close the descriptor (idempotent)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._close()


class Relay(_DescriptorTask):
    """Read a stream and hand each chunk on as it comes, reading the next
    only once the last was delivered: a client that does not read stops
    the job's writer (its pipe fills), never grows the daemon's memory.

    ``failed`` holds why delivery stopped (the client went away); the
    descriptor is then closed, and the writer gets SIGPIPE.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, deliver: Deliver
    ) -> None:
        super().__init__(loop, fd)
        self._deliver = deliver
        self.failed: BaseException | None = None

    async def _run(self) -> None:
        try:
            while chunk := await self._read():
                await self._deliver(chunk)
            await self._deliver(None)
        except (OSError, TimeoutError) as exc:
            self.failed = exc
        finally:
            self._close()

    async def _read(self) -> bytes:
        while True:
            try:
                return os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                await ready(self._loop, self._fd, write=False)

    def contents(self) -> tuple[bytes, bool]:
        """Nothing is kept: it was all delivered."""
        return b"", False


class ChunkQueue:
    """Input chunks on their way from the client to the first stage, one at
    a time: whoever puts waits until the stage took the last one, so the
    client is read no faster than the job reads. ``None`` is the end."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self.closed = False

    async def put(self, chunk: bytes | None) -> None:
        """Hand on a chunk; once the stage stopped reading, drop it."""
        if not self.closed:
            await self._queue.put(chunk)

    async def get(self) -> bytes | None:
        return await self._queue.get()

    def close(self) -> None:
        """The stage reads no more: free a waiting ``put`` and drop the rest."""
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()


class StreamFeeder(_DescriptorTask):
    """Write chunks from a ``ChunkQueue`` into the first stage as they
    arrive, then close it (EOF). EPIPE ends the feed quietly, as for
    ``Feeder``; the queue is closed so the client's later chunks are
    dropped rather than waited for."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, chunks: ChunkQueue
    ) -> None:
        super().__init__(loop, fd)
        self._chunks = chunks

    async def _run(self) -> None:
        try:
            while (chunk := await self._chunks.get()) is not None:
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(self._fd, view) :]
                    except BlockingIOError:
                        await ready(self._loop, self._fd, write=True)
        except OSError:
            pass  # the stage stopped reading (EPIPE): the rest is not wanted
        finally:
            self._close()

    def _close(self) -> None:
        self._chunks.close()
        super()._close()
