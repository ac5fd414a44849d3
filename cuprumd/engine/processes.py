"""The one owner of a job's processes: spawn, exits, signals, final sweep.

A job's stages share one process group and, where the daemon has a cgroup
subtree, one cgroup. ``ProcessGroup`` starts them, learns each exit through
a pidfd, signals them, and when the last stage has exited sweeps whatever
they left behind (a background child, a ``setsid`` escapee) before the job
reports: nothing outlives its job.

The group leader (stage 0) is kept unreaped until that sweep: its zombie
holds the process-group id, so the final ``killpg`` cannot reach a stranger
that happened to be given the same number.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterable

from cuprumd.engine.cgroup import JobCgroup
from cuprumd.engine.launch import Launched, Launcher, StageLaunch
from cuprumd.fdio import close_quietly

__all__ = ["JobProcessIndex", "ProcessGroup", "read_proc_stat", "returncode_of"]


def returncode_of(info: os.waitid_result) -> int:
    """``subprocess``'s convention: the exit status, or minus the signal."""
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


class JobProcessIndex:
    """Which processes and process groups belong to running jobs.

    Lets the server tell a connection from a job's own process (which
    must not act with the daemon's identity) when there is no cgroup to
    ask. Stages are indexed by pid as well as by group, so a stage that
    leaves the group itself (``setpgid``, ``setsid``) is still known.
    """

    def __init__(self) -> None:
        self._groups: set[int] = set()
        self._pids: set[int] = set()

    def add(self, pid: int, pgid: int) -> None:
        """A stage of the job whose group is ``pgid`` started."""
        self._groups.add(pgid)
        self._pids.add(pid)

    def discard(self, pids: Iterable[int], pgid: int) -> None:
        """A job's group has been swept."""
        self._groups.discard(pgid)
        self._pids.difference_update(pids)

    def owns(self, pid: int, read_stat: Callable[[int], tuple[int, int]]) -> bool:
        """Whether ``pid`` or one of its ancestors is a stage or in a job's
        group. A process that vanishes while its ancestry is read counts as
        a job's: failing closed is the only safe answer to a race.

        ``read_stat(pid)`` returns ``(ppid, pgid)``; the ancestor walk
        catches a descendant that left the group while its parent chain is
        still alive.
        """
        seen = 0
        while pid > 1 and seen < 64:
            if pid in self._pids:
                return True
            try:
                ppid, pgid = read_stat(pid)
            except OSError:
                return True
            if pgid in self._groups:
                return True
            pid, seen = ppid, seen + 1
        return False


def read_proc_stat(pid: int) -> tuple[int, int]:
    """``(ppid, pgid)`` of a live process, from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[1]), int(fields[2])


class ProcessGroup:
    """A job's stages from spawn to the last reap; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        launcher: Launcher,
        cgroup: JobCgroup | None,
        index: JobProcessIndex | None,
    ) -> None:
        self._loop = loop
        self._launcher = launcher
        self._cgroup = cgroup
        self._index = index
        self._pidfds: list[int] = []
        self._leader_fd: int | None = None
        self.pgid: int | None = None
        self.pids: list[int | None] = []
        self.returncodes: list[int | None] = []
        self.exits: list[asyncio.Future[int]] = []
        self._swept = False
        self._exited: asyncio.Future[None] | None = None

    @property
    def cgroup_fd(self) -> int | None:
        """The job cgroup's directory, which each stage starts in."""
        return None if self._cgroup is None else self._cgroup.fd

    # -- start -------------------------------------------------------------

    def start(self, stage: StageLaunch) -> int:
        """Start the next stage in the group; return its index.

        Raises ``SpawnError`` (naming the program and errno); the caller
        then kills the stages already started.
        """
        index = len(self.pids)
        launched: Launched = self._launcher(stage)
        self.pids.append(launched.pid)
        self.returncodes.append(None)
        if self.pgid is None:
            self.pgid = launched.pid
            self._leader_fd = launched.pidfd
        else:
            self._pidfds.append(launched.pidfd)
        if self._index is not None:
            self._index.add(launched.pid, self.pgid)
        future: asyncio.Future[int] = self._loop.create_future()
        self.exits.append(future)
        self._loop.add_reader(
            launched.pidfd, self._on_exit, index, launched.pidfd, future
        )
        return index

    def _on_exit(self, index: int, pidfd: int, future: asyncio.Future[int]) -> None:
        self._loop.remove_reader(pidfd)
        leader = pidfd == self._leader_fd
        flags = os.WEXITED | (os.WNOWAIT if leader else 0)
        info = os.waitid(os.P_PIDFD, pidfd, flags)
        if not leader:
            self._pidfds.remove(pidfd)
            close_quietly(pidfd)
        code = 0 if info is None else returncode_of(info)
        self.returncodes[index] = code
        if not future.done():
            future.set_result(code)
        waiter = self._exited
        if waiter is not None and not waiter.done() and self.all_exited:
            waiter.set_result(None)

    # -- signals -------------------------------------------------------------

    @property
    def all_exited(self) -> bool:
        """Every started stage has exited (the leader may still be a zombie)."""
        return all(f.done() for f in self.exits)

    async def wait_exited(self) -> None:
        """Return once every stage started so far has exited: one wake-up
        when the last one goes, not one per stage."""
        while not self.all_exited:
            self._exited = self._loop.create_future()
            try:
                await self._exited
            finally:
                self._exited = None

    def signal(self, sig: signal.Signals, *, sweeping: bool = False) -> None:
        """Signal the whole job, while any part of it may still run. The
        final sweep kills the cgroup only if something is left in it: a
        killed cgroup is not handed to another job (see ``JobCgroup``)."""
        if self._swept or self.pgid is None:
            return
        cgroup = self._cgroup
        if (
            sig is signal.SIGKILL
            and cgroup is not None
            and (not sweeping or cgroup.populated())
        ):
            cgroup.kill()
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def sweep(self) -> None:
        """Kill whatever the stages left behind, then reap the leader.

        Called once every stage has exited. With a cgroup this reaches
        every descendant; without one, everything still in the group (the
        leader's zombie keeps the id ours until this ``killpg``).
        """
        if self._swept:
            return
        self.signal(signal.SIGKILL, sweeping=True)
        self._swept = True
        if self._index is not None and self.pgid is not None:
            self._index.discard((p for p in self.pids if p is not None), self.pgid)
        if self._leader_fd is not None:
            fd, self._leader_fd = self._leader_fd, None
            if self.exits and self.exits[0].done():
                os.waitid(os.P_PIDFD, fd, os.WEXITED)
            close_quietly(fd)

    async def close(self) -> bool:
        """Wait for every stage, sweep, and release the cgroup.

        The one close contract: whatever happened before, after this no
        stage runs, no zombie of the job remains, and its pidfds and cgroup
        are released. True when the kernel vouches that nothing of the job
        is left at all (its cgroup emptied); without a cgroup, a ``setsid``
        descendant may have escaped the sweep, so False.
        """
        await self.wait_exited()
        self.sweep()
        if self._cgroup is None:
            return False
        cgroup, self._cgroup = self._cgroup, None
        return await cgroup.aclose()
