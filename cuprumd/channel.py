"""A client's socket as the server uses it: bytes and passed descriptors in,
replies out.

asyncio's streams read with ``recv``, which makes the kernel discard any
descriptor a client sends along; ``recvmsg`` keeps them. Descriptors arrive
close-on-exec and are handed to the caller, who owns them from then on.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket

from cuprumd.errors import BadRequest

__all__ = ["MAX_FDS_PER_MESSAGE", "Channel"]

#: Descriptors one message may carry; more are closed by the kernel and the
#: connection is refused (a request needs at most three).
MAX_FDS_PER_MESSAGE = 8
#: Unread input discarded at close so that the client sees an orderly end.
DISCARD_BYTES = 1 << 20
CHUNK = 64 << 10
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


class Channel:
    """One accepted, non-blocking Unix stream socket; ``close`` once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._watching = False

    def wake_when_readable(self, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` once the socket has something to read (or the
        client left).

        The socket stays registered with the event loop between waits, so
        a conversation registers it once rather than for every request and
        every job it waits on (with uvloop each registration costs several
        system calls). It is dropped only when it turns readable with
        nobody waiting, and taken up again by the next wait. One waiter at
        a time: a conversation either reads or watches its socket.
        """
        self._waiter = waiter
        if not self._watching:
            self._loop.add_reader(self.fd, self._on_readable)
            self._watching = True

    def stop_waking(self, waiter: asyncio.Future[None]) -> None:
        """``waiter`` no longer wants to hear of the socket (idempotent)."""
        if self._waiter is waiter:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:  # level-triggered: it would fire until read
            self._loop.remove_reader(self.fd)
            self._watching = False
        elif not waiter.done():
            waiter.set_result(None)

    async def _readable(self) -> None:
        waiter = self._loop.create_future()
        self.wake_when_readable(waiter)
        try:
            await waiter
        finally:
            self.stop_waking(waiter)

    async def receive(self, size: int) -> tuple[bytes, list[int]]:
        """Up to ``size`` bytes and the descriptors sent with them;
        ``(b"", [])`` at end of stream.

        Raises
        ------
        BadRequest
            When a message carried more descriptors than can be taken (the
            ones that arrived are closed).
        """
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(
                    size, _ANCILLARY, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            fds = _descriptors(ancillary)
            if flags & socket.MSG_CTRUNC:
                for fd in fds:
                    os.close(fd)
                msg = (
                    f"more than {MAX_FDS_PER_MESSAGE} descriptors in one message; "
                    "closing the connection"
                )
                raise BadRequest(msg)
            return data, fds

    def send_now(self, data: bytes) -> int:
        """As much of ``data`` as the socket takes without waiting: most
        replies fit its buffer at once, and need neither the event loop's
        write machinery nor a timeout."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    async def send(self, data: bytes) -> None:
        """All of ``data``, waiting while the client does not read."""
        sent = self.send_now(data)
        if sent < len(data):
            await self._loop.sock_sendall(self.sock, memoryview(data)[sent:])

    def close(self) -> None:
        """Close, after discarding what the client sent that was never read
        (up to ``DISCARD_BYTES``): closing over unread bytes would reset the
        connection, and the client could lose the last reply it was sent."""
        if self._watching:
            self._loop.remove_reader(self.fd)
            self._watching = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            discarded = 0
            while discarded < DISCARD_BYTES:
                chunk = self.sock.recv(CHUNK)  # a descriptor sent along is closed
                if not chunk:
                    break
                discarded += len(chunk)
        self.sock.close()
