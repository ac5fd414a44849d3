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

A ``Transfer`` can say at any moment which pump is running it and how many
bytes it has moved, so a transfer cut short reports what really happened.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cuprumd.backend import StreamBackend
from cuprumd.fdio import close_quietly
from cuprumd.logging import get_logger
from cuprumd.models import PumpName
from cuprumd.outcome import TransferOutcome

__all__ = [
    "Transfer",
    "TransferOutcome",
    "describe_fd",
    "rust_unsupported_reason",
    "start_transfer",
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


class _Progress(Protocol):
    @property
    def bytes(self) -> int: ...
    @property
    def method(self) -> str | None: ...


class _NativeModule(Protocol):
    def rust_pump_transfer(
        self,
        reader_fd: int,
        writer_fd: int,
        *,
        buffer_size: int = ...,
        progress: Any = ...,
    ) -> tuple[int, str, bool]: ...

    def TransferProgress(self) -> _Progress: ...  # noqa: N802 - a class


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
    """An event-loop pump driven by readiness callbacks (no task per chunk).

    It waits on one side at a time: the reader until data comes, the
    writer while the next stage's pipe is full. The two are armed in an
    epoll instance of the pump's own, which the event loop watches as one
    descriptor for the pump's whole life: switching sides is two
    ``epoll_ctl`` calls, where adding and removing the loop's own readers
    and writers (with uvloop, a poll handle made and closed each time)
    cost several times that, thousands of times per GiB on small pipes.
    """

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
        self._epoll: select.epoll | None = None
        self._armed = reader_fd
        #: Asks whether the reader has data, for the one question splice's
        #: EAGAIN leaves open: which side blocked.
        self._probe = select.poll()
        self._probe.register(reader_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.bytes = 0
        self.downstream_closed = False
        self._closed = False
        self.done: asyncio.Future[None] = loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Begin moving bytes; the future resolves when the transfer ends."""
        os.set_blocking(self._reader, False)
        os.set_blocking(self._writer, False)
        epoll = select.epoll(2)
        try:
            epoll.register(self._reader, select.EPOLLIN)
            self._loop.add_reader(epoll.fileno(), self._on_event)
        except BaseException:
            epoll.close()
            raise
        self._epoll = epoll
        return self.done

    def _on_event(self) -> None:
        if self._armed == self._reader:
            self._on_ready()
        else:
            self._on_writable()

    def _arm(self, fd: int, events: int) -> None:
        """Wait on ``fd`` instead of the other side. The idle side is left
        out altogether: an end of stream on it would be reported whatever
        the interest, and wake the pump for nothing until the other side
        moved."""
        epoll = self._epoll
        if epoll is None or self._closed:
            return
        epoll.unregister(self._armed)
        epoll.register(fd, events)
        self._armed = fd

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
        if self._probe.poll(0):
            self._wait_writable()
        return False

    def _wait_writable(self) -> None:
        self._arm(self._writer, select.EPOLLOUT)

    def _on_writable(self) -> None:
        self._arm(self._reader, select.EPOLLIN)
        self._on_ready()

    def _finish(self, exc: BaseException | None) -> None:
        """Release both descriptors and the loop's callbacks exactly once.

        Keyed on its own flag, not on ``done``: a waiter that was cancelled
        cancels that future, and the descriptors must still be closed.
        """
        if self._closed:
            return
        self._closed = True
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            self._loop.remove_reader(epoll.fileno())
            epoll.close()
        close_quietly(self._writer)
        close_quietly(self._reader)
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def abort(self) -> None:
        """Stop at once (the job is being torn down) and release the fds."""
        self._finish(None)


def _load_native() -> _NativeModule:
    import cuprumd._native as native  # noqa: PLC0415 - only when rust resolved

    native_module: _NativeModule = native
    return native_module


def _is_unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)


class Transfer:
    """One inter-stage transfer, from its first byte to its closed fds.

    ``outcome()`` is true at any moment: the pump that is (or was) moving
    the bytes and how many it has moved, including after ``abort``.
    """

    def __init__(
        self,
        backend: StreamBackend,
        reader_fd: int,
        writer_fd: int,
        *,
        buffer_size: int,
        log_context: Mapping[str, object] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = reader_fd
        self._writer = writer_fd
        self._size = buffer_size
        self._context = dict(log_context or {})
        self._python: PythonPump | None = None
        self._progress: _Progress | None = None
        self._rust_result: tuple[int, str, bool] | None = None
        self._fallback: str | None = None
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        if backend is StreamBackend.RUST:
            self._start_rust()
        else:
            self._start_python(None)

    # -- pumps -----------------------------------------------------------

    def _start_python(self, reason: str | None) -> None:
        if reason is not None:
            self._fallback = reason
            _log.warning("pump.fallback", reason=reason, **self._context)
        pump = PythonPump(self._loop, self._reader, self._writer, self._size)
        self._python = pump
        pump.start().add_done_callback(self._python_done)

    def _python_done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            self._settle(future.exception())

    def _start_rust(self) -> None:
        reason = rust_unsupported_reason(self._reader, self._writer)
        if reason is not None:
            self._start_python(reason)
            return
        native = _load_native()
        progress = native.TransferProgress()
        self._progress = progress
        reader, writer, size, loop = self._reader, self._writer, self._size, self._loop

        def work() -> None:
            """The thread, not the loop, closes the descriptors: if the job
            is abandoned while splice still blocks, closing them elsewhere
            could hand their numbers to a new pipe this thread would then
            write into. Only "unsupported" (said before a byte moved) leaves
            them open, for the Python pump to take over."""
            result: tuple[int, str, bool] | None = None
            error: OSError | None = None
            try:
                result = native.rust_pump_transfer(
                    reader, writer, buffer_size=size, progress=progress
                )
            except OSError as exc:
                error = exc
            if not (error is not None and _is_unsupported(error)):
                close_quietly(writer)
                close_quietly(reader)
            _call_soon(loop, self._rust_done, result, error)

        threading.Thread(target=work, name=f"rust-pump-{reader}", daemon=True).start()

    def _rust_done(
        self, result: tuple[int, str, bool] | None, error: OSError | None
    ) -> None:
        if error is not None and _is_unsupported(error):
            if self.done.done():  # aborted meanwhile: nobody takes them over
                close_quietly(self._writer)
                close_quietly(self._reader)
                return
            self._progress = None
            self._start_python(f"native pump: {error.strerror}")
            return
        self._rust_result = result
        self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        if self.done.done():
            return
        self.error = error
        self.done.set_result(None)

    # -- control -----------------------------------------------------------

    def abort(self) -> None:
        """Stop now: the job is over. A Python pump closes its descriptors
        here; a Rust pump's thread closes its own once the kernel lets go
        of it (every holder of the pipe is gone by then)."""
        if self._python is not None:
            self._python.abort()
        self._settle(None)

    def outcome(self) -> TransferOutcome:
        """What this transfer has done so far (all of it, once done)."""
        if self._python is not None:
            pump = self._python
            return TransferOutcome(
                "python", pump.bytes, self._fallback, pump.downstream_closed
            )
        if self._rust_result is not None:
            moved, method, closed = self._rust_result
            return TransferOutcome(_rust_pump_name(method), moved, None, closed)
        progress = self._progress
        if progress is None:
            return TransferOutcome("rust-splice", 0)
        return TransferOutcome(_rust_pump_name(progress.method), progress.bytes)


def _rust_pump_name(method: str | None) -> PumpName:
    return "rust-copy" if method == "copy" else "rust-splice"


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[tuple[int, str, bool] | None, OSError | None], None],
    result: tuple[int, str, bool] | None,
    error: OSError | None,
) -> None:
    try:
        loop.call_soon_threadsafe(callback, result, error)
    except RuntimeError:  # the loop closed while the transfer was running
        pass


def start_transfer(
    backend: StreamBackend,
    reader_fd: int,
    writer_fd: int,
    *,
    buffer_size: int,
    log_context: Mapping[str, object] | None = None,
) -> Transfer:
    """Move everything from ``reader_fd`` to ``writer_fd`` with the chosen pump.

    With ``RUST`` resolved, descriptors the native pump cannot own (or that
    it reports unsupported before moving a byte) fall back to the Python
    pump for this transfer only, and the fallback is logged.
    """
    return Transfer(
        backend,
        reader_fd,
        writer_fd,
        buffer_size=buffer_size,
        log_context=log_context,
    )
