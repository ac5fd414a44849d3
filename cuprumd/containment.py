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
from cuprumd.engine.launch import Containment, Launcher, LauncherName, choose_launcher
from cuprumd.engine.limits import stage_rlimits
from cuprumd.engine.processes import JobProcessIndex, read_proc_stat
from cuprumd.engine.sandbox import (
    Ruleset,
    SandboxPolicy,
    build_policy,
    create_ruleset,
    landlock_abi,
)
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
    ruleset: Ruleset | None
    cgroups: JobCgroups | None
    launcher_name: LauncherName
    launcher: Launcher
    containment: Containment
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
        """Release the ruleset and the (empty) cgroup subtree."""
        if self.ruleset is not None:
            self.ruleset.close()
            self.ruleset = None
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
    policy = build_policy(
        settings.sandbox,
        executables,
        readable_paths=settings.readable_paths,
        writable_paths=settings.writable_paths,
        state_dir=settings.state_dir,
    )
    ruleset = create_ruleset(policy)
    if ruleset is None:
        _log.warning(
            "sandbox.off",
            message="sandbox = 'off': stages run with the daemon user's full "
            "rights; the allowlist checks only argv[0]",
        )
    else:
        _log.info("sandbox.configured", abi=landlock_abi(), **policy.describe())
    launcher_name, launcher = choose_launcher()
    _log.info("spawner.selected", spawner=launcher_name)
    containment = Containment(
        ruleset_fd=None if ruleset is None else ruleset.fd,
        rlimits=stage_rlimits(nofile_soft, settings.job_rlimits),
    )
    return Guard(policy, ruleset, None, launcher_name, launcher, containment)
