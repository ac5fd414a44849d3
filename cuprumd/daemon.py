"""Daemon life cycle: start-up in a fixed order, serve, shut down gracefully.

The order is the contract with systemd and with operators: every check that
can fail (settings, backend, allowlist, socket) runs before ``READY=1``, so
a daemon that reports ready can serve, and one that cannot exits before it
has bound or touched anything.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from cuprumd import __version__, pipeline
from cuprumd.backend import NATIVE_MODULE, StreamBackend, decide_stream_backend
from cuprumd.containment import Guard, prepare_guard
from cuprumd.engine.limits import raise_fd_limit
from cuprumd.engine.pipesize import PipeLedger
from cuprumd.errors import ConfigError, StartupError
from cuprumd.history import History, open_history
from cuprumd.jobs import Job, JobRegistry, Limits
from cuprumd.listener import Listener, open_listener
from cuprumd.logging import configure_logging, get_logger
from cuprumd.models import JobResult
from cuprumd.programs import Allowlist, load_allowlist
from cuprumd.reload import plan_reload
from cuprumd.server import Server
from cuprumd.settings import LoadedSettings, Settings
from cuprumd.systemd import Notifier

__all__ = ["choose_event_loop", "run_daemon"]

_log = get_logger("cuprumd.daemon")
#: Reads the settings from their sources again (flags, environment, TOML).
SettingsSource = Callable[[], LoadedSettings]


def choose_event_loop(
    setting: Literal["auto", "asyncio", "uvloop"], *, uvloop_installed: bool
) -> str:
    """The loop to run; ``auto`` means uvloop when it is installed.

    ``make bench`` settled it (``docs/performance.md``): the round trip is
    the same on both, the pumps run alike, and under 8 concurrent clients
    uvloop sustained a rate as high or higher than asyncio's in most runs.
    uvloop's slower child spawning does not apply here: stages are started
    with ``Popen`` and watched through pidfds, never through the loop's
    subprocess API.
    """
    if setting != "auto":
        return setting
    return "uvloop" if uvloop_installed else "asyncio"


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, and only when asked for
    except ImportError:
        msg = "event_loop = 'uvloop' but uvloop is not installed; use 'asyncio'"
        raise ConfigError(msg) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _JobRunner:
    """Runs each job with the options in force when it starts; a reload
    swaps them for the next job."""

    def __init__(
        self, settings: Settings, backend: StreamBackend, guard: Guard
    ) -> None:
        self._backend = backend
        self._guard = guard
        self._pipes = PipeLedger(
            wanted=settings.pump_buffer_size,
            max_jobs=settings.max_concurrent_jobs,
            max_stages=settings.max_stages,
        )
        self.options = self._options(settings)

    def _options(self, settings: Settings) -> pipeline.RunOptions:
        guard = self._guard
        return pipeline.RunOptions.from_settings(
            settings,
            pipes=self._pipes,
            rlimits=guard.rlimits,
            user=guard.job_user,
            sandbox=guard.sandbox,
            scratch=guard.scratch,
            launcher=guard.launcher,
            cgroups=guard.cgroups,
            process_index=guard.index,
        )

    def configure(self, settings: Settings) -> None:
        self._pipes.configure(
            wanted=settings.pump_buffer_size,
            max_jobs=settings.max_concurrent_jobs,
            max_stages=settings.max_stages,
        )
        self.options = self._options(settings)

    async def __call__(self, job: Job) -> JobResult:
        passed = None if job.passed is None else job.passed.take()
        return await pipeline.execute(
            job.spec,
            self.options,
            self._backend,
            job_id=job.job_id,
            cancel=job.cancel,
            executables=job.executables,
            passed=passed,
            streamer=job.streamer,
            stdin_chunks=job.stdin_chunks,
            spool=job.spool,
        )


def _resolve_allowlist(settings: Settings) -> Allowlist:
    allowlist = load_allowlist(settings.programs)
    if allowlist.any_program:
        _log.warning(
            "programs.unrestricted",
            message="programs allowlist contains '*': clients may run any program",
        )
    if allowlist.missing:
        _log.warning("programs.missing", programs=list(allowlist.missing))
    _log.info(
        "programs.resolved",
        names=len(allowlist.by_name),
        paths=len(allowlist.paths),
        any_program=allowlist.any_program,
    )
    return allowlist


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.send(watchdog=1)
        await asyncio.sleep(interval)


@dataclass
class _Running:
    """What a reload replaces, and the means to apply it."""

    settings: Settings
    allowlist: Allowlist
    guard: Guard
    runner: _JobRunner
    registry: JobRegistry
    server: Server
    notifier: Notifier
    history: History | None = None

    def reload(self, source: SettingsSource) -> None:
        """Apply what changed in the settings' sources, all of it or none.

        Everything that can fail (reading, validating, resolving programs,
        building the sandbox) runs before anything is replaced: a bad file
        leaves the daemon exactly as it was, and says why.
        """
        self.notifier.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)
        try:
            plan = plan_reload(self.settings, source().settings)
            allowlist = self.allowlist
            if "programs" in plan.applied:
                allowlist = _resolve_allowlist(plan.settings)
            if plan.rebuilds_sandbox:
                self.guard.replace_sandbox(plan.settings, _executables(allowlist))
        except (ConfigError, StartupError, ValidationError) as exc:
            _log.error("daemon.reload_failed", error=str(exc))
            self.notifier.send(ready=1, status="reload failed; old settings kept")
            return
        settings = plan.settings
        self.settings, self.allowlist = settings, allowlist
        self.runner.configure(settings)
        self.registry.set_limits(Limits.from_settings(settings))
        self.server.apply(settings, allowlist)
        if self.history is not None:
            self.history.retention_seconds = settings.result_retention_seconds
            self.history.max_bytes = settings.max_state_bytes
            self.history.journal_env = settings.journal_env
        if "log_level" in plan.applied:
            configure_logging(settings.log_format, settings.log_level)
        if plan.restart_needed:
            _log.warning("daemon.reload_restart_needed", keys=list(plan.restart_needed))
        _log.info("daemon.reloaded", applied=list(plan.applied))
        self.notifier.send(ready=1, status="serving; settings reloaded")


async def _serve(  # noqa: PLR0917 - the start-up's results, in its order
    settings: Settings,
    backend: StreamBackend,
    allowlist: Allowlist,
    notifier: Notifier,
    guard: Guard,
    source: SettingsSource | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()
    running: _Running | None = None

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            _log.warning("daemon.hurry", signal=signum.name)
            hurry.set()  # a second signal: cancel running jobs at once
        stop.set()
        _log.info("daemon.stopping", signal=signum.name)

    def on_hangup() -> None:
        _log.info("daemon.reloading", signal="SIGHUP")
        if running is None or source is None or stop.is_set():
            _log.warning("daemon.reload_skipped", reason="not serving")
            return
        running.reload(source)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    listener: Listener = open_listener(
        settings.socket_path, settings.socket_mode, settings.socket_group
    )
    # Only now: the subtree's leftovers are killed, and holding the socket
    # proves no other live daemon owns them.
    guard.open_cgroups(settings, str(settings.socket_path))
    runner = _JobRunner(settings, backend, guard)
    history = _open_history(settings)
    registry = JobRegistry(
        Limits.from_settings(settings),
        runner,
        backend=str(backend),
        daemon_uid=os.getuid(),
        history=history,
    )
    server = Server(settings, str(backend), allowlist, registry, guard)
    watchdog: asyncio.Task[None] | None = None
    try:
        await server.start(listener)
        running = _Running(
            settings, allowlist, guard, runner, registry, server, notifier, history
        )
        where = listener.describe()
        notifier.send(
            ready=1,
            status=f"serving on {where}; stream backend {backend}",
            mainpid=os.getpid(),
        )
        _log.info("daemon.ready", socket=where, stream_backend=str(backend))
        if notifier.watchdog is not None:
            watchdog = asyncio.create_task(_watchdog(notifier, notifier.watchdog))
        await stop.wait()
        notifier.send(stopping=1, status="stopping: finishing running jobs")
        server.stop_accepting()
        await registry.shutdown(
            running.settings.shutdown_grace_seconds,
            running.settings.kill_grace_seconds,
            hurry,
        )
        await server.close_connections()
    finally:
        if history is not None:
            history.close()
        if watchdog is not None:
            watchdog.cancel()
        server.stop_accepting()
        listener.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    _log.info("daemon.stopped")


def _open_history(settings: Settings) -> History | None:
    """The journal and spool in ``state_dir``; none without one.

    Raises
    ------
    StartupError
        When not even a fresh journal can be made there.
    """
    if settings.state_dir is None:
        _log.info("journal.disabled", reason="no state_dir: results are kept in memory")
        return None
    try:
        history, _report = open_history(
            settings.state_dir,
            journal_env=settings.journal_env,
            retention_seconds=settings.result_retention_seconds,
            max_bytes=settings.max_state_bytes,
        )
    except (OSError, sqlite3.Error) as exc:
        msg = f"state_dir {str(settings.state_dir)!r}: cannot keep a journal: {exc}"
        raise StartupError(msg) from None
    return history


def _executables(allowlist: Allowlist) -> list[str]:
    """Every program the sandbox must let a stage execute."""
    return sorted({*allowlist.by_name.values(), *allowlist.paths})


def prepare_state_dir(path: Path | None) -> None:
    """Create ``state_dir`` (0700) if needed and prove it writable now, by
    writing, syncing and removing a file: ``access()`` says yes on a full
    or read-only file system.

    Raises
    ------
    StartupError
        Naming the key and the path when it cannot be used.
    """
    if path is None:
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"state_dir {str(path)!r} cannot be created: {exc.strerror}"
        raise StartupError(msg) from None
    if not path.is_dir():
        msg = f"state_dir {str(path)!r} is not a directory"
        raise StartupError(msg)
    probe = path / f".write-check-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"cuprumd")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        msg = f"state_dir {str(path)!r} is not writable: {exc.strerror}"
        raise StartupError(msg) from None


def run_daemon(loaded: LoadedSettings, source: SettingsSource | None = None) -> int:
    """Start, serve until SIGTERM/SIGINT, and return the exit status (0).

    ``source`` reads the settings again, as at start-up, for SIGHUP.

    Raises
    ------
    StartupError
        When the backend is unavailable or the socket cannot be had; it is
        logged here and the CLI turns it into exit status 1.
    ConfigError
        For settings that only prove unusable at start-up (a socket group
        that does not exist, uvloop missing).
    """
    settings = loaded.settings
    configure_logging(settings.log_format, settings.log_level)
    # Read before anything else so that no thread or child could see them.
    notifier = Notifier.from_environ(os.environ)
    _log.info("daemon.starting", version=__version__, pid=os.getpid())
    try:
        decision = decide_stream_backend(
            settings.stream_backend, loaded.sources["stream_backend"]
        )
    except ImportError as exc:
        _log.error("stream_backend.broken", module=NATIVE_MODULE, error=str(exc))
        msg = (
            f"the native extension {NATIVE_MODULE} is installed but cannot be "
            f"loaded ({exc}); rebuild it, or set stream_backend = 'python'"
        )
        raise StartupError(msg) from None
    if decision.resolved is None:
        _log.error(
            "stream_backend.unavailable", **decision.as_event(), error=decision.error
        )
        raise StartupError(decision.error or "the stream backend is unavailable")
    _log.info("stream_backend.resolved", **decision.as_event())
    backend = decision.resolved
    prepare_state_dir(settings.state_dir)
    nofile_soft, raised = raise_fd_limit()
    _log.info("fd_limit.raised", soft=raised, stages_soft=nofile_soft)
    allowlist = _resolve_allowlist(settings)
    uvloop_installed = importlib.util.find_spec("uvloop") is not None
    loop_name = choose_event_loop(
        settings.event_loop, uvloop_installed=uvloop_installed
    )
    factory = _loop_factory(loop_name)
    _log.info("event_loop.selected", requested=settings.event_loop, loop=loop_name)
    guard = prepare_guard(settings, _executables(allowlist), nofile_soft=nofile_soft)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(settings, backend, allowlist, notifier, guard, source))
    except (StartupError, ConfigError) as exc:
        _log.error("daemon.failed", error=str(exc))
        raise
    finally:
        guard.close()
    return 0
