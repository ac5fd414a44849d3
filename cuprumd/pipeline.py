"""The pipeline runner: spawn the stages, pump between them, collect a result.

``execute`` is what the daemon awaits for every job; ``run_pipeline`` is the
same runner for library use, without a daemon. A job never raises for its
own failure (a program missing, a stage failing, a timeout): those are
states of the ``JobResult``. Only an unusable backend raises, because that
is the caller's configuration, not the job.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cuprumd.backend import (
    BACKEND_ENV_VAR,
    StreamBackend,
    parse_stream_backend,
    resolve_stream_backend,
)
from cuprumd.engine.cgroup import JobCgroups
from cuprumd.engine.environment import child_env
from cuprumd.engine.launch import Containment, Launcher, StageLaunch, choose_launcher
from cuprumd.engine.passed import STREAM_NAMES, StreamName
from cuprumd.engine.pipesize import PipeGrant, PipeLedger
from cuprumd.engine.plumbing import SpawnError, open_plumbing
from cuprumd.engine.processes import JobProcessIndex, ProcessGroup
from cuprumd.engine.sandbox import Ruleset, Sandbox
from cuprumd.engine.scratch import JobScratch, ScratchSpace
from cuprumd.engine.streams import OutputStreamer, Streams
from cuprumd.fdio import ChunkQueue
from cuprumd.models import JobResult, JobSpec, JobState
from cuprumd.outcome import Facts, build_result, now_iso
from cuprumd.spool import JobFiles

__all__ = ["RunOptions", "execute", "run_pipeline"]


class _JobLimits(Protocol):
    """The settings a run needs (``cuprumd.settings.Settings`` has them);
    the engine does not import the daemon's settings model."""

    @property
    def max_output_bytes(self) -> int: ...
    @property
    def default_timeout(self) -> float: ...
    @property
    def kill_grace_seconds(self) -> float: ...
    @property
    def pump_buffer_size(self) -> int: ...
    @property
    def max_concurrent_jobs(self) -> int: ...
    @property
    def max_stages(self) -> int: ...


class _PipelineSettings(_JobLimits, Protocol):
    @property
    def stream_backend(self) -> StreamBackend: ...


@dataclass(frozen=True)
class RunOptions:
    """Job limits plus the daemon-wide means of containment.

    Without a daemon (library use) there is no sandbox, scratch directory
    or cgroup, but stages still get their own group, the parent-death
    signal and the final sweep.

    The four job limits' defaults are defined here, once: the settings
    model takes them over as its own defaults.

    ``pipes`` shares the per-user pipe budget among the daemon's jobs;
    without it (library use) inter-stage pipes are grown to
    ``pump_buffer_size``.
    """

    max_output_bytes: int = 16 << 20
    default_timeout: float = 300.0
    kill_grace_seconds: float = 5.0
    pump_buffer_size: int = 1 << 20
    pipes: PipeLedger | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()
    user: tuple[int, int] | None = None
    sandbox: Sandbox | None = None
    scratch: ScratchSpace | None = None
    launcher: Launcher | None = None
    cgroups: JobCgroups | None = None
    process_index: JobProcessIndex | None = None

    @classmethod
    def from_settings(cls, settings: _JobLimits, **means: Any) -> RunOptions:
        """Take the job-level limits out of the settings."""
        return cls(
            max_output_bytes=settings.max_output_bytes,
            default_timeout=settings.default_timeout,
            kill_grace_seconds=settings.kill_grace_seconds,
            pump_buffer_size=settings.pump_buffer_size,
            **means,
        )


