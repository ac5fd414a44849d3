"""The Unix-socket server: one task per connection, requests in order.

A connection is a private conversation: whatever one client sends (garbage,
a huge line, a hang-up mid-job) is answered or ends on that connection
alone. Requests on one connection are served one at a time, so replies come
back in request order; concurrency comes from opening more connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import errno
import functools
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

from pydantic import BaseModel

from cuprumd import __version__
from cuprumd.channel import Channel
from cuprumd.containment import Guard
from cuprumd.engine.environment import denied_env_names
from cuprumd.engine.passed import PassedStreams, StreamName
from cuprumd.errors import (
    BadRequest,
    Busy,
    Forbidden,
    Internal,
    ProtocolError,
)
from cuprumd.fdio import ChunkQueue, Deliver, wake
from cuprumd.frames import FREE_BYTES, Frame, FrameBudget, FrameReader
from cuprumd.jobs import Job, JobRegistry
from cuprumd.listener import Listener
from cuprumd.logging import get_logger
from cuprumd.memory import HeapTrimmer
from cuprumd.models import JobSpec
from cuprumd.peers import Peer, is_peer_allowed, peer_credentials
from cuprumd.programs import Allowlist
from cuprumd.protocol import (
    FEATURES,
    PROTOCOL_VERSION,
    CancelRequest,
    FollowRequest,
    JobList,
    JobRef,
    JobStatus,
    ListRequest,
    PingRequest,
    PingResult,
    Request,
    RequestError,
    RunRequest,
    StatsRequest,
    StatsResult,
    StatusRequest,
    StdinRequest,
    SubmitRequest,
    WaitRequest,
    error_reply,
    ok_reply,
    output_event,
    parse_request,
)
from cuprumd.settings import Settings

__all__ = ["Server"]

_log = get_logger("cuprumd.server")
#: How often a half-closed or pipelining ``run`` client is checked for a
#: full hang-up (a plain hang-up is noticed at once).
HANGUP_POLL_SECONDS = 0.25
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
)
ACCEPT_RETRY_SECONDS = 0.1
_NOTHING = object()
#: Large request frames (``max_request_bytes`` each) held at once, all
#: connections together; see ``cuprumd.frames``.
LARGE_FRAMES = 8


def _check_descriptors(request: Request, frame: Frame) -> None:
    """The descriptors that came with a request must be the ones it names."""
    named = request.fds if isinstance(request, RunRequest | SubmitRequest) else []
    if len(frame.fds) != len(named):
        msg = (
            f"{len(frame.fds)} descriptors came with a request that names "
            f"{len(named)} in 'fds'"
        )
        raise BadRequest(msg)


def _hung_up(fd: int) -> bool:
    """Whether the peer closed both directions (half-close is not a hang-up)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & _GONE for _fd, events in poller.poll(0))


async def _ended_before_stirring(channel: Channel, job: Job) -> bool:
    """Wait until the job ends or the client's socket turns readable; True
    if the job ended (whether or not the socket stirred too)."""
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    on_end = functools.partial(wake, woken)
    job.done.add_callback(on_end)
    channel.wake_when_readable(woken)
    try:
        await woken
    finally:
        channel.stop_waking(woken)
        job.done.remove_callback(on_end)
    return job.done.is_set()


@dataclass(eq=False)
class Connection:
    """One client connection; ``pending`` holds a frame read ahead while a
    ``run`` watched for hang-up, so it is served next, never lost.

    ``watcher`` is that hang-up watch, cancelled once the job ended but
    possibly still unwinding: the reply need not wait for it, the next read
    does."""

    frames: FrameReader
    channel: Channel
    peer: Peer
    task: asyncio.Task[None] | None = None
    busy: bool = False
    pending: object = field(default=_NOTHING)
    watcher: asyncio.Task[None] | None = None

    async def stop_watching(self) -> None:
        """Return once no hang-up watch reads from the socket."""
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher})

    async def next_frame(self) -> Frame | None:
        await self.stop_watching()
        frame, self.pending = self.pending, _NOTHING
        if frame is _NOTHING:
            return await self.frames.next()
        if isinstance(frame, ProtocolError):
            raise frame
        assert frame is None or isinstance(frame, Frame)
        return frame

    async def send(self, data: bytes) -> None:
        await self.channel.send(data)

    async def hangup(self) -> None:
        """Return once the client is gone for good."""
        if self.pending is _NOTHING:
            try:
                self.pending = await self.frames.next()
            except ProtocolError as exc:  # too large, or too many descriptors
                self.pending = exc
            except OSError:
                return
        while not _hung_up(self.channel.fd):
            await asyncio.sleep(HANGUP_POLL_SECONDS)

    def close(self) -> None:
        """Give back what the connection holds: a read-ahead frame's lease,
        a partial line, the socket."""
        if isinstance(self.pending, Frame):
            self.pending.close()
        self.pending = _NOTHING
        self.frames.close()
        self.channel.close()


