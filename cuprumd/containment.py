"""The daemon's means of containment, set up once at start-up.

From the settings and the resolved allowlist it builds the sandbox policy
and its Landlock ruleset, the per-job cgroup subtree (where the daemon's
own cgroup is writable), the stages' rlimits and the spawner, and logs each
decision. ``Guard`` owns them for the daemon's life and closes them once.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cuprumd.engine.cgroup import JobCgroups
from cuprumd.engine.launch import Launcher, LauncherName, choose_launcher
from cuprumd.engine.limits import stage_rlimits
from cuprumd.engine.processes import JobProcessIndex, read_proc_stat
from cuprumd.engine.sandbox import Sandbox, SandboxPolicy, build_policy, open_sandbox
from cuprumd.engine.scratch import ScratchSpace
from cuprumd.errors import ConfigError, StartupError
from cuprumd.logging import get_logger
from cuprumd.peers import Peer
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
    job_user: tuple[int, int] | None = None
    cgroups: JobCgroups | None = None
    index: JobProcessIndex = field(default_factory=JobProcessIndex)

    def is_job_peer(self, peer: Peer) -> bool:
        """Whether a connection comes from a job (which may not act with
        the daemon's identity through the socket).

        Jobs cannot change their uid, so the uid settles it unless jobs run
        as the daemon's own user; then the peer's cgroup, its process
        ancestry, and the ``no_new_privs`` flag every sandboxed stage
        carries and no process can drop (a double-forked ``setsid``
        escapee keeps it). Every doubt counts as a job: a peer gone before
        or while it is checked (a job's child could connect, hand the
        socket on and exit), or one that cannot be read.
        """
        if self.job_user is not None:
            # Jobs hold no privileges and cannot change their uid.
            return peer.uid == self.job_user[0]
        if peer.uid != os.geteuid():
            return False  # jobs run as the daemon's user: this is a client
        if peer.pid <= 0:
            return True
        try:
            pidfd = os.pidfd_open(peer.pid)
        except OSError:
            return True
        try:
            return self._looks_like_a_job(peer) or _exited(pidfd)
        finally:
            os.close(pidfd)

    def _looks_like_a_job(self, peer: Peer) -> bool:
        if self.cgroups is not None and self.cgroups.owns_pid(peer.pid):
            return True
        if self.index.owns(peer.pid, read_proc_stat):
            return True
        return self.sandbox is not None and _no_new_privs(peer.pid)

    def replace_sandbox(self, settings: Settings, executables: Iterable[str]) -> None:
        """Rebuild the sandbox for new programs or paths (a reload). Jobs
        already running keep the rules they started with; the next ones get
        the new rules.

        Raises
        ------
        ConfigError
            When the new paths cannot be had; the running sandbox stays.
        """
        policy = build_policy(
            settings.sandbox,
            executables,
            readable_paths=settings.readable_paths,
            writable_paths=settings.writable_paths,
            state_dir=settings.state_dir,
        )
        sandbox = open_sandbox(policy)
        old, self.policy, self.sandbox = self.sandbox, policy, sandbox
        if self.scratch is not None:
            self.scratch.forget_rulesets()
        if old is not None:
            old.close()
        if sandbox is not None:
            _log.info("sandbox.configured", abi=sandbox.abi, **policy.describe())

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


def _exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _no_new_privs(pid: int) -> bool:
    """The flag, or True when it cannot be read (fail closed)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"NoNewPrivs:"):
                    return line.split()[1] != b"0"
    except OSError:
        return True
    return True


def decide_job_user(
    setting: str | None,
    *,
    euid: int,
    may_switch: bool,
    lookup: Callable[[str], tuple[int, int]],
) -> tuple[int, int] | None:
    """The ``(uid, gid)`` stages run as, or None for the daemon's own.

    A daemon running as root never runs jobs as root: Landlock does not
    mediate ``chmod``, ``chown`` or raw sockets, and a job with uid 0 owns
    every system file. Without ``job_user`` such a daemon runs them as
    ``nobody``.

    Raises
    ------
    ConfigError
        For an unknown user, root, or a switch the daemon may not make.
    """
    if setting is None:
        if euid != 0:
            return None
        setting = "nobody"
    try:
        uid, gid = lookup(setting)
    except KeyError:
        msg = f"job_user: no user {setting!r} on this system"
        raise ConfigError(msg) from None
    if uid == 0:
        msg = "job_user: jobs must not run as root; name an unprivileged user"
        raise ConfigError(msg)
    if uid == euid:
        return None
    if not may_switch:
        msg = (
            f"job_user = {setting!r} needs the daemon to run as root (it drops "
            "every privilege in the stage); unset it to run jobs as the "
            "daemon's own user"
        )
        raise ConfigError(msg)
    return uid, gid


def _lookup_user(name: str) -> tuple[int, int]:
    if name.isdigit():
        try:
            entry = pwd.getpwuid(int(name))
        except KeyError:
            return int(name), int(name)
    else:
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


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
    euid = os.geteuid()
    job_user = decide_job_user(
        settings.job_user, euid=euid, may_switch=euid == 0, lookup=_lookup_user
    )
    _log.info(
        "job_user.selected",
        uid=os.geteuid() if job_user is None else job_user[0],
        gid=os.getegid() if job_user is None else job_user[1],
        switched=job_user is not None,
    )
    try:
        scratch = ScratchSpace(settings.state_dir, owner=job_user)
    except OSError as exc:
        if sandbox is not None:
            sandbox.close()
        msg = f"cannot create the jobs' scratch space: {exc.strerror} ({exc.filename})"
        raise StartupError(msg) from None
    rlimits = stage_rlimits(nofile_soft, settings.job_rlimits)
    return Guard(policy, sandbox, scratch, launcher_name, launcher, rlimits, job_user)
