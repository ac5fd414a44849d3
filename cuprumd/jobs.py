"""The job registry: admission, the queue, running slots, results, shutdown.

Every job passes through here exactly once and ends here exactly once
(``_finish``), whichever way it ends — ran, cancelled while queued, runner
crash, shutdown — so counters and the ``job.finished`` event cannot miss or
double-count one. The runner is injected, so this is tested without
spawning anything.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cuprumd.errors import Busy, NotFound, WaitTimeout
from cuprumd.logging import get_logger
from cuprumd.models import JobResult, JobSpec, JobState
from cuprumd.outcome import Facts, build_result, now_iso
from cuprumd.peers import Peer

__all__ = ["Job", "JobRegistry", "Limits", "Runner", "unstarted_result"]

_log = get_logger("cuprumd.jobs")
_END_STATES = [state for state in JobState if state.finished]
_PUMPS = ("python", "rust-splice", "rust-copy")


@dataclass(frozen=True)
class Limits:
    """The settings that shape admission and retention."""

    max_concurrent_jobs: int
    max_queued_jobs: int
    result_retention_seconds: float
    max_retained_bytes: int = 256 << 20


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
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0


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
        )
    )
    return result.model_copy(update={"error": message})


def _output_size(result: JobResult) -> int:
    """What a kept result costs: its captured output, as encoded."""
    return len(result.stdout) + sum(len(stage.stderr) for stage in result.stages)


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
    ) -> None:
        self._limits = limits
        self._runner = runner
        self._backend = backend
        self._daemon_uid = daemon_uid
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: dict[Job, asyncio.Task[None]] = {}
        self._retained: OrderedDict[str, Job] = OrderedDict()
        self._retained_bytes = 0
        self._closing = False
        self.accepted = 0
        self.ended: Counter[str] = Counter()
        self.bytes_by_pump: Counter[str] = Counter()

    # -- admission -----------------------------------------------------------

    def admit(
        self, spec: JobSpec, executables: tuple[str, ...], peer: Peer, *, detached: bool
    ) -> Job:
        """Start the job now, or queue it.

        Raises
        ------
        Busy
            When every slot and queue place is taken, or during shutdown.
        """
        self._purge()
        if self._closing:
            raise Busy("the daemon is shutting down")
        limits = self._limits
        free_slot = len(self._running) < limits.max_concurrent_jobs
        if not free_slot and len(self._queue) >= limits.max_queued_jobs:
            msg = (
                f"all {limits.max_concurrent_jobs} job slots are taken and the "
                f"queue is full ({limits.max_queued_jobs}); retry later"
            )
            raise Busy(msg)
        if detached and self._retained_bytes >= limits.max_retained_bytes:
            msg = (
                f"{len(self._retained)} finished jobs hold "
                f"{self._retained_bytes} bytes of unfetched output, over "
                f"max_retained_bytes ({limits.max_retained_bytes}); fetch them "
                "with wait, or retry once they expire"
            )
            raise Busy(msg)
        job = Job(secrets.token_hex(8), spec, executables, peer, detached)
        self._jobs[job.job_id] = job
        self.accepted += 1
        _log.info(
            "job.accepted",
            job_id=job.job_id,
            argv0s=spec.argv0s,
            detached=detached,
            queued=not free_slot,
            **peer.as_log(),
        )
        if free_slot:
            self._start(job)
        else:
            self._queue.append(job)
        return job

    def _start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        self._running[job] = asyncio.create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        result: JobResult | None = None
        try:
            result = await self._runner(job)
        except Exception as exc:  # a runner fault costs this job, not the daemon
            _log.exception("job.crashed", job_id=job.job_id)
            message = f"internal error while running the job ({type(exc).__name__})"
            result = unstarted_result(job, JobState.ERROR, message, self._backend)
        finally:
            if result is None:  # the task itself was cancelled
                message = "the daemon stopped"
                result = unstarted_result(
                    job, JobState.CANCELLED, message, self._backend
                )
            del self._running[job]
            self._finish(job, result)
            self._fill_slots()

    def _fill_slots(self) -> None:
        while self._queue and len(self._running) < self._limits.max_concurrent_jobs:
            self._start(self._queue.popleft())

    def _finish(self, job: Job, result: JobResult) -> None:
        job.result = result
        job.state = result.state
        job.finished_at = self._clock()
        self.ended[str(result.state)] += 1
        for transfer in result.transfers:
            self.bytes_by_pump[transfer.pump] += transfer.bytes
        if job.detached and job.job_id in self._jobs:
            self._retained[job.job_id] = job
            self._retained_bytes += _output_size(result)
        job.done.set()
        _log.info("job.finished", **_finished_event(job, result))

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
        if job is None or not self._visible(job, peer):
            msg = f"no job {job_id!r} (never existed, finished and fetched, or expired)"
            raise NotFound(msg)
        return job

    def jobs(self, peer: Peer) -> list[Job]:
        """Every job ``peer`` may see, oldest first."""
        self._purge()
        return [job for job in self._jobs.values() if self._visible(job, peer)]

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
        assert job.result is not None
        if job.detached:
            self.forget(job)
        return job.result

    def cancel(self, job: Job) -> None:
        """Ask the job to stop; a queued job ends at once, a running one once
        its processes are gone."""
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            message = "cancelled before it started"
            self._finish(
                job, unstarted_result(job, JobState.CANCELLED, message, self._backend)
            )
        elif job.state is JobState.RUNNING:
            job.cancel.set()

    def forget(self, job: Job) -> None:
        """Drop a job whose result was delivered."""
        self._jobs.pop(job.job_id, None)
        if self._retained.pop(job.job_id, None) is not None:
            assert job.result is not None
            self._retained_bytes -= _output_size(job.result)

    def _purge(self) -> None:
        """Expire unfetched results; finish order is expiry order."""
        deadline = self._clock() - self._limits.result_retention_seconds
        while self._retained:
            job = next(iter(self._retained.values()))
            if job.finished_at > deadline:
                break
            self.forget(job)

    def counters(self) -> dict[str, object]:
        """The numbers behind the ``stats`` op."""
        self._purge()
        jobs = {str(JobState.QUEUED): len(self._queue)}
        jobs[str(JobState.RUNNING)] = len(self._running)
        jobs.update({str(state): self.ended[str(state)] for state in _END_STATES})
        return {
            "jobs": jobs,
            "bytes": {pump: self.bytes_by_pump[pump] for pump in _PUMPS},
            "queue_depth": len(self._queue),
            "running": len(self._running),
            "accepted": self.accepted,
            "retained": len(self._retained),
            "retained_bytes": self._retained_bytes,
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