class _Run:
    """One job from spawn to result: a process group and its streams."""

    def __init__(
        self,
        job: JobSpec,
        options: RunOptions,
        backend: StreamBackend,
        job_id: str | None,
        executables: Sequence[str] | None,
        *,
        passed: Mapping[StreamName, int],
    ) -> None:
        self.job = job
        self.passed = dict(passed)
        self.passed_names = frozenset(passed)
        self.streamer: OutputStreamer | None = None
        self.stdin_chunks: ChunkQueue | None = None
        self.spool: JobFiles | None = None
        self.options = options
        self.backend = backend
        self.job_id = job_id
        self.executables = executables
        self.loop = asyncio.get_running_loop()
        self.group: ProcessGroup | None = None
        self.streams: Streams | None = None
        self.scratch: JobScratch | None = None
        self.error: str | None = None
        self.end_state: JobState | None = None
        self.fail_fast_stage: int | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.pipe_grant: PipeGrant | None = None

    # -- spawning ---------------------------------------------------------
    def spawn(self) -> None:
        """Start every stage in one new process group, or none at all.

        Whatever fails leaves ``error`` set and every part made so far in
        the hands of its owner (``Streams``, ``ProcessGroup``, the scratch
        directory), whose close contract ``settle`` then runs.
        """
        stdin = self.stdin_chunks or self.job.stdin_bytes()
        try:
            streams, group = self._prepare(with_stdin=stdin is not None)
            self._start_stages(streams, group)
            streams.start(stdin)
        except SpawnError as exc:
            self.error = str(exc)
        except Exception as exc:  # e.g. no thread left for a pump: a job error
            self.error = f"cannot start the job: {type(exc).__name__}: {exc}"
        else:
            return
        if self.group is not None:
            self.group.signal(signal.SIGKILL)

    def _prepare(self, *, with_stdin: bool) -> tuple[Streams, ProcessGroup]:
        options = self.options
        passed, self.passed = self.passed, {}
        stages = len(self.job.stages)
        pipe_size = options.pump_buffer_size
        if options.pipes is not None:
            self.pipe_grant = options.pipes.acquire(stages)
            pipe_size = self.pipe_grant.size
        links = None
        try:
            links = open_plumbing(
                stages, with_stdin=with_stdin, pipe_size=pipe_size, passed=passed
            )
            self.streams = streams = Streams(
                self.loop, links, self.backend,
                max_output_bytes=options.max_output_bytes,
                buffer_size=options.pump_buffer_size, job_id=self.job_id,
                streamer=self.streamer, spool=self.spool,
            )  # fmt: skip
        except BaseException:  # nothing owns the pipes or the grant yet
            if links is not None:
                links.close_all()
            self._return_pipe_grant()
            raise
        try:
            cgroup = None if options.cgroups is None else options.cgroups.acquire()
            launcher = options.launcher or choose_launcher()[1]
            self.group = group = ProcessGroup(
                self.loop, launcher, cgroup, options.process_index
            )
            if options.scratch is not None:
                self.scratch = options.scratch.acquire()
        except OSError as exc:
            msg = f"cannot prepare the job: {exc.strerror} ({exc.filename})"
            raise SpawnError(msg) from exc
        return streams, group

    def _start_stages(self, streams: Streams, group: ProcessGroup) -> None:
        options = self.options
        scratch = self.scratch
        tmpdir = None if scratch is None else str(scratch.path)
        env = child_env(self.job.env, tmpdir=tmpdir)
        try:
            ruleset, ours = self._job_ruleset()
        except OSError as exc:
            msg = f"cannot build the job's sandbox: {exc.strerror}"
            raise SpawnError(msg) from exc
        contained = Containment(
            ruleset_fd=None if ruleset is None else ruleset.fd,
            rlimits=options.rlimits,
            user=options.user,
        )
        try:
            for i, stage in enumerate(self.job.stages):
                program = (
                    self.executables[i]
                    if self.executables
                    else _locate(stage.argv[0], env)
                )
                group.start(
                    StageLaunch(
                        program, stage.argv, env, streams.plumbing.child_fds(i),
                        process_group=group.pgid or 0, cwd=self.job.cwd,
                        cgroup_fd=group.cgroup_fd, containment=contained,
                    )
                )  # fmt: skip
                group.exits[i].add_done_callback(
                    functools.partial(self._on_stage_exit, i)
                )
                streams.plumbing.release_child_fds(i)
        finally:
            if ruleset is not None and ours:
                ruleset.close()

    def _job_ruleset(self) -> tuple[Ruleset | None, bool]:
        """The job's ruleset, and whether the runner must close it: one that
        opens a scratch directory stays with that directory."""
        sandbox, scratch = self.options.sandbox, self.scratch
        if sandbox is None:
            return None, False
        if scratch is None:
            return sandbox.ruleset(None), True
        if scratch.ruleset is None:
            scratch.ruleset = sandbox.ruleset(str(scratch.path))
        return scratch.ruleset, False

    # -- termination ------------------------------------------------------
    def terminate(self, state: JobState | None) -> None:
        """SIGTERM the group now and SIGKILL it after the grace period."""
        if state is not None and self.end_state is None:
            self.end_state = state
        if self.kill_timer is not None or self.group is None:
            return
        self.group.signal(signal.SIGTERM)
        self.kill_timer = self.loop.call_later(
            self.options.kill_grace_seconds, self.group.signal, signal.SIGKILL
        )
        if self.streams is not None:
            self.streams.stop_feeding()

    def _on_stage_exit(self, index: int, exited: asyncio.Future[int]) -> None:
        failed = exited.result() not in (0, -signal.SIGPIPE)
        if failed and self.job.fail_fast and self.kill_timer is None:
            self.fail_fast_stage = index
            self.terminate(None)

    # -- waiting ------------------------------------------------------------
    async def wait(self, cancel: asyncio.Event | None) -> None:
        """Wait for the job to end, enforcing its timeout and ``cancel``."""
        timeout = self.job.timeout or self.options.default_timeout
        deadline = self.loop.call_later(timeout, self.terminate, JobState.TIMED_OUT)
        watcher = None
        if cancel is not None:
            watcher = self.loop.create_task(cancel.wait())
            watcher.add_done_callback(
                lambda t: None if t.cancelled() else self.terminate(JobState.CANCELLED)
            )
        try:
            await self.settle()
        finally:
            deadline.cancel()
            if watcher is not None:
                watcher.cancel()

    async def settle(self) -> None:
        """Wait for the stages, sweep what they left, drain, close.

        The sweep comes before the drain: a background child holding a
        pipe open would otherwise keep the job alive after its stages. If
        the awaiting task is cancelled, the job is killed at once, and its
        reaping still completes (shielded) before the cancellation goes on.
        """
        group, streams = self.group, self.streams
        try:
            if group is not None and group.exits:
                await group.wait_exited()
                group.sweep()
            if streams is not None:
                await streams.drain(self.options.kill_grace_seconds + 1.0)
        except BaseException:  # cancelled, above all: kill, then reap
            self.terminate(JobState.CANCELLED)
            if group is not None:
                group.signal(signal.SIGKILL)
            self._close_streams(streams)
            await asyncio.shield(self._release())
            raise
        self._close_streams(streams)
        await self._release()

    def _close_streams(self, streams: Streams | None) -> None:
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        if streams is not None:
            streams.close()
        self._return_pipe_grant()

    def _return_pipe_grant(self) -> None:
        grant, self.pipe_grant = self.pipe_grant, None
        if grant is not None and self.options.pipes is not None:
            self.options.pipes.release(grant)

    async def _release(self) -> None:
        contained = self.group is not None and await self.group.close()
        if self.scratch is not None:
            self.scratch.release(reusable=contained)

    # -- result -------------------------------------------------------------
    def _pump_failed(self, index: int, failure: BaseException) -> None:
        """A transfer cut short by an I/O error would otherwise look like a
        short but successful stream: data lost without a word."""
        if self.error is None:
            self.error = f"pump {index}->{index + 1} failed: {failure}"

    def result(self, started: str, t0: float) -> JobResult:
        """Hand what was observed to the pure rules of ``outcome``."""
        count = len(self.job.stages)
        pids: list[int | None] = [None] * count
        codes: list[int | None] = [None] * count
        if self.group is not None:
            started_count = len(self.group.pids)
            pids[:started_count] = self.group.pids
            codes[:started_count] = self.group.returncodes
        stdout: tuple[bytes, bool] = (b"", False)
        stderrs: list[tuple[bytes, bool]] = [(b"", False)] * count
        transfers = []
        cut: list[bool] = []
        spooled = None if self.spool is None else 0
        if self.streams is not None:
            spooled = self.streams.spooled_bytes()
            stdout, stderrs = self.streams.contents()
            transfers = self.streams.outcomes(self._pump_failed)
            cut = self.streams.cut_stages()
        return build_result(
            Facts(
                job_id=self.job_id,
                backend=str(self.backend),
                argvs=[stage.argv for stage in self.job.stages],
                pids=pids,
                returncodes=codes,
                stderrs=stderrs,
                stdout=stdout,
                transfers=transfers,
                encoding=self.job.output_encoding,
                started_at=started,
                duration_ms=round((time.monotonic() - t0) * 1000, 3),
                error=self.error,
                end_state=self.end_state,
                fail_fast_stage=self.fail_fast_stage,
                output_cut=cut,
                passed=[n for n in STREAM_NAMES if n in self.passed_names],
                streamed=self.streamer is not None,
                spooled_bytes=spooled,
            )
        )


