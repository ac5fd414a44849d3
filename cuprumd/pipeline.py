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
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cuprumd.backend import (
    BACKEND_ENV_VAR,
    StreamBackend,
    parse_stream_backend,
    resolve_stream_backend,
)
from cuprumd.fdio import Capture, Feeder, watch_exit
from cuprumd.models import JobResult, JobSpec, JobState, PumpName
from cuprumd.outcome import Facts, build_result, now_iso
from cuprumd.pump import TransferOutcome, run_transfer
from cuprumd.settings import Settings
from cuprumd.spawn import Plumbing, SpawnError, child_env, open_plumbing, spawn_stage

__all__ = ["RunOptions", "execute", "run_pipeline"]


@dataclass(frozen=True)
class RunOptions:
    """The part of the settings a single job run needs."""

    max_output_bytes: int = 16 << 20
    default_timeout: float = 300.0
    kill_grace_seconds: float = 5.0
    pump_buffer_size: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> RunOptions:
        """Take the job-level limits out of the daemon settings."""
        return cls(
            max_output_bytes=settings.max_output_bytes,
            default_timeout=settings.default_timeout,
            kill_grace_seconds=settings.kill_grace_seconds,
            pump_buffer_size=settings.pump_buffer_size,
        )


class _Run:
    """One job's processes, pipes and pumps, from spawn to result."""

    def __init__(
        self,
        job: JobSpec,
        options: RunOptions,
        backend: StreamBackend,
        job_id: str | None,
        executables: Sequence[str] | None,
    ) -> None:
        self.job = job
        self.options = options
        self.backend = backend
        self.job_id = job_id
        self.executables = executables
        self.loop = asyncio.get_running_loop()
        n = len(job.stages)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.returncodes: list[int | None] = [None] * n
        self.pgid: int | None = None
        self.links: Plumbing | None = None
        self.exits: list[asyncio.Future[int]] = []
        self.error: str | None = None
        self.end_state: JobState | None = None
        self.fail_fast_stage: int | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.stdout: Capture | None = None
        self.stderrs: list[Capture | None] = [None] * n
        self.feeder: Feeder | None = None
        self.transfers: list[asyncio.Task[TransferOutcome]] = []

    # -- spawning ---------------------------------------------------------
    def spawn(self) -> None:
        """Start every stage in one new process group, or none at all."""
        stdin = self.job.stdin_bytes()
        env = child_env(self.job.env)
        try:
            self.links = links = open_plumbing(
                len(self.job.stages), with_stdin=stdin is not None,
                pipe_size=self.options.pump_buffer_size,
            )  # fmt: skip
        except SpawnError as exc:
            self.error = str(exc)
            return
        try:
            for i, stage in enumerate(self.job.stages):
                exe = self.executables[i] if self.executables else None
                proc = spawn_stage(
                    stage.argv, exe, links.child_fds(i), env, self.job.cwd,
                    process_group=0 if self.pgid is None else self.pgid,
                )  # fmt: skip
                self.procs[i] = proc
                exit_future = watch_exit(self.loop, proc)
                exit_future.add_done_callback(functools.partial(self._on_stage_exit, i))
                self.exits.append(exit_future)
                if self.pgid is None:
                    self.pgid = proc.pid
                links.release_child_fds(i)
        except SpawnError as exc:
            self.error = str(exc)
            links.close_all()
            self._signal_group(signal.SIGKILL)
            return
        self._start_streams(links, stdin)

    def _start_streams(self, links: Plumbing, stdin: bytes | None) -> None:
        limit = self.options.max_output_bytes
        if stdin is not None:
            self.feeder = Feeder(self.loop, links.take_stdin_writer(), stdin)
            self.feeder.start()
        for i in range(len(self.job.stages)):
            capture = Capture(self.loop, links.take_stderr_reader(i), limit)
            capture.start()
            self.stderrs[i] = capture
        self.stdout = Capture(self.loop, links.take_stdout_reader(), limit)
        self.stdout.start()
        for i in range(len(self.job.stages) - 1):
            reader, writer = links.take_transfer(i)
            context: dict[str, object] = {
                "job_id": self.job_id,
                "from_stage": i,
                "to_stage": i + 1,
            }
            self.transfers.append(
                self.loop.create_task(
                    run_transfer(
                        self.backend, reader, writer,
                        buffer_size=self.options.pump_buffer_size,
                        log_context=context,
                    )
                )
            )  # fmt: skip

    # -- termination ------------------------------------------------------
    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pgid is None or all(rc is not None for rc in self._live_codes()):
            return
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def _live_codes(self) -> list[int | None]:
        return [
            rc
            for proc, rc in zip(self.procs, self.returncodes, strict=True)
            if proc is not None
        ]

    def terminate(self, state: JobState | None) -> None:
        """SIGTERM the group now and SIGKILL it after the grace period."""
        if state is not None and self.end_state is None:
            self.end_state = state
        if self.kill_timer is not None:
            return
        self._signal_group(signal.SIGTERM)
        self.kill_timer = self.loop.call_later(
            self.options.kill_grace_seconds, self._signal_group, signal.SIGKILL
        )
        if self.feeder is not None:
            self.feeder.abort()

    def _on_stage_exit(self, index: int, exited: asyncio.Future[int]) -> None:
        returncode = exited.result()
        self.returncodes[index] = returncode
        failed = returncode not in (0, -signal.SIGPIPE)
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
        """Wait for every stage to exit, then for every stream to drain."""
        try:
            if self.exits:
                # wait(), unlike gather(), never cancels the futures it watches:
                # a cancelled caller must still see every stage reaped.
                await asyncio.wait(self.exits)
            await self._drain()
        finally:
            if self.kill_timer is not None and all(f.done() for f in self.exits):
                self.kill_timer.cancel()

    def kill_now(self, state: JobState) -> None:
        """Skip the grace period: the caller itself is being torn down."""
        self.terminate(state)
        self._signal_group(signal.SIGKILL)

    async def _drain(self) -> None:
        """Let pumps and captures reach EOF, but not forever.

        Once every stage has exited only a descendant that escaped the
        process group could hold a pipe open; the job must not hang on it.
        """
        streams: list[asyncio.Future[Any]] = [*self.transfers]
        streams += [c.done for c in (self.stdout, *self.stderrs) if c is not None]
        if self.feeder is not None:
            streams.append(self.feeder.done)
        if not streams:
            return
        grace = self.options.kill_grace_seconds + 1.0
        await asyncio.wait(streams, timeout=grace)
        for capture in (self.stdout, *self.stderrs, self.feeder):
            if capture is not None:
                capture.abort()
        for task in self.transfers:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self.transfers, return_exceptions=True)

    # -- result -------------------------------------------------------------
    def _transfer_outcomes(self) -> list[TransferOutcome]:
        """Each transfer's outcome; a pump that failed makes the job an error.

        A transfer cut short by an I/O error would otherwise look like a
        short but successful stream: data lost without a word.
        """
        outcomes = []
        for i, task in enumerate(self.transfers):
            failure = None if task.cancelled() else task.exception()
            if task.cancelled() or failure is not None:
                if failure is not None and self.error is None:
                    self.error = f"pump {i}->{i + 1} failed: {failure}"
                pump: PumpName = (
                    "rust-splice" if self.backend is StreamBackend.RUST else "python"
                )
                outcomes.append(TransferOutcome(pump, 0))
            else:
                outcomes.append(task.result())
        return outcomes

    def result(self, started: str, t0: float) -> JobResult:
        """Hand what was observed to the pure rules of ``outcome``."""
        captures = [(b"", False) if c is None else c.contents() for c in self.stderrs]
        return build_result(
            Facts(
                job_id=self.job_id,
                backend=str(self.backend),
                argvs=[stage.argv for stage in self.job.stages],
                pids=[None if p is None else p.pid for p in self.procs],
                returncodes=self.returncodes,
                stderrs=captures,
                stdout=(b"", False) if self.stdout is None else self.stdout.contents(),
                transfers=self._transfer_outcomes(),
                encoding=self.job.output_encoding,
                started_at=started,
                duration_ms=round((time.monotonic() - t0) * 1000, 3),
                error=self.error,
                end_state=self.end_state,
                fail_fast_stage=self.fail_fast_stage,
            )
        )


async def execute(
    job: JobSpec,
    options: RunOptions,
    backend: StreamBackend,
    *,
    job_id: str | None = None,
    cancel: asyncio.Event | None = None,
    executables: Sequence[str] | None = None,
) -> JobResult:
    """Run ``job`` to its end and describe how it ended.

    ``backend`` must already be resolved (``RUST`` or ``PYTHON``). Setting
    ``cancel`` terminates the job (SIGTERM, then SIGKILL after the grace
    period) and yields state ``cancelled`` with the output gathered so far.
    If the awaiting task itself is cancelled, the job is killed and reaped
    before the cancellation propagates: no orphan, no zombie, no open fd.
    """
    if backend is StreamBackend.AUTO:
        backend = resolve_stream_backend(backend)
    started, t0 = now_iso(), time.monotonic()
    run = _Run(job, options, backend, job_id, executables)
    try:
        run.spawn()
        await run.wait(cancel)
    except asyncio.CancelledError:
        run.kill_now(JobState.CANCELLED)
        await asyncio.shield(run.settle())
        raise
    finally:
        if run.links is not None:
            run.links.close_all()
    return run.result(started, t0)


def run_pipeline(
    job: JobSpec | Mapping[str, Any],
    settings: Settings | None = None,
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
