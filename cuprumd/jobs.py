"""The job registry: admission, the queue, running slots, results, shutdown.

Every job passes through here exactly once and ends here exactly once
(``_finish``), whichever way it ends — ran, cancelled while queued, runner
crash, shutdown — so counters and the ``job.finished`` event cannot miss or
double-count one. The runner is injected, so this is tested without
spawning anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, get_args

from cuprumd.engine.passed import PassedStreams
from cuprumd.engine.streams import OutputStreamer
from cuprumd.errors import Busy, NotFound, WaitTimeout
from cuprumd.fdio import ChunkQueue
from cuprumd.frames import Lease
from cuprumd.history import History, lost_result, spec_of
from cuprumd.journal import JournalRecord
from cuprumd.logging import get_logger
from cuprumd.models import JobResult, JobSpec, JobState, PumpName
from cuprumd.outcome import Facts, build_result, now_iso
from cuprumd.peers import Peer
from cuprumd.protocol import JobSummary
from cuprumd.protocol import ListRequest as Listing
from cuprumd.spool import JobFiles, Spool

__all__ = ["Job", "JobRegistry", "Limits", "Runner", "unstarted_result"]

_log = get_logger("cuprumd.jobs")
_JOB_ID = re.compile(r"[0-9a-f]{16}")
#: With a journal, how many finished submitted jobs stay in memory (a few
#: KiB each) so that fetching a fresh result costs no query; older ones
#: are read back from the journal, and memory does not grow with them.
RECENT_RESULTS = 256
_END_STATES = [state for state in JobState if state.finished]
_PUMPS: tuple[str, ...] = get_args(PumpName)


class _LimitSettings(Protocol):
    """What ``Limits.from_settings`` reads (``Settings`` has it)."""

    @property
    def max_concurrent_jobs(self) -> int: ...
    @property
    def max_queued_jobs(self) -> int: ...
    @property
    def result_retention_seconds(self) -> float: ...
    @property
    def max_retained_bytes(self) -> int: ...
    @property
    def max_retained_jobs(self) -> int: ...
    @property
    def max_output_bytes(self) -> int: ...
    @property
    def max_running_jobs_per_uid(self) -> int | None: ...
    @property
    def max_queued_jobs_per_uid(self) -> int | None: ...


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The settings that shape admission and retention (their defaults live
    in the settings model only)."""

    max_concurrent_jobs: int
    max_queued_jobs: int
    result_retention_seconds: float
    max_retained_bytes: int
    max_retained_jobs: int
    #: What a submitted job reserves of ``max_retained_bytes`` until it ends.
    max_output_bytes: int
    max_running_jobs_per_uid: int | None
    max_queued_jobs_per_uid: int | None

    @classmethod
    def from_settings(cls, settings: _LimitSettings) -> Limits:
        return cls(
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_queued_jobs=settings.max_queued_jobs,
            result_retention_seconds=settings.result_retention_seconds,
            max_retained_bytes=settings.max_retained_bytes,
            max_retained_jobs=settings.max_retained_jobs,
            max_output_bytes=settings.max_output_bytes,
            max_running_jobs_per_uid=settings.max_running_jobs_per_uid,
            max_queued_jobs_per_uid=settings.max_queued_jobs_per_uid,
        )

    def running_cap(self) -> int:
        """How many jobs one uid may run at once."""
        per_uid = self.max_running_jobs_per_uid
        return self.max_concurrent_jobs if per_uid is None else per_uid

    def queued_cap(self) -> int:
        """How many jobs one uid may have waiting."""
        per_uid = self.max_queued_jobs_per_uid
        return self.max_queued_jobs if per_uid is None else per_uid


