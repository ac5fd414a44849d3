"""Start one stage, contained, with nothing of the daemon in it.

Every stage gets the same pre-exec steps, in this order: default signal
dispositions, its process group, the job's cgroup, a parent-death signal,
its three descriptors as 0/1/2, the job rlimits, its working directory, the
Landlock sandbox, every other descriptor closed, and ``execve``. Two
launchers run them:

- ``native``: ``cuprumd._native.spawn_stage``, a ``clone(CLONE_VM |
  CLONE_VFORK)`` spawner that costs what ``posix_spawn`` costs;
- ``python``: ``os.fork`` and the same steps in Python, for builds without
  the extension (slower: a full fork).

Both are called on the event-loop thread, which lives as long as the
daemon: ``PR_SET_PDEATHSIG`` fires when the *thread* that forked a child
exits, so a stage dies with the daemon, even on ``kill -9``, and not before.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from cuprumd.engine.plumbing import SpawnError, errno_name
from cuprumd.engine.sandbox import restrict_self
from cuprumd.engine.sandbox.landlock import prctl

__all__ = [
    "RLIMIT_RESOURCES",
    "Containment",
    "Launched",
    "Launcher",
    "LauncherName",
    "StageLaunch",
    "choose_launcher",
    "launch_python",
]

LauncherName = Literal["native", "python"]

#: ``job_rlimits`` names and the resource each one sets.
RLIMIT_RESOURCES: Mapping[str, int] = {
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "as": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
}

_PR_SET_PDEATHSIG = 1
#: Past any descriptor the daemon can hold: its own limit is raised above
#: the one its stages get, so the stage's limit is no bound.
_ALL_FDS = (1 << 31) - 1
_STEP_MESSAGES: Mapping[str, str] = {
    "exec": "cannot execute {program}",
    "chdir": "cannot change directory to {cwd}",
    "cgroup": "cannot put {program} into the job's cgroup",
    "credentials": "cannot run {program} as the job user",
    "landlock": "cannot sandbox {program}",
    "rlimit": "cannot set the job rlimits for {program}",
    "setpgid": "cannot put {program} into the job's process group",
    "stdio": "cannot hand {program} its descriptors",
    "pdeathsig": "cannot tie {program} to the daemon's life",
    "clone": "cannot start a process for {program}",
    "signals": "cannot reset signals for {program}",
}


@dataclass(frozen=True)
class Containment:
    """The job-wide part of every stage's pre-exec steps.

    ``ruleset_fd`` is the job's Landlock ruleset (closed by the runner once
    its stages have started); ``rlimits`` are ``(resource, soft, hard)``
    triples, the descriptor limit the daemon was started with among them;
    ``user`` is the ``(uid, gid)`` stages run as, ``None`` for the daemon's.
    """

    ruleset_fd: int | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()
    user: tuple[int, int] | None = None
    parent_death_signal: bool = True


@dataclass(frozen=True)
class StageLaunch:
    """One stage, ready to start: an absolute program and encoded strings."""

    program: str
    argv: Sequence[str]
    env: Mapping[str, str]
    stdio: tuple[int, int, int]
    process_group: int
    cwd: str | None = None
    cgroup_fd: int | None = None
    containment: Containment = field(default_factory=Containment)

    def envp(self) -> list[bytes]:
        """``KEY=value`` strings; validation already made them encodable."""
        return [f"{key}={value}".encode() for key, value in self.env.items()]


class Launched(NamedTuple):
    """A started stage: its pid and a pidfd the caller now owns."""

    pid: int
    pidfd: int


class Launcher(Protocol):
    """Starts a stage or raises ``SpawnError`` naming it and the errno."""

    def __call__(self, stage: StageLaunch, /) -> Launched: ...


def _spawn_error(stage: StageLaunch, exc: OSError, step: str) -> SpawnError:
    template = _STEP_MESSAGES.get(step, "cannot start {program}")
    what = template.format(program=repr(stage.argv[0]), cwd=repr(stage.cwd))
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return SpawnError(f"{what}: {reason} ({errno_name(exc.errno)})")


class _NativeSpawn(Protocol):
    def __call__(
        self,
        program: bytes,
        argv: list[bytes],
        envp: list[bytes],
        stdio: tuple[int, int, int],
        *,
        process_group: int = ...,
        cwd: bytes | None = ...,
        cgroup_fd: int | None = ...,
        user: tuple[int, int] | None = ...,
        landlock_ruleset_fd: int | None = ...,
        rlimits: list[tuple[int, int, int]] = ...,
        parent_death_signal: bool = ...,
    ) -> tuple[int, int]: ...


def _native_launcher(spawn: _NativeSpawn) -> Launcher:
    def launch(stage: StageLaunch) -> Launched:
        try:
            pid, pidfd = spawn(
                os.fsencode(stage.program),
                [arg.encode() for arg in stage.argv],
                stage.envp(),
                stage.stdio,
                process_group=stage.process_group,
                cwd=None if stage.cwd is None else stage.cwd.encode(),
                cgroup_fd=stage.cgroup_fd,
                user=stage.containment.user,
                landlock_ruleset_fd=stage.containment.ruleset_fd,
                rlimits=list(stage.containment.rlimits),
                parent_death_signal=stage.containment.parent_death_signal,
            )
        except OSError as exc:
            raise _spawn_error(stage, exc, str(exc.filename or "exec")) from exc
        return Launched(pid, pidfd)

    return launch


def _reset_signals() -> None:
    for signum in signal.valid_signals():
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass


def _tie_to_parent(parent: int) -> None:
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    if os.getppid() != parent:
        os._exit(127)


def _child_steps(stage: StageLaunch, parent: int, report: int) -> None:
    """Run in the forked child; never returns (exec or ``_exit``)."""
    containment = stage.containment
    step = "signals"
    try:
        _reset_signals()
        step = "setpgid"
        os.setpgid(0, stage.process_group)
        if stage.cgroup_fd is not None:
            step = "cgroup"
            procs = os.open("cgroup.procs", os.O_WRONLY, dir_fd=stage.cgroup_fd)
            os.write(procs, b"0")
            os.close(procs)
        if containment.user is not None:
            step = "credentials"
            uid, gid = containment.user
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if containment.parent_death_signal:
            step = "pdeathsig"
            _tie_to_parent(parent)
        step = "stdio"
        for target, fd in enumerate([os.dup(fd) for fd in stage.stdio]):
            os.dup2(fd, target)
        step = "rlimit"
        for res, soft, hard in containment.rlimits:
            resource.setrlimit(res, (soft, hard))
        if stage.cwd is not None:
            step = "chdir"
            os.chdir(stage.cwd)
        if containment.ruleset_fd is not None:
            step = "landlock"
            restrict_self(containment.ruleset_fd)
        step = "exec"
        os.closerange(3, report)
        os.closerange(report + 1, _ALL_FDS)  # close_range(2): any count, one call
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.execve(stage.program, list(stage.argv), dict(stage.env))  # noqa: S606
    except OSError as exc:
        os.write(report, f"{step}:{exc.errno or 0}".encode())
    finally:
        os._exit(127)


def launch_python(stage: StageLaunch) -> Launched:
    """Fork and run the pre-exec steps in Python (builds without the
    extension); a failure comes back over a close-on-exec pipe."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(report_r)
        os.close(report_w)
        raise _spawn_error(stage, exc, "clone") from exc
    if pid == 0:  # pragma: no cover - the child execs or exits
        os.close(report_r)
        _child_steps(stage, parent, report_w)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        failure = report.read()
    if failure:
        os.waitpid(pid, 0)
        step, _, number = failure.decode().partition(":")
        cause = OSError(int(number), os.strerror(int(number)))
        raise _spawn_error(stage, cause, step)
    return Launched(pid, os.pidfd_open(pid))


def choose_launcher() -> tuple[LauncherName, Launcher]:
    """The native spawner when the extension has one, else the Python one."""
    try:
        import cuprumd._native as native  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name != "cuprumd._native":
            raise
        return "python", launch_python
    return "native", _native_launcher(native.spawn_stage)
