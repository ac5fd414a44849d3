"""Per-job cgroup v2: one cgroup per job, killed whole when the job ends.

A process group cannot hold a stage that calls ``setsid``; a cgroup can,
and ``cgroup.kill`` ends everything in it at once, so no descendant of a
job outlives it. This needs a cgroup v2 subtree the daemon may write to
(systemd's ``Delegate=yes``, or root). Without one the caller falls back to
process groups, and says so.

Layout, under the daemon's own cgroup::

    <own>/cuprumd-<tag>/<job_id>   one per running job
    <own>/cuprumd-<tag>.daemon     the daemon itself, only when it had to
                                   leave <own> to enable memory/pids limits

The cgroupfs parsing and file operations are in ``cgroupfs``, and passing
controllers down is ``cgroup_controllers``'s; this module holds the
daemon's layout and the classes that do the work.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cuprumd.engine.cgroup_controllers import enable_controllers
from cuprumd.engine.cgroupfs import (
    _cgroup2_mounts,
    _cgroup_dir,
    _cgroup_path_of,
    _kill,
    _poll_delays,
    _populated,
    _procs,
    _read,
    _remove_tree,
    _wait_empty,
    _within,
    _write,
    find_cgroup2_mount,
    own_cgroup_path,
)
from cuprumd.logging import get_logger

__all__ = ["JobCgroup", "JobCgroups", "find_cgroup2_mount", "own_cgroup_path"]

_log = get_logger("cuprumd.engine.cgroup")

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A killed job's cgroup usually empties within a millisecond; a stage in
#: uninterruptible sleep can hold it longer, and then the next start's
#: clean-up removes it rather than a job's end waiting on it.
_EMPTY_TIMEOUT = 2.0


@dataclass(frozen=True)
class _Limit:
    setting: str
    controller: str
    filename: str
    value: int


class JobCgroup:
    """One job's cgroup.

    Every stage starts in it: the native spawner creates it inside (through
    ``fd``, the directory; ``clone3`` with ``CLONE_INTO_CGROUP``), else the
    child moves itself there before exec. So no stage runs a single
    instruction of its program outside it and nothing it forks can be
    missed. Creating inside matters: a move costs the kernel an RCU grace
    period, up to milliseconds per stage on an idle machine.

    A cgroup that was ever killed (``cgroup.kill``) is not recycled: some
    kernels kill every process later created inside such a cgroup, as if
    the old kill still applied to it.
    """

    def __init__(self, path: Path, fd: int, pool: JobCgroups | None = None) -> None:
        self.path = path
        self.fd = fd
        self._pool = pool
        # Kept as a string: kill runs once per job that leaves something.
        self._kill_file = str(path / "cgroup.kill")
        # Read at every job's end: held open, read again from offset 0.
        self._events = os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        self._closed = False
        self._removed = False
        self.killed = False

    def kill(self) -> None:
        """SIGKILL everything in the job, ``setsid`` escapees included."""
        self.killed = True
        _kill(self._kill_file)

    def populated(self) -> bool:
        """Whether any process of the job is still alive (zombies aside)."""
        try:
            if self._events < 0:  # closed, perhaps left behind: ask by path
                return _populated(_read(self.path / "cgroup.events"))
            return _populated(os.pread(self._events, 512, 0).decode())
        except OSError as exc:  # removed: nothing can be in it
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                return False
            raise

    def pids(self) -> list[int]:
        """Every process of the job, including any in cgroups it made."""
        found: list[int] = []
        for dirpath, _dirs, _files in os.walk(self.path):
            found.extend(_procs(Path(dirpath)))
        return found

    def _begin_close(self) -> bool:
        if self._closed:
            return False
        self._closed = True
        self._kill_quietly()
        return True

    def _kill_quietly(self) -> None:
        try:
            self.kill()
        except OSError as exc:
            _log.error("cgroup.kill_failed", path=str(self.path), error=str(exc))

    def _finish(self, *, emptied: bool) -> bool:
        if emptied and self._pool is not None and self._pool.recycle(self):
            return True
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._events)
            self.fd = self._events = -1
        if emptied:
            self._removed = _remove_tree(self.path)
        if not self._removed:
            _log.warning("cgroup.left_behind", path=str(self.path), emptied=emptied)
        return self._removed

    def rearm(self) -> None:
        """Make an emptied cgroup ready for its next job (pool use only)."""
        self._closed = False

    async def aclose(self) -> bool:
        """Kill the job, then remove its cgroup once empty (or hand it back
        to its pool), without blocking the event loop while it empties.

        ``cgroup.events`` signals changes with POLLPRI, which an event loop's
        readers do not watch, so it is polled. False when the cgroup did not
        empty in time: it is left for the next start's clean-up. Idempotent;
        a repeat call returns the first one's outcome so far.
        """
        if self._closed:
            return self._removed
        self._closed = True
        if not self.populated():  # the usual case: the sweep left nothing
            return self._finish(emptied=True)
        self._kill_quietly()
        for delay in _poll_delays(_EMPTY_TIMEOUT):
            if not self.populated():
                return self._finish(emptied=True)
            await asyncio.sleep(delay)
        return self._finish(emptied=not self.populated())

    def close(self) -> bool:
        """:meth:`aclose` for paths that cannot await (tear-down, errors
        while starting a job)."""
        if not self._begin_close():
            return self._removed
        return self._finish(emptied=_wait_empty(self.path, _EMPTY_TIMEOUT))


class JobCgroups:
    """The daemon's subtree of job cgroups.

    Open it only once the socket is bound: opening kills whatever an earlier
    daemon on the same socket left running, and a second daemon that has
    not yet found the socket taken would kill the first one's jobs.
    """

    def __init__(
        self,
        subtree: Path,
        subtree_path: str,
        limits: tuple[_Limit, ...],
        limits_unavailable: tuple[str, ...],
        reaped_stale: int,
    ) -> None:
        self.subtree = subtree
        self.limits_unavailable = limits_unavailable
        self.reaped_stale = reaped_stale
        self._subtree_path = subtree_path
        self._limits = limits
        self._free: list[JobCgroup] = []
        self._slots = 0
        self._closing = False

    @classmethod
    def open(
        cls,
        tag: str,
        *,
        memory_max: int | None,
        pids_max: int | None,
        own_dir: Path | None = None,
        own_pid: int | None = None,
    ) -> tuple[JobCgroups | None, str]:
        """Set up ``<own>/cuprumd-<tag>``; ``(None, why)`` when cgroups
        cannot be had, else ``(subtree, summary)``.

        ``tag`` keeps daemons on different sockets out of each other's jobs
        while letting a restarted one find its predecessor's. ``own_dir``
        and ``own_pid`` stand for the daemon's cgroup and pid, so the
        set-up can be exercised on a test cgroup with a stand-in process.
        Limits that cannot be enforced here are named in
        ``limits_unavailable``, not treated as failure.
        """
        wanted: list[_Limit] = []
        if memory_max is not None:
            wanted.append(_Limit("job_memory_max", "memory", "memory.max", memory_max))
        if pids_max is not None:
            wanted.append(_Limit("job_pids_max", "pids", "pids.max", pids_max))
        return cls._open(tag, tuple(wanted), own_dir=own_dir, own_pid=own_pid)

    @classmethod
    def _open(
        cls,
        tag: str,
        wanted: tuple[_Limit, ...],
        *,
        own_dir: Path | None,
        own_pid: int | None,
    ) -> tuple[JobCgroups | None, str]:
        if not _NAME.fullmatch(tag):
            msg = f"cgroup tag {tag!r} is not a short [A-Za-z0-9_-] name"
            raise ValueError(msg)
        mounts = _cgroup2_mounts(_read(Path("/proc/self/mountinfo")))
        if not mounts:
            return None, "no cgroup2 hierarchy is mounted"
        if own_dir is None:
            found = _locate_own(mounts)
            if isinstance(found, str):
                return None, found
            own_dir = found
        if own_dir.name == f"cuprumd-{tag}.daemon":
            own_dir = own_dir.parent
        subtree = own_dir / f"cuprumd-{tag}"
        subtree_path = _cgroup_path_of(mounts, subtree)
        if subtree_path is None:
            return None, f"{own_dir} is not in a cgroup2 hierarchy"
        why_not = _make_subtree(own_dir, subtree)
        if why_not is not None:
            return None, why_not

        reaped = _reap_stale(subtree)
        enabled = enable_controllers(
            own_dir,
            subtree,
            [limit.controller for limit in wanted],
            own_pid=os.getpid() if own_pid is None else own_pid,
            leaf=own_dir / f"cuprumd-{tag}.daemon",
        )
        limits = tuple(limit for limit in wanted if limit.controller in enabled)
        unavailable = tuple(
            limit.setting for limit in wanted if limit.controller not in enabled
        )
        applied = ", ".join(limit.setting for limit in limits) or "none"
        summary = f"{subtree} (limits: {applied}; stale job cgroups reaped: {reaped})"
        return cls(subtree, subtree_path, limits, unavailable, reaped), summary

    def create(self, job_id: str) -> JobCgroup:
        """Make the job's cgroup with its limits, ready for stages to join.

        Raises ``OSError`` (the cgroup is then not left behind) so the
        caller can refuse the job rather than run it unconfined.
        """
        if not _NAME.fullmatch(job_id):
            msg = f"job id {job_id!r} is not a usable cgroup name"
            raise ValueError(msg)
        path = self.subtree / job_id
        path.mkdir()
        try:
            for limit in self._limits:
                _write(path / limit.filename, str(limit.value))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            _remove_tree(path)
            raise
        try:
            return JobCgroup(path, fd)
        except OSError:
            os.close(fd)
            _remove_tree(path)
            raise

    def acquire(self) -> JobCgroup:
        """An empty cgroup for the next job: a recycled one when there is
        one (creating and removing a cgroup costs more than the job of
        ``true`` itself), else a new slot. ``aclose`` gives it back.

        Slots forbid sub-cgroups (``cgroup.max.descendants`` = 0), so an
        emptied slot is truly empty. Raises ``OSError`` like ``create``.
        """
        if self._free:
            job = self._free.pop()
            job.rearm()
            return job
        self._slots += 1
        job = self.create(f"slot-{self._slots}")
        try:
            _write(job.path / "cgroup.max.descendants", "0")
        except OSError:
            job.close()
            raise
        job._pool = self
        return job

    def recycle(self, job: JobCgroup) -> bool:
        """Take back an emptied slot; False at shutdown, or for a slot that
        was killed (remove it then; see ``JobCgroup``)."""
        if self._closing or job.killed:
            return False
        self._free.append(job)
        return True

    def owns_pid(self, pid: int) -> bool:
        """Whether ``pid`` belongs to one of our jobs, so that jobs cannot
        submit jobs.

        A job runs as the daemon's user, so its ``/proc`` entry is always
        readable to us: one we cannot read is gone or not a job's.
        """
        try:
            text = _read(Path(f"/proc/{pid}/cgroup"))
        except OSError:
            return False
        return _within(text, self._subtree_path)

    def close(self) -> bool:
        """Remove the subtree at shutdown; False (and left) if jobs remain."""
        self._closing = True
        free, self._free = self._free, []
        for job in free:
            job._pool = None
            job.rearm()
            job.close()
        try:
            self.subtree.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


def _locate_own(mounts: list[tuple[str, str]]) -> Path | str:
    """The daemon's own cgroup directory, or why there is none."""
    own_path = own_cgroup_path(_read(Path("/proc/self/cgroup")))
    if own_path is None:
        return "this process has no cgroup v2 path (cgroup v1 only)"
    own_dir = _cgroup_dir(mounts, own_path)
    if own_dir is None or not own_dir.is_dir():
        return f"own cgroup {own_path} is not visible in any cgroup2 mount"
    return own_dir