def _locate(argv0: str, env: Mapping[str, str]) -> str:
    """Library use has no allowlist: search the stage's PATH as a shell
    would (``execve`` itself does not)."""
    if "/" in argv0:
        return argv0
    return shutil.which(argv0, path=env.get("PATH", os.defpath)) or argv0


async def execute(
    job: JobSpec,
    options: RunOptions,
    backend: StreamBackend,
    *,
    job_id: str | None = None,
    cancel: asyncio.Event | None = None,
    executables: Sequence[str] | None = None,
    passed: Mapping[StreamName, int] | None = None,
    streamer: OutputStreamer | None = None,
    stdin_chunks: ChunkQueue | None = None,
    spool: JobFiles | None = None,
) -> JobResult:
    """Run ``job`` to its end and describe how it ended.

    ``backend`` must already be resolved (``RUST`` or ``PYTHON``). Setting
    ``cancel`` terminates the job (SIGTERM, then SIGKILL after the grace
    period) and yields state ``cancelled`` with the output gathered so far.
    If the awaiting task itself is cancelled, the job is killed and reaped
    before the cancellation propagates: no orphan, no zombie, no open fd.
    ``passed`` descriptors (the client's own stdin, stdout, stderr) become
    the job's streams and are closed by it, whatever happens. With a
    ``streamer`` the output is handed to it as it comes instead of being
    captured; ``stdin_chunks`` feeds the first stage as chunks arrive.
    """
    if backend is StreamBackend.AUTO:
        backend = resolve_stream_backend(backend)
    started, t0 = now_iso(), time.monotonic()
    run = _Run(job, options, backend, job_id, executables, passed=passed or {})
    run.streamer, run.stdin_chunks, run.spool = streamer, stdin_chunks, spool
    run.spawn()
    await run.wait(cancel)
    return run.result(started, t0)


def run_pipeline(
    job: JobSpec | Mapping[str, Any],
    settings: _PipelineSettings | None = None,
    *,
    backend: StreamBackend | str | None = None,
) -> JobResult:
    """Run a job in a fresh event loop, without a daemon.

    The backend comes from ``backend``, else ``settings.stream_backend``,
    else ``CUPRUM_STREAM_BACKEND``; it is resolved here, at execution time,
    so forcing ``rust`` without the extension raises ``ImportError``.
    """
    spec = job if isinstance(job, JobSpec) else JobSpec.model_validate(job)
    if backend is None:
        backend = (
            settings.stream_backend
            if settings is not None
            else os.environ.get(BACKEND_ENV_VAR)
        )
    requested = (
        backend if isinstance(backend, StreamBackend) else parse_stream_backend(backend)
    )
    resolved = resolve_stream_backend(requested)
    options = RunOptions() if settings is None else RunOptions.from_settings(settings)
    return asyncio.run(execute(spec, options, resolved))
