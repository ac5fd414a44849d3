"""Small helpers shared by the pipeline tests."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cuprumd.backend import StreamBackend
from cuprumd.engine.plumbing import Plumbing
from cuprumd.models import JobResult, JobSpec
from cuprumd.pipeline import RunOptions, execute, run_pipeline


def job(*stages: list[str], **fields: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"stages": [{"argv": argv} for argv in stages], **fields}
    )


def run(backend: StreamBackend, *stages: list[str], **fields: Any) -> JobResult:
    return run_pipeline(job(*stages, **fields), backend=backend)


async def run_async(
    backend: StreamBackend,
    spec: JobSpec,
    options: RunOptions | None = None,
    **kwargs: Any,
) -> JobResult:
    return await execute(spec, options or RunOptions(), backend, **kwargs)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    pgid: int


def processes() -> Iterator[Proc]:
    """Every process in /proc, zombies included (``state == "Z"``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield Proc(int(entry.name), fields[0], int(fields[1]), int(fields[2]))


def child_pids(parent: int | None = None) -> list[int]:
    """Direct children of ``parent`` (this process by default), zombies too."""
    me = os.getpid() if parent is None else parent
    return [p.pid for p in processes() if p.ppid == me]


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return [p.pid for p in processes() if p.state != "Z" and p.pgid == pgid]


def wait_until_gone(pgid: int, timeout: float = 3.0) -> list[int]:
    """Orphaned grandchildren take a moment to be reaped by init."""
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return members


class SocketPlumbing(Plumbing):
    """Inter-stage links made of socketpairs: raw fds, but not pipes."""

    def _pipe(self, size: int = 0) -> tuple[int, int]:
        if not size:
            return super()._pipe(size)
        a, b = socket.socketpair()
        a.shutdown(socket.SHUT_WR)
        b.shutdown(socket.SHUT_RD)
        r, w = a.detach(), b.detach()
        os.set_inheritable(r, False)
        os.set_inheritable(w, False)
        self._owned.update((r, w))
        return r, w


#: Descriptors the daemon keeps per job slot once a slot was used (the
#: slot's cgroup and sandbox ruleset): bounded by max_concurrent_jobs.
SLOT_CACHE = ("anon_inode:[landlock-ruleset]",)
#: A job slot's cgroup directory, kept open to start stages inside it, and
#: its ``cgroup.events``, read at every job's end.
SLOT_DIR = re.compile(r"/cuprumd-[0-9a-f]+/slot-\d+(/cgroup\.events)?$")


def fd_count(pid: int) -> int:
    """Open descriptors, the per-slot caches left out."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += not (target.endswith(SLOT_CACHE) or SLOT_DIR.search(target))
    return count
