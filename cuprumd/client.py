"""Python clients for the daemon: ``Client`` (blocking) and ``AsyncClient``.

Results come back as the same pydantic models the daemon sends, and error
replies as the ``ProtocolError`` subclass of their code, so callers write
``except Busy:`` rather than compare strings. One client holds one
connection; requests on it are answered in order.
"""

from __future__ import annotations

import array
import asyncio
import base64
import itertools
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, Self

from cuprumd.discovery import (
    UntrustedDaemon,
    check_daemon,
    discover_socket,
    trusted_uids,
)
from cuprumd.errors import ClientError
from cuprumd.fdio import ready
from cuprumd.models import JobResult, JobSpec
from cuprumd.protocol import (
    JobList,
    JobRef,
    JobStatus,
    JobSummary,
    OutputEvent,
    PingResult,
    StatsResult,
    encode_request,
    error_from_reply,
    parse_reply,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "DaemonUnavailable",
    "UntrustedDaemon",
    "resolve_socket_path",
]

_READ_LIMIT = 1 << 30  # replies carry whole outputs; the daemon bounds them

JobLike = JobSpec | Mapping[str, Any]


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The socket a client uses; see ``cuprumd.discovery``."""
    return Path(discover_socket(explicit))


class DaemonUnavailable(ClientError):
    """Nothing answers on the socket: not running, wrong path, no access."""


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: A stream to pass: a descriptor, or a file (anything with ``fileno``).
Stream = int | _HasFileno


def _passed(
    stdin: Stream | None, stdout: Stream | None, stderr: Stream | None
) -> tuple[list[str], list[int]]:
    """The ``fds`` names of a request and the descriptors, in that order."""
    names: list[str] = []
    fds: list[int] = []
    for name, stream in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if stream is not None:
            names.append(name)
            fds.append(stream if isinstance(stream, int) else stream.fileno())
    return names, fds


def _job_fields(
    job: JobLike,
    stdin: Stream | None,
    stdout: Stream | None,
    stderr: Stream | None,
) -> dict[str, Any]:
    """The fields of a ``run`` or ``submit``, and the descriptors to send
    with its line."""
    names, fds = _passed(stdin, stdout, stderr)
    return {"descriptors": fds, "job": _job_doc(job), "fds": names or None}


def _rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _job_doc(job: JobLike) -> Mapping[str, Any]:
    if isinstance(job, JobSpec):
        return job.model_dump(mode="json", exclude_none=True)
    return job


def _unavailable(path: Path, exc: OSError) -> DaemonUnavailable:
    reason = exc.strerror or type(exc).__name__
    return DaemonUnavailable(f"cannot connect to cuprumd at {path}: {reason}")


def _result(line: bytes, expected_id: int) -> dict[str, Any]:
    """The ``result`` of a reply line, or its error raised."""
    if not line:
        msg = "the daemon closed the connection before replying"
        raise ClientError(msg)
    try:
        reply = parse_reply(line)
    except (ValueError, RecursionError):  # nested past any reply
        msg = "the peer's reply is not a cuprumd reply"
        raise ClientError(msg) from None
    if reply.error is not None or not reply.ok:
        if reply.error is None:
            raise ClientError("error reply without an error")
        raise error_from_reply(reply.error)
    if reply.id != expected_id:
        msg = f"reply id {reply.id!r} does not match request id {expected_id}"
        raise ClientError(msg)
    return reply.result or {}


def _stream_request(
    request_id: int, job: JobLike, stdin: Iterable[bytes] | None
) -> tuple[bytes, Iterator[bytes] | None]:
    """A streaming ``run`` line, and the ``stdin`` lines to follow it."""
    doc = dict(_job_doc(job))
    if stdin is None:
        return encode_request(request_id, "run", job=doc, stream=True), None
    doc["stdin_encoding"] = "base64"  # chunks may split a character
    line = encode_request(request_id, "run", job=doc, stream=True, stdin_stream=True)

    def chunks() -> Iterator[bytes]:
        for chunk in stdin:
            if chunk:
                data = base64.b64encode(chunk).decode("ascii")
                yield encode_request(request_id, "stdin", data=data)
        yield encode_request(request_id, "stdin", eof=True)

    return line, chunks()


def _send_chunks(sock: socket.socket, chunks: Iterator[bytes]) -> None:
    """The input of a streaming run, from a thread; a connection that
    breaks ends it (the reader reports why)."""
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except OSError:
        return


async def _write_chunks(writer: asyncio.StreamWriter, chunks: Iterator[bytes]) -> None:
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
    except OSError:
        return


def _event(line: bytes) -> OutputEvent | None:
    """The output event on a reply line, or None for a final reply."""
    try:
        reply = parse_reply(line)
    except (ValueError, RecursionError):  # nested past any reply
        return None
    if reply.event is None:
        return None
    return OutputEvent.model_validate(reply.event)


class Client:
    """A blocking client; ``timeout`` bounds each socket operation."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        daemon_user: str | None = None,
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._trusted = trusted_uids(daemon_user)
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (reopened on the next request)."""
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect(str(self.socket_path))
                check_daemon(sock, self.socket_path, self._trusted)
            except OSError as exc:
                sock.close()
                raise _unavailable(self.socket_path, exc) from None
            except UntrustedDaemon:
                sock.close()
                raise
            self._sock, self._file = sock, sock.makefile("rb")
        return self._sock

    def request(
        self, op: str, *, descriptors: Sequence[int] = (), **fields: Any
    ) -> dict[str, Any]:
        """Send one request (with ``descriptors`` attached to its line) and
        return its raw ``result``.

        Raises
        ------
        ProtocolError
            The subclass for the reply's error code.
        ClientError
            When the connection fails or the reply is not understood.
        """
        sock = self._connect()
        assert self._file is not None
        request_id = next(self._ids)
        line = encode_request(request_id, op, **fields)
        try:
            sent = sock.sendmsg([line], _rights(descriptors)) if descriptors else 0
            sock.sendall(line[sent:])
        except BrokenPipeError:
            pass  # the daemon may have answered (frame_too_large) and closed
        except OSError as exc:
            self.close()
            raise ClientError(f"sending to cuprumd failed: {exc}") from None
        try:
            line = self._file.readline()
        except OSError as exc:
            self.close()
            raise ClientError(f"reading from cuprumd failed: {exc}") from None
        if not line:
            self.close()
        return _result(line, request_id)

    def ping(self) -> PingResult:
        """Version, protocol, stream backend and pid of the daemon."""
        return PingResult.model_validate(self.request("ping"))

    def stream(
        self, job: JobLike, *, stdin: Iterable[bytes] | None = None
    ) -> Iterator[OutputEvent | JobResult]:
        """Run a job, yielding its output as it is written, then its result.

        ``stdin`` chunks are sent while the job runs, no faster than it
        reads them (from a thread, so that output keeps flowing). Leaving
        the loop early closes the connection, which cancels the job.
        """
        sock = self._connect()
        assert self._file is not None
        request_id = next(self._ids)
        line, chunks = _stream_request(request_id, job, stdin)
        writer: threading.Thread | None = None
        try:
            sock.sendall(line)
            if chunks is not None:
                writer = threading.Thread(
                    target=_send_chunks, args=(sock, chunks), daemon=True
                )
                writer.start()
            while True:
                try:
                    reply_line = self._file.readline()
                except OSError as exc:
                    raise ClientError(f"reading from cuprumd failed: {exc}") from None
                event = _event(reply_line)
                if event is None:
                    yield JobResult.model_validate(_result(reply_line, request_id))
                    return
                yield event
        finally:
            self.close()
            if writer is not None:
                writer.join()

    def run(
        self,
        job: JobLike,
        *,
        stdin: Stream | None = None,
        stdout: Stream | None = None,
        stderr: Stream | None = None,
    ) -> JobResult:
        """Run a job and return its result once it ends.

        A stream given here is passed to the daemon as a descriptor: the
        first stage reads ``stdin``, the last writes ``stdout``, every stage
        writes ``stderr``, with no size limit; the result then carries
        nothing for them (see ``JobResult.passed``).
        """
        reply = self.request("run", **_job_fields(job, stdin, stdout, stderr))
        return JobResult.model_validate(reply)

    def submit(
        self,
        job: JobLike,
        *,
        stdin: Stream | None = None,
        stdout: Stream | None = None,
        stderr: Stream | None = None,
    ) -> str:
        """Start a job in the background; returns its id. Streams as for
        ``run``: the job keeps them after this client has gone."""
        reply = self.request("submit", **_job_fields(job, stdin, stdout, stderr))
        return JobRef.model_validate(reply).job_id

    def status(self, job_id: str) -> JobStatus:
        """The job's current state."""
        return JobStatus.model_validate(self.request("status", job_id=job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """The result of a submitted job (fetching it removes it)."""
        reply = self.request("wait", job_id=job_id, timeout=timeout)
        return JobResult.model_validate(reply)

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job; the state returned is final unless it is slow to die."""
        return JobStatus.model_validate(self.request("cancel", job_id=job_id))

    def list_jobs(self, **filters: Any) -> list[JobSummary]:
        """Jobs the daemon knows (with a ``state_dir``, its history): one
        page; ``filters`` are the ``list`` fields (``states``, ``uid``,
        ``since``, ``until``, ``limit``, ``cursor``)."""
        return self.list_page(**filters).jobs

    def list_page(self, **filters: Any) -> JobList:
        """As ``list_jobs``, with the cursor of the next page."""
        return JobList.model_validate(self.request("list", **filters))

    def follow(
        self, job_id: str, *, live: bool = True
    ) -> Iterator[OutputEvent | JobStatus]:
        """A job's output from the daemon's spool as it is written (or, not
        ``live``, what is stored now), then its status once it ended."""
        sock = self._connect()
        assert self._file is not None
        request_id = next(self._ids)
        try:
            sock.sendall(encode_request(request_id, "follow", job_id=job_id, live=live))
            while True:
                line = self._file.readline()
                event = _event(line)
                if event is None:
                    yield JobStatus.model_validate(_result(line, request_id))
                    return
                yield event
        except OSError as exc:
            raise ClientError(f"following the job failed: {exc}") from None
        finally:
            self.close()

    def stats(self) -> StatsResult:
        """Counters since the daemon started."""
        return StatsResult.model_validate(self.request("stats"))


async def _send_descriptors(
    writer: asyncio.StreamWriter, line: bytes, fds: Sequence[int]
) -> int:
    """Send the start of ``line`` with ``fds`` attached; how much was sent.

    The transport cannot carry descriptors, so once it has flushed what it
    holds, one ``sendmsg`` goes straight to the socket (through a duplicate
    descriptor: the transport's socket object is not ours to use).
    """
    await writer.drain()
    transport_sock = writer.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=os.dup(transport_sock.fileno())) as sock:
        while True:
            try:
                return sock.sendmsg([line], _rights(fds))
            except BlockingIOError:
                await ready(loop, sock.fileno(), write=True)


class AsyncClient:
    """The asyncio twin of ``Client``; use ``async with``."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        daemon_user: str | None = None,
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._trusted = trusted_uids(daemon_user)
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (reopened on the next request)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=_READ_LIMIT
                )
            except OSError as exc:
                raise _unavailable(self.socket_path, exc) from None
            try:
                check_daemon(
                    writer.get_extra_info("socket"), self.socket_path, self._trusted
                )
            except UntrustedDaemon:
                writer.close()
                raise
            self._reader, self._writer = reader, writer
        return self._reader, self._writer

    async def request(
        self, op: str, *, descriptors: Sequence[int] = (), **fields: Any
    ) -> dict[str, Any]:
        """As ``Client.request``; concurrent calls on one client take turns."""
        async with self._lock:
            reader, writer = await self._connect()
            request_id = next(self._ids)
            line = encode_request(request_id, op, **fields)
            try:
                if descriptors:
                    line = line[await _send_descriptors(writer, line, descriptors) :]
                writer.write(line)
                await writer.drain()
            except BrokenPipeError:
                pass  # the daemon may have answered (frame_too_large) and closed
            except OSError as exc:
                await self.close()
                raise ClientError(f"sending to cuprumd failed: {exc}") from None
            try:
                line = await reader.readline()
            except (OSError, ValueError) as exc:
                await self.close()
                raise ClientError(f"reading from cuprumd failed: {exc}") from None
            if not line:
                await self.close()
            return _result(line, request_id)

    async def ping(self) -> PingResult:
        """Version, protocol, stream backend and pid of the daemon."""
        return PingResult.model_validate(await self.request("ping"))

    async def stream(
        self, job: JobLike, *, stdin: Iterable[bytes] | None = None
    ) -> AsyncIterator[OutputEvent | JobResult]:
        """As ``Client.stream``; the input is sent by a task."""
        async with self._lock:
            reader, writer = await self._connect()
            request_id = next(self._ids)
            line, chunks = _stream_request(request_id, job, stdin)
            feeding: asyncio.Task[None] | None = None
            try:
                writer.write(line)
                await writer.drain()
                if chunks is not None:
                    feeding = asyncio.create_task(_write_chunks(writer, chunks))
                while True:
                    reply_line = await reader.readline()
                    event = _event(reply_line)
                    if event is None:
                        result = _result(reply_line, request_id)
                        yield JobResult.model_validate(result)
                        return
                    yield event
            finally:
                if feeding is not None:
                    feeding.cancel()
                    await asyncio.wait({feeding})
                await self.close()

    async def run(
        self,
        job: JobLike,
        *,
        stdin: Stream | None = None,
        stdout: Stream | None = None,
        stderr: Stream | None = None,
    ) -> JobResult:
        """As ``Client.run``."""
        fields = _job_fields(job, stdin, stdout, stderr)
        return JobResult.model_validate(await self.request("run", **fields))

    async def submit(
        self,
        job: JobLike,
        *,
        stdin: Stream | None = None,
        stdout: Stream | None = None,
        stderr: Stream | None = None,
    ) -> str:
        """As ``Client.submit``."""
        fields = _job_fields(job, stdin, stdout, stderr)
        return JobRef.model_validate(await self.request("submit", **fields)).job_id

    async def status(self, job_id: str) -> JobStatus:
        """The job's current state."""
        return JobStatus.model_validate(await self.request("status", job_id=job_id))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """The result of a submitted job (fetching it removes it)."""
        reply = await self.request("wait", job_id=job_id, timeout=timeout)
        return JobResult.model_validate(reply)

    async def cancel(self, job_id: str) -> JobStatus:
        """Stop a job; the state returned is final unless it is slow to die."""
        return JobStatus.model_validate(await self.request("cancel", job_id=job_id))

    async def list_jobs(self, **filters: Any) -> list[JobSummary]:
        """As ``Client.list_jobs``."""
        return (await self.list_page(**filters)).jobs

    async def list_page(self, **filters: Any) -> JobList:
        """As ``Client.list_page``."""
        return JobList.model_validate(await self.request("list", **filters))

    async def stats(self) -> StatsResult:
        """Counters since the daemon started."""
        return StatsResult.model_validate(await self.request("stats"))
