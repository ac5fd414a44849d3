"""The daemon's means of containment, set up once at start-up.

From the settings and the resolved allowlist it builds the sandbox policy
and its Landlock ruleset, the per-job cgroup subtree (where the daemon's
own cgroup is writable), the stages' rlimits and the spawner, and logs each
decision. ``Guard`` owns them for the daemon's life and closes them once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from cuprumd.engine.cgroup import JobCgroups
from cuprumd.engine.launch import Launcher, LauncherName, choose_launcher
from cuprumd.engine.limits import stage_rlimits
from cuprumd.engine.processes import JobProcessIndex, read_proc_stat
from cuprumd.engine.sandbox import Sandbox, SandboxPolicy, build_policy, open_sandbox
from cuprumd.engine.scratch import ScratchSpace
from cuprumd.errors import StartupError
from cuprumd.logging import get_logger
from cuprumd.settings import Settings

__all__ = ["Guard", "instance_tag", "prepare_guard"]

_log = get_logger("cuprumd.containment")


def instance_tag(socket: str) -> str:
    """A short name for this daemon's job cgroups, stable across restarts.

    Derived from where it listens, so a restarted daemon finds what the
    previous one left, and two daemons on different sockets never touch
    each other's jobs.
    """
    return hashlib.sha256(socket.encode()).hexdigest()[:12]


@dataclass
class Guard:
    """Everything that contains jobs, owned for the daemon's life."""

    policy: SandboxPolicy
    sandbox: Sandbox | None
    scratch: ScratchSpace | None
    launcher_name: LauncherName
    launcher: Launcher
    rlimits: tuple[tuple[int, int, int], ...]
    cgroups: JobCgroups | None = None
    index: JobProcessIndex = field(default_factory=JobProcessIndex)

    def is_job_process(self, pid: int) -> bool:
        """Whether ``pid`` belongs to a running job (it may not act with
        the daemon's identity through the socket)."""
        if pid <= 0:
            return False
        if self.cgroups is not None and self.cgroups.owns_pid(pid):
            return True
        return self.index.owns(pid, read_proc_stat)

    def open_cgroups(self, settings: Settings, socket: str) -> None:
        """Take over this daemon's job cgroup subtree, reaping leftovers.

        Where the daemon's cgroup is not writable (an unprivileged daemon
        without ``Delegate=yes``), jobs run without one and the process
        group is swept instead.
        """
        cgroups, reason = JobCgroups.open(
            instance_tag(socket),
            memory_max=settings.job_memory_max,
            pids_max=settings.job_pids_max,
        )
        self.cgroups = cgroups
        if cgroups is None:
            _log.warning("cgroup.unavailable", reason=reason)
            unusable = [
                name
                for name in ("job_memory_max", "job_pids_max")
                if getattr(settings, name) is not None
            ]
        else:
            _log.info(
                "cgroup.enabled",
                subtree=str(cgroups.subtree),
                reaped_stale=cgroups.reaped_stale,
                detail=reason,
            )
            unusable = list(cgroups.limits_unavailable)
        if unusable:
            _log.warning("cgroup.limits_unavailable", settings=unusable)

    def close(self) -> None:
        """Release the sandbox, the scratch space and the cgroup subtree."""
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None


def prepare_guard(
    settings: Settings, executables: Iterable[str], *, nofile_soft: int
) -> Guard:
    """Build the sandbox and the spawner, logging each decision.

    Cgroups come later (``Guard.open_cgroups``), once the socket is held.

    Raises
    ------
    ConfigError
        When the sandbox cannot be had as configured (kernel without the
        Landlock ABI it needs, ``state_dir`` inside a sandbox path).
    """
    try:
        launcher_name, launcher = choose_launcher()
    except ImportError as exc:
        _log.error("spawner.broken", module="cuprumd._native", error=str(exc))
        msg = (
            f"the native extension cuprumd._native is installed but cannot be "
            f"loaded ({exc}); rebuild it or remove it"
        )
        raise StartupError(msg) from None
    _log.info("spawner.selected", spawner=launcher_name)
    policy = build_policy(
        settings.sandbox,
        executables,
        readable_paths=settings.readable_paths,
        writable_paths=settings.writable_paths,
        state_dir=settings.state_dir,
    )
    sandbox = open_sandbox(policy)
    if sandbox is None:
        _log.warning(
            "sandbox.off",
            message="sandbox = 'off': stages run with the daemon user's full "
            "rights; the allowlist checks only argv[0]",
        )
    else:
        _log.info("sandbox.configured", abi=sandbox.abi, **policy.describe())
    try:
        scratch = ScratchSpace(settings.state_dir)
    except OSError as exc:
        if sandbox is not None:
            sandbox.close()
        msg = f"cannot create the jobs' scratch space: {exc.strerror} ({exc.filename})"
        raise StartupError(msg) from None
    rlimits = stage_rlimits(nofile_soft, settings.job_rlimits)
    return Guard(policy, sandbox, scratch, launcher_name, launcher, rlimits)
