"""The Unix-socket server: one task per connection, requests in order.

A connection is a private conversation: whatever one client sends (garbage,
a huge line, a hang-up mid-job) is answered or ends on that connection
alone. Requests on one connection are served one at a time, so replies come
back in request order; concurrency comes from opening more connections.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from cuprumd import __version__
from cuprumd.containment import Guard
from cuprumd.engine.environment import denied_env_names
from cuprumd.errors import (
    BadRequest,
    Forbidden,
    FrameTooLarge,
    Internal,
    ProtocolError,
)
from cuprumd.jobs import Job, JobRegistry
from cuprumd.listener import Listener
from cuprumd.logging import get_logger
from cuprumd.models import JobSpec
from cuprumd.peers import Peer, is_peer_allowed, peer_credentials
from cuprumd.programs import Allowlist
from cuprumd.protocol import (
    PROTOCOL_VERSION,
    CancelRequest,
    JobList,
    JobRef,
    JobStatus,
    JobSummary,
    ListRequest,
    PingRequest,
    PingResult,
    RequestError,
    RunRequest,
    StatsRequest,
    StatsResult,
    StatusRequest,
    SubmitRequest,
    WaitRequest,
    error_reply,
    ok_reply,
    parse_request,
    read_frame,
)
from cuprumd.settings import Settings

__all__ = ["Server"]

_log = get_logger("cuprumd.server")
#: How often a half-closed or pipelining ``run`` client is checked for a
#: full hang-up (a plain hang-up is noticed at once).
HANGUP_POLL_SECONDS = 0.25
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL
_NOTHING = object()


def _hung_up(fd: int) -> bool:
    """Whether the peer closed both directions (half-close is not a hang-up)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & _GONE for _fd, events in poller.poll(0))