def _make_subtree(own: Path, subtree: Path) -> str | None:
    """Create the subtree; the reason cgroups are unavailable, if they are.

    ``os.access`` alone can be wrong (a read-only mount, an LSM), so the
    mkdir is the real test; the access check gives the clearer message.
    """
    uid = os.geteuid()
    if not os.access(own, os.W_OK):
        return f"{own} is not writable by uid {uid} (not delegated to us)"
    try:
        subtree.mkdir(exist_ok=True)
    except OSError as exc:
        return f"{own} is not writable by uid {uid}: {exc.strerror}"
    if not os.access(subtree, os.W_OK):
        return f"{subtree} is not writable by uid {uid}"
    kill = subtree / "cgroup.kill"
    if not kill.exists():
        _remove_tree(subtree)
        return "cgroup.kill is missing (needs Linux 5.14 or later)"
    if not os.access(kill, os.W_OK):
        return f"{kill} is not writable by uid {uid} (made by another user?)"
    return None


def _reap_stale(subtree: Path) -> int:
    """Kill and remove what an earlier daemon on this socket left behind.

    Everything under the subtree is stale at start-up: the whole subtree is
    killed at once, then each job cgroup removed. One that does not empty
    in time stays, and is not counted.
    """
    stale = [entry for entry in subtree.iterdir() if entry.is_dir()]
    if not stale:
        return 0
    _kill(subtree / "cgroup.kill")
    _wait_empty(subtree, _EMPTY_TIMEOUT)
    return sum(_remove_tree(entry) for entry in stale)