class Finished(asyncio.Event):
    """A job's end: an ``asyncio.Event`` that can also call back.

    A client waiting for its job and for its own hang-up at once would
    otherwise need a task per thing it waits for, and each costs event-loop
    turns between the job's end and its reply.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once it is set (now, if it is)."""
        if self.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Forget ``callback`` if it has not been called (idempotent)."""
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


@dataclass(eq=False)
class Job:
    """One accepted job. ``detached`` jobs (``submit``) outlive their
    request and keep their result until fetched or expired."""

    job_id: str
    spec: JobSpec
    executables: tuple[str, ...]
    peer: Peer
    detached: bool
    state: JobState = JobState.QUEUED
    result: JobResult | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: Finished = field(default_factory=Finished)
    finished_at: float = 0.0
    #: Admission order and wall-clock time, for ``list``.
    seq: int = 0
    accepted_at: float = field(default_factory=time.time)
    #: Bytes of ``max_retained_bytes`` held for this job's result until it
    #: ends (then its real output size is counted instead).
    reserved: int = 0
    #: The share of the request-frame budget its input came in with; held
    #: while the job holds that input (see ``cuprumd.frames``).
    input_lease: Lease | None = None
    #: Descriptors the client passed, until the runner takes them.
    passed: PassedStreams | None = None
    #: A streaming client: where the output goes as it comes, and where
    #: the input comes from.
    streamer: OutputStreamer | None = None
    stdin_chunks: ChunkQueue | None = None
    #: Its spool files while it runs (with a ``state_dir``).
    spool: JobFiles | None = None
    #: For a job known only from the journal (an earlier daemon's, or one
    #: whose result lives on disk): its record.
    record: JournalRecord | None = None


Runner = Callable[[Job], Awaitable[JobResult]]


def unstarted_result(
    job: Job, state: JobState, message: str, backend: str
) -> JobResult:
    """The result of a job that never ran (cancelled in the queue, or lost
    to a runner fault): same shape as any other, so clients need no case."""
    count = len(job.spec.stages)
    result = build_result(
        Facts(
            job_id=job.job_id,
            backend=backend,
            argvs=[stage.argv for stage in job.spec.stages],
            pids=[None] * count,
            returncodes=[None] * count,
            stderrs=[(b"", False)] * count,
            stdout=(b"", False),
            transfers=[],
            encoding=job.spec.output_encoding,
            started_at=now_iso(),
            duration_ms=0.0,
            error=None,
            end_state=state,
            fail_fast_stage=None,
            passed=() if job.passed is None else job.passed.names,
        )
    )
    return result.model_copy(update={"error": message})


def _log_finished(job: Job, result: JobResult) -> None:
    """``job.finished``, its fields gathered only when it is logged."""
    if _log.is_enabled_for(logging.INFO):
        _log.info("job.finished", **_finished_event(job, result))


def _finished_event(job: Job, result: JobResult) -> dict[str, object]:
    """Metadata only: never stdin, output or environment values."""
    return {
        "job_id": job.job_id,
        "state": str(result.state),
        "duration_ms": result.duration_ms,
        "exit_codes": [stage.exit_code for stage in result.stages],
        "signals": [stage.signal for stage in result.stages],
        "failed_stage": result.failed_stage,
        "bytes": sum(t.bytes for t in result.transfers),
        "pumps": [t.pump for t in result.transfers],
        "fallbacks": sum(t.fallback_reason is not None for t in result.transfers),
        "stdout_truncated": result.stdout_truncated,
        **job.peer.as_log(),
    }


@dataclass
class Tally:
    """Totals since start-up, for the daemon or for one uid."""

    accepted: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    bytes_by_pump: Counter[str] = field(default_factory=Counter)


def _decrement(counts: Counter[int], key: int) -> None:
    """Count one down, dropping the key at zero so the map stays small."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class JobRegistry:
    """Admits jobs up to the limits, runs them, and keeps their results."""

    def __init__(
        self,
        limits: Limits,
        runner: Runner,
        *,
        backend: str,
        daemon_uid: int,
        clock: Callable[[], float] = time.monotonic,
        history: History | None = None,
    ) -> None:
        self._limits = limits
        self._history = history
        self._runner = runner
        self._backend = backend
        self._daemon_uid = daemon_uid
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: dict[Job, asyncio.Task[None]] = {}
        self._retained: OrderedDict[str, Job] = OrderedDict()
        self._retained_bytes = 0
        self._reserved_bytes = 0
        self._detached_open = 0
        self._running_by_uid: Counter[int] = Counter()
        self._queued_by_uid: Counter[int] = Counter()
        self._closing = False
        self._seq = 0
        self._tally = Tally()
        self._tallies: dict[int, Tally] = {}

    def set_limits(self, limits: Limits) -> None:
        """New limits (a reload): they apply to the next admission; jobs
        already admitted keep their place, and raised ones start now."""
        self._limits = limits
        self._fill_slots()

    # -- admission -----------------------------------------------------------

    def admit(
        self,
        spec: JobSpec,
        executables: tuple[str, ...],
        peer: Peer,
        *,
        detached: bool,
        captures: bool = True,
    ) -> Job:
        """Start the job now, or queue it. A job that ``captures`` nothing
        (the client passed its stdout and stderr) reserves no output.

        Raises
        ------
        Busy
            When every slot and queue place is taken, or during shutdown.
        """
        self._purge()
        if self._closing:
            raise Busy("the daemon is shutting down")
        limits = self._limits
        uid = peer.uid
        startable = (
            len(self._running) < limits.max_concurrent_jobs
            and self._running_by_uid[uid] < limits.running_cap()
        )
        if not startable:
            self._check_queue(uid)
        # With a state_dir, results live on disk, bounded by max_state_bytes.
        keeps = detached and self._history is None
        reserve = self._reserve(captures=captures) if keeps else 0
        job = Job(secrets.token_hex(8), spec, executables, peer, detached)
        job.reserved = reserve
        self._seq += 1
        job.seq = self._seq
        if keeps:
            self._detached_open += 1
            self._reserved_bytes += reserve
        self._jobs[job.job_id] = job
        if self._history is not None:
            self._history.accepted(
                job.job_id, spec, peer.uid, peer.gid, detached=detached
            )
        for tally in self._tallies_of(uid):
            tally.accepted += 1
        if _log.is_enabled_for(logging.INFO):  # spare a job the fields' cost
            _log.info(
                "job.accepted",
                job_id=job.job_id,
                argv0s=spec.argv0s,
                detached=detached,
                queued=not startable,
                **peer.as_log(),
            )
        if startable:
            self._start(job)
        else:
            self._queue.append(job)
            self._queued_by_uid[uid] += 1
        return job

    def _check_queue(self, uid: int) -> None:
        limits = self._limits
        if len(self._queue) >= limits.max_queued_jobs:
            msg = (
                f"all {limits.max_concurrent_jobs} job slots are taken and the "
                f"queue is full ({limits.max_queued_jobs}); retry later"
            )
            raise Busy(msg)
        waiting = self._queued_by_uid[uid]
        if waiting >= limits.queued_cap():
            msg = (
                f"uid {uid} already has {waiting} jobs waiting for a slot, the "
                f"max_queued_jobs_per_uid limit ({limits.queued_cap()}); retry "
                "once some have started"
            )
            raise Busy(msg)

    def _reserve(self, *, captures: bool) -> int:
        """Hold room for a submitted job's result before it can produce one,
        so unfetched results never exceed the bounds, however they end."""
        limits = self._limits
        kept = len(self._retained) + self._detached_open
        if kept >= limits.max_retained_jobs:
            msg = (
                f"{kept} submitted jobs are unfetched or unfinished, the "
                f"max_retained_jobs limit ({limits.max_retained_jobs}); fetch "
                "results with wait, or retry once they expire"
            )
            raise Busy(msg)
        wanted = limits.max_output_bytes if captures else 0
        held = self._retained_bytes + self._reserved_bytes
        if held + wanted > limits.max_retained_bytes:
            msg = (
                f"unfetched results hold {self._retained_bytes} bytes and "
                f"unfinished submitted jobs reserve {self._reserved_bytes} "
                f"(max_output_bytes each); one more would pass "
                f"max_retained_bytes ({limits.max_retained_bytes}); fetch "
                "results with wait, or retry later"
            )
            raise Busy(msg)
        return wanted

    def _start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        self._running_by_uid[job.peer.uid] += 1
        self._running[job] = asyncio.create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        result: JobResult | None = None
        try:
            if self._history is not None:
                try:
                    job.spool = self._history.started(job.job_id, len(job.spec.stages))
                except OSError as exc:
                    message = f"cannot keep the job's output in state_dir: {exc}"
                    result = unstarted_result(
                        job, JobState.ERROR, message, self._backend
                    )
            if result is None:
                result = await self._runner(job)
        except Exception as exc:  # a runner fault costs this job, not the daemon
            _log.exception("job.crashed", job_id=job.job_id)
            message = f"internal error while running the job ({type(exc).__name__})"
            result = unstarted_result(job, JobState.ERROR, message, self._backend)
        finally:
            if job.spool is not None:
                job.spool.close()
            if result is None:  # the task itself was cancelled
                message = "the daemon stopped"
                result = unstarted_result(
                    job, JobState.CANCELLED, message, self._backend
                )
            del self._running[job]
            _decrement(self._running_by_uid, job.peer.uid)
            self._finish(job, result)
            self._fill_slots()

    def _fill_slots(self) -> None:
        """Start queued jobs in order, passing over those whose uid already
        runs its share."""
        cap = self._limits.running_cap()
        while self._queue and len(self._running) < self._limits.max_concurrent_jobs:
            job = next(
                (j for j in self._queue if self._running_by_uid[j.peer.uid] < cap),
                None,
            )
            if job is None:
                return
            self._dequeue(job)
            self._start(job)

    def _dequeue(self, job: Job) -> None:
        self._queue.remove(job)
        _decrement(self._queued_by_uid, job.peer.uid)

    def _finish(self, job: Job, result: JobResult) -> None:
        job.result = result
        if job.spec.stdin is not None:  # kept results must not keep inputs
            job.spec = job.spec.model_copy(update={"stdin": None})
        if job.input_lease is not None:
            job.input_lease.release()
            job.input_lease = None
        if job.passed is not None:
            job.passed.close()  # a job that never started still held them
        job.state = result.state
        job.finished_at = self._clock()
        for tally in self._tallies_of(job.peer.uid):
            tally.ended[str(result.state)] += 1
            for transfer in result.transfers:
                tally.bytes_by_pump[transfer.pump] += transfer.bytes
        if self._history is not None:
            for gone in self._history.finished(job.job_id, result):
                _log.info("job.expired", job_id=gone)
                expired = self._jobs.get(gone)
                if expired is not None and expired.done.is_set():
                    self.forget(expired)
            if job.detached and job.job_id in self._jobs:
                # Its result lives on disk; the metadata stays at hand (a
                # bounded number of jobs) so fetching it costs no query.
                self._retained[job.job_id] = job
                while len(self._retained) > RECENT_RESULTS:
                    self.forget(next(iter(self._retained.values())))
        elif job.detached:
            self._detached_open -= 1
            self._reserved_bytes -= job.reserved
            job.reserved = 0
            if job.job_id in self._jobs:
                self._retained[job.job_id] = job
                self._retained_bytes += result.output_bytes
        job.done.set()
        _log_finished(job, result)

    # -- queries ---------------------------------------------------------------

    def get(self, job_id: str, peer: Peer) -> Job:
        """The job, if it exists and ``peer`` may see it.

        Raises
        ------
        NotFound
            Also for another user's job: its existence is not disclosed.
        """
        self._purge()
        job = self._jobs.get(job_id)
        if job is None and self._history is not None and _JOB_ID.fullmatch(job_id):
            job = self._from_journal(job_id)
        if job is None or not self._visible(job, peer):
            msg = f"no job {job_id!r} (never existed, finished and fetched, or expired)"
            raise NotFound(msg)
        if job.record is not None and job.record.expired:
            msg = (
                f"job {job_id!r} expired: its result passed "
                "result_retention_seconds or was dropped for max_state_bytes"
            )
            raise NotFound(msg)
        return job

    def _from_journal(self, job_id: str) -> Job | None:
        """A job known only from the journal, finished by definition (the
        journal's running jobs are in memory, or were lost)."""
        assert self._history is not None
        record = self._history.record(job_id)
        if record is None:
            return None
        job = Job(
            job_id,
            spec_of(record),
            (),
            Peer(0, record.uid, record.gid),
            record.detached,
            state=JobState(record.state),
        )
        job.record = record
        job.done.set()
        return job

    def result_for(self, job: Job) -> JobResult:
        """A finished job's whole result, its output read back from the
        spool when it has one."""
        history = self._history
        if job.record is not None:
            assert history is not None
            stored = history.result_of(job.record)
            return lost_result(job.record) if stored is None else stored
        assert job.result is not None
        if history is None or job.spool is None:
            return job.result
        return history.full_result(job.job_id, job.result)

    @property
    def spool(self) -> Spool | None:
        """Where jobs' output is kept on disk, if anywhere."""
        return None if self._history is None else self._history.spool

    async def durable(self) -> None:
        """Return once every job admitted so far is in the journal."""
        if self._history is not None:
            await self._history.durable()

    def listing(
        self, peer: Peer, query: Listing
    ) -> tuple[list[JobSummary], str | None]:
        """One page of the jobs ``peer`` may see, and the next page's cursor.

        With a journal this is its history (which has every job, current
        ones too); without, the jobs in memory.
        """
        self._purge()
        uid = query.uid
        if peer.uid not in (0, self._daemon_uid):
            if uid is not None and uid != peer.uid:
                return [], None
            uid = peer.uid
        states = None if query.states is None else {str(s) for s in query.states}
        after = int(query.cursor) if query.cursor else 0
        if self._history is not None:
            records = self._history.journal.history(
                uid=uid,
                states=states or None,
                since=query.since,
                until=query.until,
                limit=query.limit + 1,
                after_seq=after,
            )
            page = [r for r in records if not r.expired]
            rows = [
                JobSummary(
                    job_id=r.job_id,
                    state=JobState(r.state),
                    argv0s=list(r.argv0s),
                    uid=r.uid,
                    accepted_at=r.accepted_at,
                    finished_at=r.finished_at,
                )
                for r in page[: query.limit]
            ]
            more = len(records) > query.limit
            return rows, str(records[query.limit - 1].seq) if more else None
        found = [
            job
            for job in self._jobs.values()
            if job.seq > after
            and (uid is None or job.peer.uid == uid)
            and (states is None or str(job.state) in states)
            and (query.since is None or job.accepted_at >= query.since)
            and (query.until is None or job.accepted_at < query.until)
        ]
        rows = [
            JobSummary(
                job_id=job.job_id,
                state=job.state,
                argv0s=job.spec.argv0s,
                uid=job.peer.uid,
                accepted_at=job.accepted_at,
                finished_at=None,
            )
            for job in found[: query.limit]
        ]
        more = len(found) > query.limit
        return rows, str(found[query.limit - 1].seq) if more else None

    def _visible(self, job: Job, peer: Peer) -> bool:
        return peer.uid in (job.peer.uid, 0, self._daemon_uid)

    async def wait(self, job: Job, timeout: float | None) -> JobResult:
        """The job's result once it ends; a detached job's result is then
        handed over and forgotten.

        Raises
        ------
        WaitTimeout
            When ``timeout`` passes first; the job keeps running.
        """
        if not job.done.is_set():
            try:
                await asyncio.wait_for(job.done.wait(), timeout)
            except TimeoutError:
                msg = f"job {job.job_id} is still {job.state} after {timeout} s"
                raise WaitTimeout(msg) from None
        result = self.result_for(job)
        if job.detached and self._history is None:
            self.forget(job)
        return result

    def cancel(self, job: Job) -> None:
        """Ask the job to stop; a queued job ends at once, a running one once
        its processes are gone."""
        if job.record is not None:
            return  # finished before this daemon knew of it
        if job.state is JobState.QUEUED:
            self._dequeue(job)
            message = "cancelled before it started"
            self._finish(
                job, unstarted_result(job, JobState.CANCELLED, message, self._backend)
            )
        elif job.state is JobState.RUNNING:
            job.cancel.set()

    def forget(self, job: Job) -> None:
        """Drop a job whose result was delivered (or, with a journal, one
        whose result can be read back from disk)."""
        self._jobs.pop(job.job_id, None)
        if self._retained.pop(job.job_id, None) is not None:
            assert job.result is not None
            if self._history is None:
                self._retained_bytes -= job.result.output_bytes

    def _purge(self) -> None:
        """Expire unfetched results; finish order is expiry order."""
        deadline = self._clock() - self._limits.result_retention_seconds
        while self._retained:
            job = next(iter(self._retained.values()))
            if job.finished_at > deadline:
                break
            self.forget(job)

    def _tallies_of(self, uid: int) -> tuple[Tally, Tally]:
        """The daemon's tally and ``uid``'s (one per uid that ever had a job)."""
        tally = self._tallies.get(uid)
        if tally is None:
            tally = self._tallies[uid] = Tally()
        return self._tally, tally

    def counters(self, uid: int | None = None) -> dict[str, object]:
        """The numbers behind the ``stats`` op: the daemon's, or only what
        the jobs of ``uid`` did."""
        self._purge()

        def mine(jobs: Iterable[Job]) -> list[Job]:
            return [j for j in jobs if uid is None or j.peer.uid == uid]

        tally = self._tally if uid is None else self._tallies.get(uid, Tally())
        queued, running = mine(self._queue), mine(self._running)
        retained = mine(self._retained.values())
        jobs = {str(JobState.QUEUED): len(queued), str(JobState.RUNNING): len(running)}
        jobs.update({str(state): tally.ended[str(state)] for state in _END_STATES})
        return {
            "jobs": jobs,
            "bytes": {pump: tally.bytes_by_pump[pump] for pump in _PUMPS},
            "queue_depth": len(queued),
            "running": len(running),
            "accepted": tally.accepted,
            "retained": len(retained),
            "retained_bytes": sum(
                job.result.output_bytes for job in retained if job.result is not None
            ),
        }

    # -- shutdown --------------------------------------------------------------

    async def shutdown(
        self, grace: float, kill_grace: float, hurry: asyncio.Event
    ) -> None:
        """Refuse new jobs, cancel queued ones, give running ones ``grace``
        seconds (cut short when ``hurry`` is set), then cancel the rest."""
        self._closing = True
        for job in list(self._queue):
            self.cancel(job)
        deadline = self._clock() + grace
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            while self._running and not hurry.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                await asyncio.wait(
                    {*self._running.values(), hurried},
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurried.cancel()
        for job in list(self._running):
            job.cancel.set()
        tasks = set(self._running.values())
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=kill_grace + 5.0)
            for task in stuck:  # a runner that ignores its cancel event
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