@dataclass(eq=False)
class Connection:
    """One client connection; ``pending`` holds a frame read ahead while a
    ``run`` watched for hang-up, so it is served next, never lost."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: Peer
    fd: int
    task: asyncio.Task[None] | None = None
    busy: bool = False
    pending: object = field(default=_NOTHING)

    async def next_frame(self) -> bytes | None:
        frame, self.pending = self.pending, _NOTHING
        if frame is _NOTHING:
            return await read_frame(self.reader)
        if isinstance(frame, FrameTooLarge):
            raise frame
        assert frame is None or isinstance(frame, bytes)
        return frame

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hangup(self) -> None:
        """Return once the client is gone for good."""
        if self.pending is _NOTHING:
            try:
                self.pending = await read_frame(self.reader)
            except FrameTooLarge as exc:
                self.pending = exc
            except OSError:
                return
        while not _hung_up(self.fd):
            await asyncio.sleep(HANGUP_POLL_SECONDS)


Handler = Callable[[Connection, Any], Awaitable[BaseModel | None]]


class Server:
    """Serves the protocol on a listener, backed by a job registry."""

    def __init__(
        self,
        settings: Settings,
        backend: str,
        allowlist: Allowlist,
        registry: JobRegistry,
        guard: Guard,
    ) -> None:
        self._settings = settings
        self._guard = guard
        self._backend = backend
        self._allowlist = allowlist
        self._registry = registry
        self._connections: set[Connection] = set()
        self._errors: Counter[str] = Counter()
        self._closing = False
        self._started = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        self._handlers: dict[type[BaseModel], Handler] = {
            PingRequest: self._ping,
            RunRequest: self._run,
            SubmitRequest: self._submit,
            StatusRequest: self._status,
            WaitRequest: self._wait,
            CancelRequest: self._cancel,
            ListRequest: self._list,
            StatsRequest: self._stats,
        }

    async def start(self, listener: Listener) -> None:
        """Accept connections on the listener (already bound and listening)."""
        self._server = await asyncio.start_unix_server(
            self._handle, sock=listener.sock, limit=self._settings.max_request_bytes
        )

    # -- connections -------------------------------------------------------

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn: Connection | None = None
        try:
            sock = writer.get_extra_info("socket")
            conn = Connection(
                reader, writer, peer_credentials(sock), sock.fileno(), task=None
            )
            conn.task = asyncio.current_task()
            self._connections.add(conn)
            await self._converse(conn)
        except (ConnectionError, TimeoutError) as exc:
            _log.debug("connection.lost", error=type(exc).__name__)
        except asyncio.CancelledError:
            pass  # shutdown closes idle connections
        except Exception:  # one client's fault must never reach the daemon
            _log.exception(
                "connection.error", **({} if conn is None else conn.peer.as_log())
            )
        finally:
            if conn is not None:
                self._connections.discard(conn)
            writer.close()

    async def _converse(self, conn: Connection) -> None:
        refusal = self._refusal(conn.peer)
        if refusal is not None:
            # Not a byte of a refused peer's input is read, let alone parsed.
            _log.warning("peer.forbidden", reason=refusal, **conn.peer.as_log())
            self._errors[Forbidden.code] += 1
            await conn.send(error_reply(None, Forbidden(refusal)))
            return
        while not self._closing:
            try:
                frame = await conn.next_frame()
            except FrameTooLarge as exc:
                self._errors[exc.code] += 1
                await conn.send(error_reply(None, exc))
                return
            if frame is None:
                return
            conn.busy = True
            reply = await self._dispatch(conn, frame)
            if reply is None:
                return
            await conn.send(reply)
            conn.busy = False

    def _refusal(self, peer: Peer) -> str | None:
        """Why ``peer`` may not talk to us, or None; judged on accept."""
        settings = self._settings
        if self._guard.is_job_peer(peer):
            return "jobs cannot submit jobs"
        if not is_peer_allowed(
            peer, settings.allowed_uids, settings.allowed_gids, os.getuid()
        ):
            return f"uid {peer.uid} / gid {peer.gid} may not use this daemon"
        return None

    async def _dispatch(self, conn: Connection, frame: bytes) -> bytes | None:
        """The reply to one frame, or ``None`` when the client left."""
        try:
            request = parse_request(frame, max_stages=self._settings.max_stages)
        except RequestError as exc:
            self._errors[exc.error.code] += 1
            _log.info("request.invalid", code=exc.error.code, **conn.peer.as_log())
            return error_reply(exc.request_id, exc.error)
        try:
            result = await self._handlers[type(request)](conn, request)
        except ProtocolError as exc:
            self._errors[exc.code] += 1
            return error_reply(request.id, exc)
        except Exception:
            _log.exception("request.failed", op=request.op, **conn.peer.as_log())
            self._errors[Internal.code] += 1
            return error_reply(request.id, Internal("internal error; see daemon log"))
        return None if result is None else ok_reply(request.id, result)

    # -- operations ----------------------------------------------------------

    async def _ping(self, _conn: Connection, _request: PingRequest) -> PingResult:
        return PingResult(
            version=__version__,
            protocol=PROTOCOL_VERSION,
            stream_backend=self._backend,
            pid=os.getpid(),
        )

    def _admit(self, conn: Connection, spec: JobSpec, *, detached: bool) -> Job:
        """Check the allowlist, then take a slot: nothing is spawned for a
        job that would be refused."""
        try:
            self._check_contained(spec)
            executables = self._allowlist.resolve_all(spec.argv0s)
            return self._registry.admit(spec, executables, conn.peer, detached=detached)
        except ProtocolError as exc:
            _log.warning(
                "job.rejected",
                code=exc.code,
                reason=str(exc),
                argv0s=spec.argv0s,
                **conn.peer.as_log(),
            )
            raise

    def _check_contained(self, spec: JobSpec) -> None:
        """Refuse what would let a job step outside its sandbox or limits."""
        limit = self._settings.max_timeout_seconds
        if spec.timeout is not None and spec.timeout > limit:
            msg = (
                f"job.timeout: {spec.timeout} s is more than "
                f"max_timeout_seconds ({limit})"
            )
            raise BadRequest(msg)
        denied = denied_env_names(spec.env, self._settings.job_env_deny)
        if denied:
            msg = (
                f"env {denied[0]!r} may not be set by a job: it matches "
                "job_env_deny (loader and interpreter hooks run code)"
            )
            raise BadRequest(msg)
        if spec.cwd is not None and not self._guard.policy.allows_cwd(spec.cwd):
            msg = (
                f"cwd {spec.cwd!r} is outside the paths the sandbox lets a "
                "stage read (system paths and readable_paths)"
            )
            raise BadRequest(msg)

    async def _run(self, conn: Connection, request: RunRequest) -> BaseModel | None:
        job = self._admit(conn, request.job, detached=False)
        try:
            watcher = asyncio.create_task(conn.hangup())
            finished = asyncio.create_task(job.done.wait())
            await asyncio.wait({watcher, finished}, return_when=asyncio.FIRST_COMPLETED)
            for task in (watcher, finished):
                task.cancel()
            await asyncio.wait({watcher, finished})  # the reader is free again
            if not job.done.is_set():
                _log.info("job.client_gone", job_id=job.job_id, **conn.peer.as_log())
                self._registry.cancel(job)
                await job.done.wait()
                return None
            return job.result
        finally:
            self._registry.forget(job)

    async def _submit(self, conn: Connection, request: SubmitRequest) -> JobRef:
        return JobRef(job_id=self._admit(conn, request.job, detached=True).job_id)

    async def _status(self, conn: Connection, request: StatusRequest) -> JobStatus:
        job = self._registry.get(request.job_id, conn.peer)
        return JobStatus(job_id=job.job_id, state=job.state)

    async def _wait(self, conn: Connection, request: WaitRequest) -> BaseModel:
        job = self._registry.get(request.job_id, conn.peer)
        return await self._registry.wait(job, request.timeout)

    async def _cancel(self, conn: Connection, request: CancelRequest) -> JobStatus:
        """Reply once the job has ended, so the state is final, unless its
        processes outlast the kill grace."""
        job = self._registry.get(request.job_id, conn.peer)
        self._registry.cancel(job)
        ended = asyncio.create_task(job.done.wait())
        await asyncio.wait({ended}, timeout=self._settings.kill_grace_seconds + 1.0)
        ended.cancel()
        return JobStatus(job_id=job.job_id, state=job.state)

    async def _list(self, conn: Connection, _request: ListRequest) -> JobList:
        jobs = [
            JobSummary(job_id=job.job_id, state=job.state, argv0s=job.spec.argv0s)
            for job in self._registry.jobs(conn.peer)
        ]
        return JobList(jobs=jobs)

    async def _stats(self, _conn: Connection, _request: StatsRequest) -> StatsResult:
        counters: dict[str, Any] = self._registry.counters()
        return StatsResult(
            **counters,
            errors=dict(self._errors),
            connections=len(self._connections),
            max_concurrent_jobs=self._settings.max_concurrent_jobs,
            max_queued_jobs=self._settings.max_queued_jobs,
            stream_backend=self._backend,
            uptime_seconds=round(time.monotonic() - self._started, 3),
        )

    # -- shutdown ------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections carry on."""
        if self._server is not None:
            self._server.close()

    async def close_connections(self, flush_seconds: float = 5.0) -> None:
        """End every conversation: idle ones now, busy ones once their reply
        is written (or ``flush_seconds`` pass)."""
        self._closing = True
        tasks = {conn.task for conn in self._connections if conn.task is not None}
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=flush_seconds)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
