"""The stream pumps that move one stage's stdout into the next stage's stdin.

Both pumps take ownership of two raw descriptors the runner created (the read
end of stage i's stdout pipe and the write end of stage i+1's stdin pipe) and
close both when the transfer ends: closing the writer is the downstream's
EOF, and closing the reader after the downstream went away is what delivers
SIGPIPE to the producer, exactly as a shell pipeline would.

- ``PythonPump``: callbacks on the event loop, ``os.splice`` between pipes
  (so bytes never enter the interpreter), a bounded read/write buffer
  otherwise.
- the Rust pump: ``cuprumd._native.rust_pump_transfer`` on a thread of its
  own with the GIL released. Each transfer gets a dedicated thread: a shared
  pool smaller than the number of live transfers would deadlock, because a
  pump blocks until its producer finishes, and the producer may be waiting on
  a pump that cannot get a thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cuprumd.backend import StreamBackend
from cuprumd.fdio import close_quietly
from cuprumd.logging import get_logger
from cuprumd.models import PumpName

__all__ = [
    "TransferOutcome",
    "describe_fd",
    "run_transfer",
    "rust_unsupported_reason",
]

_log = get_logger("cuprumd.pump")

#: How many chunks a Python pump moves per wake-up before yielding, so one
#: fast transfer cannot starve the rest of the event loop.
_BURST = 16
_SPLICE_FLAGS = (
    getattr(os, "SPLICE_F_MOVE", 1)
    | getattr(os, "SPLICE_F_NONBLOCK", 2)
    | getattr(os, "SPLICE_F_MORE", 4)
)
_DOWNSTREAM_GONE = (errno.EPIPE, errno.ECONNRESET)


@dataclass(frozen=True)
class TransferOutcome:
    """What one transfer did: the pump that ran, bytes moved, and why the
    Rust pump was bypassed (``None`` when it was not)."""

    pump: PumpName
    bytes: int
    fallback_reason: str | None = None
    downstream_closed: bool = False


class _NativeModule(Protocol):
    def rust_pump_transfer(
        self, reader_fd: int, writer_fd: int, *, buffer_size: int = ...
    ) -> tuple[int, str, bool]: ...


def describe_fd(fd: int) -> str:
    """Name the kind of file behind ``fd`` for fallback messages."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        return f"unusable ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    for test, name in (
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "an unsupported file"


def rust_unsupported_reason(reader_fd: int, writer_fd: int) -> str | None:
    """Say why the Rust pump cannot own these descriptors, or ``None``.

    The native pump is only handed the raw pipes the runner made itself: it
    blocks its thread in ``splice(2)`` on them, which is safe only for
    descriptors nobody else reads, writes or re-flags meanwhile.
    """
    for role, fd in (("reader", reader_fd), ("writer", writer_fd)):
        kind = describe_fd(fd)
        if kind != "a pipe":
            return f"{role} fd {fd} is {kind}, not a pipe"
    return None


class PythonPump:
    """An event-loop pump driven by readiness callbacks (no task per chunk)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reader_fd: int,
        writer_fd: int,
        buffer_size: int,
    ) -> None:
        self._loop = loop
        self._reader = reader_fd
        self._writer = writer_fd
        self._size = buffer_size
        self._splice = describe_fd(reader_fd) == describe_fd(writer_fd) == "a pipe"
        self._pending = memoryview(b"")
        self.bytes = 0
        self.downstream_closed = False
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Begin moving bytes; the future resolves when the transfer ends."""
        os.set_blocking(self._reader, False)
        os.set_blocking(self._writer, False)
        self._loop.add_reader(self._reader, self._on_ready)
        return self.done

    def _on_ready(self) -> None:
        try:
            for _ in range(_BURST):
                if not self._step():
                    return
        except OSError as exc:
            if exc.errno in _DOWNSTREAM_GONE:
                self.downstream_closed = True
                self._finish(None)
            else:
                self._finish(exc)

    def _step(self) -> bool:
        """Move one chunk; return False when it is time to stop this burst."""
        if self._pending:
            return self._flush()
        try:
            if self._splice:
                moved = os.splice(
                    self._reader, self._writer, self._size, flags=_SPLICE_FLAGS
                )
            else:
                data = os.read(self._reader, self._size)
                moved = len(data)
                self._pending = memoryview(data)
        except BlockingIOError:
            return self._wait_for_blocked_side()
        if moved == 0:
            self._finish(None)
            return False
        if self._splice:
            self.bytes += moved
            return True
        return self._flush()

    def _flush(self) -> bool:
        try:
            written = os.write(self._writer, self._pending)
        except BlockingIOError:
            self._wait_writable()
            return False
        self.bytes += written
        self._pending = self._pending[written:]
        if self._pending:
            self._wait_writable()
            return False
        return True

    def _wait_for_blocked_side(self) -> bool:
        # splice's EAGAIN does not say which side blocked: ask the reader.
        # If it has data (or EOF), the writer is full.
        readable = _poll_now(self._reader)
        if readable:
            self._wait_writable()
        return False

    def _wait_writable(self) -> None:
        self._loop.remove_reader(self._reader)
        self._loop.add_writer(self._writer, self._on_writable)

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._writer)
        self._loop.add_reader(self._reader, self._on_ready)
        self._on_ready()

    def _finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        self._loop.remove_reader(self._reader)
        self._loop.remove_writer(self._writer)
        close_quietly(self._writer)
        close_quietly(self._reader)
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def abort(self) -> None:
        """Stop at once (the job is being torn down) and release the fds."""
        self._finish(None)


