"""Request lines on the daemon side, read with a bounded amount of memory.

The unfinished line a connection is sending is the only input the daemon
holds for it. The first ``FREE_BYTES`` of a line cost nothing; a line that
grows past them must first lease a whole frame (``max_request_bytes``) from
one budget shared by every connection. So a thousand clients each sending
most of a huge line hold at most the budget, not a thousand frames; a reader
that finds the budget spent stops reading (its client's writes block) until
another large request is done with.

A large frame's lease follows its request: a job whose request carried it
holds it until the job ends (its stdin lives that long), so queued jobs with
big inputs count against the same budget.

Descriptors a client passes belong to the line in which the first byte of
their message lies; they travel with that frame, and whoever holds the
frame closes them unless a job took them.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from cuprumd.errors import BadRequest, FrameTooLarge

__all__ = ["CHUNK_BYTES", "FREE_BYTES", "Frame", "FrameBudget", "FrameReader", "Lease"]

#: What a line may hold without a lease; also the read size.
FREE_BYTES = 64 << 10
CHUNK_BYTES = 64 << 10
#: Descriptors that may wait for their line to end.
MAX_PENDING_FDS = 8


class Source(Protocol):
    """Where a connection's bytes (and passed descriptors) come from."""

    def receive(self, size: int) -> Awaitable[tuple[bytes, list[int]]]: ...


class Lease:
    """A share of the budget; released exactly once, by its one holder."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: FrameBudget | None, size: int) -> None:
        self._budget = budget
        self.size = size

    def hand_over(self) -> Lease:
        """Move the share to a new holder; this lease is then empty."""
        moved = Lease(self._budget, self.size)
        self._budget, self.size = None, 0
        return moved

    def release(self) -> None:
        budget, size = self._budget, self.size
        self._budget, self.size = None, 0
        if budget is not None and size:
            budget.give(size)


class FrameBudget:
    """Bytes of large request frames the daemon holds at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def lease(self, size: int) -> Lease:
        """Wait until ``size`` bytes are free, then take them."""
        size = min(size, self.total)
        while self.available < size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.available -= size
        return Lease(self, size)

    def give(self, size: int) -> None:
        self.available += size
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Frame:
    """One request line, the lease that pays for it (empty when small), and
    the descriptors sent with it."""

    data: bytes
    lease: Lease
    fds: list[int] = field(default_factory=list)

    def take_fds(self) -> list[int]:
        """Hand the descriptors to a new owner."""
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        """Give back what nobody took (idempotent)."""
        self.lease.release()
        for fd in self.take_fds():
            os.close(fd)


class FrameReader:
    """Splits one connection's bytes into request lines.

    ``limit`` is the longest line, newline not counted. Cancelling ``next``
    at any await loses nothing: bytes are only taken from the stream once
    they can be kept.
    """

    def __init__(self, source: Source, limit: int, budget: FrameBudget) -> None:
        self._source = source
        self._limit = limit
        self._budget = budget
        self._buffer = bytearray()
        self._scanned = 0
        self._lease: Lease | None = None
        #: (offset in the buffer of the message's first byte, descriptors)
        self._fds: list[tuple[int, list[int]]] = []

    async def next(self) -> Frame | None:
        """The next non-blank line; ``None`` at end of stream.

        Raises
        ------
        FrameTooLarge
            When a line exceeds the limit; the caller must close the
            connection, since the rest of that line cannot be told from the
            next one.
        """
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                if end > self._limit:
                    raise self._too_large()
                data = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                self._scanned = 0
                frame = self._take(data)
                if frame is not None:
                    return frame
                continue
            self._scanned = len(buffer)
            if len(buffer) > self._limit:
                raise self._too_large()
            if self._lease is None and len(buffer) >= FREE_BYTES:
                self._lease = await self._budget.lease(self._limit)
            chunk, fds = await self._source.receive(CHUNK_BYTES)
            if fds:
                self._fds.append((len(buffer), fds))
                if sum(len(f) for _, f in self._fds) > MAX_PENDING_FDS:
                    self.close()
                    msg = "too many descriptors without a request line to carry them"
                    raise BadRequest(msg)
            if not chunk and not fds:
                data = bytes(buffer)
                buffer.clear()
                self._scanned = 0
                return self._take(data)
            buffer += chunk

    def _take(self, data: bytes) -> Frame | None:
        lease, self._lease = self._lease, None
        fds: list[int] = []
        while self._fds and self._fds[0][0] < max(len(data), 1):
            fds += self._fds.pop(0)[1]
        self._fds = [(offset - len(data), f) for offset, f in self._fds]
        frame = Frame(data, lease if lease is not None else Lease(None, 0), fds)
        if data.strip():
            return frame
        frame.close()  # a blank line carries nothing anyone asked for
        return None

    def _too_large(self) -> FrameTooLarge:
        self.close()
        return FrameTooLarge(
            "request line exceeds max_request_bytes; closing the connection"
        )

    def close(self) -> None:
        """Drop what is buffered and give back its lease."""
        self._buffer.clear()
        self._scanned = 0
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        for _offset, fds in self._fds:
            for fd in fds:
                os.close(fd)
        self._fds.clear()