def _decode_stdin(data: str, encoding: str) -> bytes:
    """A ``stdin`` chunk's bytes, in the job's ``stdin_encoding``."""
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            msg = f"stdin chunk is not valid base64: {exc}"
            raise ValueError(msg) from None
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"stdin chunk is not valid Unicode text ({exc.reason})"
        raise ValueError(msg) from None


#: How often ``follow`` looks for more output while the job is quiet.
FOLLOW_POLL_SECONDS = 0.1


async def _until(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class _Tail:
    """One spool file followed from where it was last read."""

    def __init__(
        self, path: Path, stream: str, stage: int, sender: _EventSender
    ) -> None:
        self._path = path
        self._fd: int | None = None
        self._deliver = sender.deliver_for(stream, stage)

    async def pump(self) -> bool:
        """Send what was added since the last call; whether there was any."""
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False  # the job has not started yet
        sent = False
        while chunk := os.read(self._fd, FOLLOW_CHUNK):
            await self._deliver(chunk)
            sent = True
        return sent

    async def finish(self) -> None:
        """The stream is complete: flush a character cut at its end."""
        await self._deliver(None)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: Bytes per ``output`` event that ``follow`` sends.
FOLLOW_CHUNK = 256 << 10


class _EventSender:
    """Sends a streaming run's output events, one at a time and in order.

    Each stream's relay waits for its event to be written before it reads
    more, so the job's output is held by its pipes while the client's
    socket is full. A client that does not read for ``timeout`` seconds, or
    is gone, fails the send: the job is cancelled and the connection, whose
    last line may be cut, is closed.
    """

    def __init__(
        self,
        conn: Connection,
        request_id: Any,
        encoding: str,
        timeout: float,
        on_fail: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._id = request_id
        self._encoding = encoding
        self._timeout = timeout
        self._on_fail = on_fail
        self._lock = asyncio.Lock()
        self.failed = False

    def deliver_for(self, stream: str, stage: int) -> Deliver:
        decoder = (
            None
            if self._encoding == "base64"
            else codecs.getincrementaldecoder("utf-8")("replace")
        )

        async def deliver(chunk: bytes | None) -> None:
            if decoder is None:
                text = "" if chunk is None else base64.b64encode(chunk).decode()
            else:
                text = decoder.decode(chunk or b"", final=chunk is None)
            if text:
                await self._send(output_event(self._id, stream, stage, text))

        return deliver

    async def _send(self, line: bytes) -> None:
        if self.failed:
            raise ConnectionAbortedError("the client stopped taking events")
        try:
            async with self._lock, asyncio.timeout(self._timeout):
                await self._conn.send(line)
        except BaseException:
            self.failed = True
            self._on_fail()
            raise


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
        self._by_uid: Counter[int] = Counter()
        self._budget = FrameBudget(LARGE_FRAMES * settings.max_request_bytes)
        self._heap = HeapTrimmer()
        self._errors: Counter[str] = Counter()
        self._errors_by_uid: dict[int, Counter[str]] = {}
        self._closing = False
        self._started = time.monotonic()
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, settings: Settings, allowlist: Allowlist) -> None:
        """Serve with reloaded settings from the next request on."""
        self._settings = settings
        self._allowlist = allowlist

    async def start(self, listener: Listener) -> None:
        """Accept connections on the listener (already bound and listening)."""
        listener.sock.setblocking(False)  # noqa: FBT003
        self._accepting = asyncio.create_task(self._accept(listener.sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    _log.error("listener.failed", error=str(exc))
                    return
                # Out of descriptors or memory: a closing connection frees
                # some; the backlog holds new ones meanwhile.
                _log.warning("listener.accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            client.setblocking(False)  # noqa: FBT003
            task = asyncio.create_task(self._handle(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- connections -------------------------------------------------------

    async def _handle(self, sock: socket.socket) -> None:
        conn: Connection | None = None
        channel = Channel(sock)
        try:
            peer = peer_credentials(sock)
            refusal = self._refusal(peer)
            if refusal is not None:
                await self._turn_away(channel, peer, refusal)
                return
            conn = Connection(
                FrameReader(channel, self._settings.max_request_bytes, self._budget),
                channel,
                peer,
                task=asyncio.current_task(),
            )
            self._connections.add(conn)
            self._by_uid[peer.uid] += 1
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
            if conn is None:
                channel.close()
            else:
                self._connections.discard(conn)
                self._by_uid[conn.peer.uid] -= 1
                if self._by_uid[conn.peer.uid] <= 0:
                    del self._by_uid[conn.peer.uid]
                try:
                    await conn.stop_watching()
                finally:
                    conn.close()

    async def _turn_away(
        self, channel: Channel, peer: Peer, refusal: ProtocolError
    ) -> None:
        """One error line, then close: not a byte of the peer's input is
        read, let alone parsed."""
        _log.warning(
            "peer.refused", code=refusal.code, reason=str(refusal), **peer.as_log()
        )
        self._count_error(peer, refusal.code)
        async with asyncio.timeout(1.0):
            await channel.send(error_reply(None, refusal))

    def _refusal(self, peer: Peer) -> ProtocolError | None:
        """Why ``peer`` may not open a conversation now, or None; judged on
        accept, before anything it sent is read."""
        settings = self._settings
        if self._guard.is_job_peer(peer):
            return Forbidden("jobs cannot submit jobs")
        if not is_peer_allowed(
            peer, settings.allowed_uids, settings.allowed_gids, os.getuid()
        ):
            return Forbidden(f"uid {peer.uid} / gid {peer.gid} may not use this daemon")
        if len(self._connections) >= settings.max_connections:
            return Busy(
                f"the daemon holds {len(self._connections)} connections, its "
                "max_connections; retry later"
            )
        held = self._by_uid[peer.uid]
        if held >= settings.max_connections_per_uid:
            return Busy(
                f"uid {peer.uid} holds {held} connections, the "
                "max_connections_per_uid limit; close some or retry later"
            )
        return None

    async def _converse(self, conn: Connection) -> None:
        idle = self._settings.idle_timeout_seconds
        while not self._closing:
            try:
                async with asyncio.timeout(idle):
                    frame = await conn.next_frame()
            except ProtocolError as exc:  # the stream cannot be read on from here
                self._count_error(conn.peer, exc.code)
                await conn.send(error_reply(None, exc))
                return
            except TimeoutError:
                _log.info("connection.idle", seconds=idle, **conn.peer.as_log())
                return
            if frame is None:
                return
            conn.busy = True
            large = len(frame.data) > FREE_BYTES
            try:
                reply = await self._dispatch(conn, frame)
            finally:
                frame.close()  # what a job did not take
                del frame
            if reply is None:
                return
            large = large or len(reply) > FREE_BYTES
            await self._journaled()
            sent = conn.channel.send_now(reply)
            try:
                # A client that does not read its reply costs this one reply,
                # and only for as long as an idle connection may live.
                if sent < len(reply):
                    async with asyncio.timeout(idle):
                        await conn.send(reply[sent:])
            except TimeoutError:
                _log.info("connection.stalled", seconds=idle, **conn.peer.as_log())
                return
            del reply
            if large:
                self._heap.after_large()
            conn.busy = False

    async def _journaled(self) -> None:
        """Wait for the journal's pending commit, if there is one: a reply
        may tell of a job's end (``status``, ``wait``, ``list``, a ``run``'s
        result), and a crash must not take back what a client was told. A
        conversation that never waits for its client (each request already
        there when the last reply went out) would otherwise never let the
        end-of-turn commit run. A commit that failed was logged; the reply
        still goes."""
        with contextlib.suppress(Exception):
            await self._registry.durable()

    async def _dispatch(self, conn: Connection, frame: Frame) -> bytes | None:
        """The reply to one frame, or ``None`` when the client left."""
        max_stages = self._settings.max_stages
        try:
            if len(frame.data) > FREE_BYTES:
                # Decoding megabytes must not stall every other connection.
                request = await asyncio.to_thread(
                    parse_request, frame.data, max_stages=max_stages
                )
            else:
                request = parse_request(frame.data, max_stages=max_stages)
        except RequestError as exc:
            self._count_error(conn.peer, exc.error.code)
            _log.info("request.invalid", code=exc.error.code, **conn.peer.as_log())
            return error_reply(exc.request_id, exc.error)
        try:
            _check_descriptors(request, frame)
            result = await self._serve(conn, request, frame)
        except ProtocolError as exc:
            self._count_error(conn.peer, exc.code)
            return error_reply(request.id, exc)
        except Exception:
            _log.exception("request.failed", op=request.op, **conn.peer.as_log())
            self._count_error(conn.peer, Internal.code)
            return error_reply(request.id, Internal("internal error; see daemon log"))
        return None if result is None else ok_reply(request.id, result)

    async def _serve(  # noqa: PLR0911 - one arm per op
        self, conn: Connection, request: Request, frame: Frame
    ) -> BaseModel | None:
        match request:
            case PingRequest():
                return self._ping()
            case RunRequest():
                return await self._run(conn, request, frame)
            case SubmitRequest():
                return await self._submit(conn, request, frame)
            case StatusRequest():
                return self._status(conn, request)
            case WaitRequest():
                return await self._wait(conn, request)
            case CancelRequest():
                return await self._cancel(conn, request)
            case ListRequest():
                return self._list(conn, request)
            case StatsRequest():
                return self._stats(conn)
            case FollowRequest():
                return await self._follow(conn, request)
            case StdinRequest():
                msg = (
                    "stdin is taken only while a run with stdin_stream reads "
                    "its input on this connection"
                )
                raise BadRequest(msg)
            case _:
                assert_never(request)

    # -- operations ----------------------------------------------------------

    def _ping(self) -> PingResult:
        return PingResult(
            version=__version__,
            protocol=PROTOCOL_VERSION,
            stream_backend=self._backend,
            pid=os.getpid(),
            features=list(FEATURES),
        )

    def _admit(
        self,
        conn: Connection,
        spec: JobSpec,
        frame: Frame,
        names: list[StreamName],
        *,
        detached: bool,
    ) -> Job:
        """Check the allowlist, then take a slot: nothing is spawned for a
        job that would be refused. An admitted job keeps the frame's lease
        while it holds the frame's input."""
        try:
            self._check_contained(spec)
            executables = self._allowlist.resolve_all(spec.argv0s)
            job = self._registry.admit(
                spec,
                executables,
                conn.peer,
                detached=detached,
                captures=not {"stdout", "stderr"} <= set(names),
            )
            job.input_lease = frame.lease.hand_over()
            if names:
                job.passed = PassedStreams(
                    dict(zip(names, frame.take_fds(), strict=True))
                )
            return job
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

    async def _run(
        self, conn: Connection, request: RunRequest, frame: Frame
    ) -> BaseModel | None:
        job = self._admit(conn, request.job, frame, request.fds, detached=False)
        sender: _EventSender | None = None
        if request.stream:
            sender = _EventSender(
                conn,
                request.id,
                request.job.output_encoding,
                self._settings.idle_timeout_seconds,
                on_fail=lambda: self._registry.cancel(job),
            )
            job.streamer = sender.deliver_for
        feed: asyncio.Task[None] | None = None
        if request.stdin_stream:
            job.stdin_chunks = ChunkQueue()
            feed = asyncio.create_task(
                self._feed_stdin(conn, job.stdin_chunks, request.job.stdin_encoding)
            )
        try:
            if feed is not None:
                finished = asyncio.create_task(job.done.wait())
                await asyncio.wait(
                    {feed, finished}, return_when=asyncio.FIRST_COMPLETED
                )
                finished.cancel()
                if not feed.done():  # the job ended first: take the rest of its input
                    async with asyncio.timeout(self._settings.idle_timeout_seconds):
                        await feed
                feed.result()
            if not await self._outlasted_by_client(conn, job):
                _log.info("job.client_gone", job_id=job.job_id, **conn.peer.as_log())
                self._registry.cancel(job)
                await job.done.wait()
                return None
            if sender is not None and sender.failed:
                return None  # the client stopped reading its events
            return self._registry.result_for(job)
        finally:
            if feed is not None and not feed.done():
                feed.cancel()
                await asyncio.wait({feed})
            if not job.done.is_set():  # the conversation broke off mid-run
                self._registry.cancel(job)
                await asyncio.shield(job.done.wait())
            self._registry.forget(job)

    async def _outlasted_by_client(self, conn: Connection, job: Job) -> bool:
        """Wait for the job; False if its client left first.

        A client that waits in silence, the usual case, costs one callback
        on its socket. Only when the socket stirs (a pipelined request, or a
        hang-up) does a watch read ahead, left to unwind while the reply
        goes out (``Connection``)."""
        if job.done.is_set():
            return True
        if conn.pending is _NOTHING and await _ended_before_stirring(conn.channel, job):
            return True
        watcher = asyncio.create_task(conn.hangup())
        finished = asyncio.create_task(job.done.wait())
        await asyncio.wait({watcher, finished}, return_when=asyncio.FIRST_COMPLETED)
        finished.cancel()
        watcher.cancel()
        conn.watcher = watcher
        return job.done.is_set()

    async def _feed_stdin(
        self, conn: Connection, chunks: ChunkQueue, encoding: str
    ) -> None:
        """Pass ``stdin`` requests on to the job until one says ``eof`` (or
        the client half-closes): one frame at a time, each only once the
        job took the last, so the client sends no faster than the job
        reads. A request of another kind ends the input and is served
        after the run."""
        try:
            while True:
                frame = await conn.next_frame()
                if frame is None:
                    conn.pending = None
                    return
                try:
                    request = parse_request(frame.data, max_stages=1)
                except RequestError:
                    request = None
                if not isinstance(request, StdinRequest):
                    conn.pending = frame  # not input: the next request
                    return
                frame.close()
                try:
                    data = _decode_stdin(request.data, encoding)
                except ValueError as exc:
                    _log.info("request.invalid", code="bad_request", reason=str(exc))
                    return
                if data:
                    await chunks.put(data)
                if request.eof:
                    return
        finally:
            await chunks.put(None)

    async def _submit(
        self, conn: Connection, request: SubmitRequest, frame: Frame
    ) -> JobRef:
        job = self._admit(conn, request.job, frame, request.fds, detached=True)
        await self._registry.durable()  # acknowledged means journaled
        return JobRef(job_id=job.job_id)

    def _status(self, conn: Connection, request: StatusRequest) -> JobStatus:
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

    async def _follow(
        self, conn: Connection, request: FollowRequest
    ) -> JobStatus | None:
        """Send what the job's spool holds, and (``live``) what is added,
        until the job has ended and all of it was sent."""
        job = self._registry.get(request.job_id, conn.peer)
        spool = self._registry.spool
        if spool is None:
            msg = "follow reads the spool in state_dir; this daemon has none"
            raise BadRequest(msg)
        sender = _EventSender(
            conn,
            request.id,
            job.spec.output_encoding,
            self._settings.idle_timeout_seconds,
            on_fail=lambda: None,
        )
        stages = len(job.spec.stages)
        streams = [("stdout", stages - 1)] + [("stderr", i) for i in range(stages)]
        readers = [
            _Tail(spool.stream_path(job.job_id, name, i), name, i, sender)
            for name, i in streams
        ]
        try:
            while True:
                ended = job.done.is_set()  # before reading: nothing is missed
                sent = [await tail.pump() for tail in readers]
                if ended or not request.live:
                    break
                if not any(sent):
                    await _until(job.done, FOLLOW_POLL_SECONDS)
            for tail in readers:
                await tail.finish()
        except (OSError, TimeoutError):
            return None  # the client left, or stopped reading: it is over
        finally:
            for tail in readers:
                tail.close()
        return JobStatus(job_id=job.job_id, state=job.state)

    def _list(self, conn: Connection, request: ListRequest) -> JobList:
        jobs, cursor = self._registry.listing(conn.peer, request)
        return JobList(jobs=jobs, cursor=cursor)

    def _count_error(self, peer: Peer, code: str) -> None:
        self._errors[code] += 1
        self._errors_by_uid.setdefault(peer.uid, Counter())[code] += 1

    def _stats(self, conn: Connection) -> StatsResult:
        """Root and the daemon's user see the daemon's counters; anyone else
        sees only their own jobs, errors and connections."""
        uid = conn.peer.uid
        whole = uid in (0, os.getuid())
        counters: dict[str, Any] = self._registry.counters(None if whole else uid)
        errors = self._errors if whole else self._errors_by_uid.get(uid, Counter())
        return StatsResult(
            **counters,
            scope="daemon" if whole else "uid",
            errors=dict(errors),
            connections=len(self._connections) if whole else self._by_uid[uid],
            max_concurrent_jobs=self._settings.max_concurrent_jobs,
            max_queued_jobs=self._settings.max_queued_jobs,
            stream_backend=self._backend,
            uptime_seconds=round(time.monotonic() - self._started, 3),
        )

    # -- shutdown ------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections carry on."""
        if self._accepting is not None:
            self._accepting.cancel()

    async def close_connections(self, flush_seconds: float = 5.0) -> None:
        """End every conversation: idle ones now, busy ones once their reply
        is written (or ``flush_seconds`` pass)."""
        self._closing = True
        self._heap.close()
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