def _poll_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


async def _python_transfer(
    reader_fd: int, writer_fd: int, buffer_size: int, reason: str | None
) -> TransferOutcome:
    pump = PythonPump(asyncio.get_running_loop(), reader_fd, writer_fd, buffer_size)
    try:
        await pump.start()
    except asyncio.CancelledError:
        pump.abort()
        raise
    return TransferOutcome("python", pump.bytes, reason, pump.downstream_closed)


def _load_native() -> _NativeModule:
    import cuprumd._native as native  # noqa: PLC0415 - only when rust resolved

    return native


async def _rust_transfer(
    native: _NativeModule, reader_fd: int, writer_fd: int, buffer_size: int
) -> TransferOutcome:
    """Run the native pump on its own thread; the thread closes the fds.

    The thread, not the awaiting coroutine, closes the descriptors: if the
    job is abandoned while splice still blocks, closing them here could hand
    their numbers to a new pipe the thread would then write into. Only an
    "unsupported" answer (given before a byte moved) leaves them open, for
    the Python pump to take over.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[int, str, bool]] = loop.create_future()

    def settle(result: tuple[int, str, bool] | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            assert result is not None
            future.set_result(result)

    def work() -> None:
        result: tuple[int, str, bool] | None = None
        error: BaseException | None = None
        try:
            result = native.rust_pump_transfer(
                reader_fd, writer_fd, buffer_size=buffer_size
            )
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        if not (isinstance(error, OSError) and _is_unsupported(error)):
            close_quietly(writer_fd)
            close_quietly(reader_fd)
        _call_soon(loop, settle, result, error)

    threading.Thread(target=work, name=f"rust-pump-{reader_fd}", daemon=True).start()
    moved, method, closed = await asyncio.shield(future)
    pump: PumpName = "rust-splice" if method == "splice" else "rust-copy"
    return TransferOutcome(pump, moved, None, closed)


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[tuple[int, str, bool] | None, BaseException | None], None],
    result: tuple[int, str, bool] | None,
    error: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(callback, result, error)
    except RuntimeError:  # the loop closed while the transfer was running
        pass


def _is_unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)


async def run_transfer(
    backend: StreamBackend,
    reader_fd: int,
    writer_fd: int,
    *,
    buffer_size: int,
    log_context: Mapping[str, object] | None = None,
) -> TransferOutcome:
    """Move everything from ``reader_fd`` to ``writer_fd`` with the chosen pump.

    With ``RUST`` resolved, descriptors the native pump cannot own (or that
    it reports unsupported before moving a byte) fall back to the Python
    pump for this transfer only, and the fallback is logged.
    """
    if backend is not StreamBackend.RUST:
        return await _python_transfer(reader_fd, writer_fd, buffer_size, None)
    reason = rust_unsupported_reason(reader_fd, writer_fd)
    if reason is None:
        try:
            return await _rust_transfer(
                _load_native(), reader_fd, writer_fd, buffer_size
            )
        except OSError as exc:
            if not _is_unsupported(exc):
                raise
            reason = f"native pump: {exc.strerror}"
    _log.warning("pump.fallback", reason=reason, **(log_context or {}))
    return await _python_transfer(reader_fd, writer_fd, buffer_size, reason)
