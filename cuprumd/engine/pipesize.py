"""How large the daemon makes the pipes between two stages.

A pump moves stage *i*'s stdout pipe into stage *i + 1*'s stdin pipe; the
larger those two pipes, the larger the batches producers, pumps and
consumers move per wake-up. Only these inter-stage pipes are grown: stdin,
the last stage's stdout and every stderr keep the kernel's default.

The kernel charges pipe buffers to the user that created the pipe, whatever
process of that user did it. A user without ``CAP_SYS_RESOURCE`` or
``CAP_SYS_ADMIN`` over ``pipe-user-pages-soft`` (16384 pages, 64 MiB, by
default) has ``F_SETPIPE_SZ`` refused with ``EPERM``, and every new pipe it
creates gets 2 pages instead of 16; over ``pipe-user-pages-hard`` it gets
no new pipes at all. An unprivileged daemon therefore shares the budget
among the jobs it runs: each job, as it starts, may grow its pipes with
what is left once the pipes of the jobs running, the default pipes of
every job that may still start (``max_concurrent_jobs`` jobs of
``max_stages`` stages) and a quarter of the budget for everything else of
the user (the stages' own pipes, when they run as the daemon's user) are
counted. A job alone gets large pipes; a full daemon, default ones.

``job_pipe_grant`` is the rule (pure); ``PipeLedger`` keeps the tally of
running jobs; ``PipeBudget.of_this_process`` reads the kernel's limits;
``grow_pipe`` applies a size and says once when the kernel refuses.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cuprumd.logging import get_logger

__all__ = [
    "DEFAULT_PIPE_PAGES",
    "PipeBudget",
    "PipeGrant",
    "PipeLedger",
    "grow_pipe",
    "job_pipe_grant",
]

_log = get_logger("cuprumd.pipes")

#: A new pipe's buffer slots (``PIPE_DEF_BUFFERS``): 64 KiB with 4 KiB pages.
DEFAULT_PIPE_PAGES = 16
#: The kernel's ``pipe-max-size`` default, used when it cannot be read.
_DEFAULT_MAX_SIZE = 1 << 20
#: Capability bits that lift the per-user pipe limits (``capability.h``).
_CAP_SYS_ADMIN = 21
_CAP_SYS_RESOURCE = 24
#: One part in this many of the per-user budget is left for pipes that are
#: not the daemon's own.
_HEADROOM_PARTS = 4


@dataclass(frozen=True)
class PipeBudget:
    """What the kernel lets this process spend on pipe buffers.

    ``soft_pages`` and ``hard_pages`` are ``pipe-user-pages-soft`` and
    ``-hard`` (0: no limit); ``max_size`` is ``pipe-max-size``, the largest
    size ``F_SETPIPE_SZ`` grants without ``CAP_SYS_RESOURCE``; ``exempt``
    says the per-user limits do not apply to this process.
    """

    soft_pages: int
    hard_pages: int
    max_size: int
    page_size: int
    exempt: bool

    @property
    def limit_pages(self) -> int:
        """The lower of the two limits that are set, 0 if neither is."""
        limits = [pages for pages in (self.soft_pages, self.hard_pages) if pages > 0]
        return min(limits, default=0)

    @classmethod
    def of_this_process(cls, proc: Path = Path("/proc")) -> PipeBudget:
        """Read the limits and this process's capabilities from ``proc``."""
        return cls(
            soft_pages=_read_int(proc / "sys/fs/pipe-user-pages-soft", 0),
            hard_pages=_read_int(proc / "sys/fs/pipe-user-pages-hard", 0),
            max_size=_read_int(proc / "sys/fs/pipe-max-size", _DEFAULT_MAX_SIZE),
            page_size=os.sysconf("SC_PAGE_SIZE"),
            exempt=_exempt(proc / "self"),
        )


@dataclass(frozen=True)
class PipeGrant:
    """One job's share of the budget: its inter-stage pipes are grown to
    ``size`` (0: left at the default), and ``pages`` are counted against
    the budget until it ends: all its pipes, and never less than the slot
    of a job of ``max_stages`` stages, since such a job may take its place
    when it ends."""

    size: int
    pages: int


def job_pipe_grant(
    wanted: int,
    *,
    stages: int,
    held_pages: int,
    others: int,
    max_stages: int,
    budget: PipeBudget,
) -> PipeGrant:
    """How far a job of ``stages`` stages may grow its inter-stage pipes.

    ``wanted`` (``pump_buffer_size``) is capped at ``pipe-max-size`` and
    rounded down to a power of two pages, as the kernel would round it up.
    An exempt process, or a kernel without per-user limits, gets that. An
    unprivileged one counts, within three quarters of the per-user budget:
    ``held_pages`` of the jobs already running, default pipes for the
    ``others`` jobs that may still start beside this one (each of
    ``max_stages`` stages, the worst case the settings admit), and this
    job's own default pipes (``3 * stages``); what is left is shared among
    its ``2 * (stages - 1)`` inter-stage pipes (both ends of every pump).
    So a job alone on the daemon gets large pipes, and however jobs come
    and go every admitted one still gets default-sized pipes (held pages
    plus a slot per job that may still start stay within the three
    quarters).
    """
    page = budget.page_size
    own = 3 * stages * DEFAULT_PIPE_PAGES
    slot = 3 * max_stages * DEFAULT_PIPE_PAGES
    grown = 2 * (stages - 1)
    pages = _pow2_floor(min(wanted, budget.max_size) // page)
    if pages <= DEFAULT_PIPE_PAGES or grown == 0:
        return PipeGrant(0, max(own, slot))
    limit = budget.limit_pages
    if not (budget.exempt or limit == 0):
        usable = limit - limit // _HEADROOM_PARTS
        spare = usable - held_pages - others * slot - own
        pages = min(pages, _pow2_floor(DEFAULT_PIPE_PAGES + spare // grown))
        if pages <= DEFAULT_PIPE_PAGES:
            return PipeGrant(0, max(own, slot))
    return PipeGrant(
        pages * page, max(own + grown * (pages - DEFAULT_PIPE_PAGES), slot)
    )


class PipeLedger:
    """The daemon's running jobs' shares of the per-user pipe budget.

    The one owner of the tally: a job takes a grant when its pipes are made
    and gives it back once they are closed. ``configure`` (start, reload)
    re-reads the budget; grants already out keep their size. So a reload
    that raises ``max_concurrent_jobs`` or ``max_stages`` is honoured as
    the jobs started before it end: until then new jobs grow nothing, and
    if the old jobs' pipes leave too little of the budget, the kernel gives
    the new ones its 2-page pipes (slower, still correct).
    """

    def __init__(
        self,
        *,
        wanted: int,
        max_jobs: int,
        max_stages: int,
        budget: PipeBudget | None = None,
    ) -> None:
        self._held = 0
        self._running = 0
        self._fixed_budget = budget
        self.configure(wanted=wanted, max_jobs=max_jobs, max_stages=max_stages)

    def configure(self, *, wanted: int, max_jobs: int, max_stages: int) -> None:
        self._wanted = wanted
        self._max_jobs = max_jobs
        self._max_stages = max_stages
        self.budget = self._fixed_budget or PipeBudget.of_this_process()

    @property
    def held_pages(self) -> int:
        return self._held

    def acquire(self, stages: int) -> PipeGrant:
        grant = job_pipe_grant(
            self._wanted,
            stages=stages,
            held_pages=self._held,
            others=max(0, self._max_jobs - self._running - 1),
            max_stages=self._max_stages,
            budget=self.budget,
        )
        self._held += grant.pages
        self._running += 1
        return grant

    def release(self, grant: PipeGrant) -> None:
        self._held -= grant.pages
        self._running -= 1


class _Refusals:
    """Logs the first refused growth of the process; later ones are silent
    (one event per pipe would flood the log once the budget is spent)."""

    logged = False

    @classmethod
    def note(cls, size: int, exc: OSError) -> None:
        if cls.logged:
            return
        cls.logged = True
        budget = PipeBudget.of_this_process()
        _log.warning(
            "pipe.growth_refused",
            size=size,
            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            pipe_user_pages_soft=budget.soft_pages,
            pipe_max_size=budget.max_size,
            message="a refused pipe keeps its size (slower, still correct); "
            "later refusals are not logged",
        )


def grow_pipe(fd: int, size: int) -> None:
    """Set the pipe behind ``fd`` to ``size`` bytes, at most
    ``pipe-max-size`` (0: leave it as it is).

    A refusal (``EPERM``: over the per-user budget or ``pipe-max-size``;
    ``EBUSY``: more queued than fits) leaves the pipe as it was and is
    logged once per process as ``pipe.growth_refused``.
    """
    if size <= 0:
        return
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(size, _pipe_max_size()))
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EBUSY):
            _Refusals.note(size, exc)


@functools.lru_cache(maxsize=1)
def _pipe_max_size() -> int:
    """``pipe-max-size``, read once: callers without a budget (library use
    with ``pump_buffer_size`` as the size) still stay within it."""
    return _read_int(Path("/proc/sys/fs/pipe-max-size"), _DEFAULT_MAX_SIZE)


def _pow2_floor(pages: int) -> int:
    return 1 << (pages.bit_length() - 1) if pages > 0 else 0


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return default


def _exempt(self_dir: Path) -> bool:
    """Whether this process holds ``CAP_SYS_RESOURCE`` or ``CAP_SYS_ADMIN``
    in the initial user namespace (the one the kernel checks)."""
    try:
        status = (self_dir / "status").read_text()
        uid_map = (self_dir / "uid_map").read_text().split()
    except OSError:
        return False
    if uid_map[:3] != ["0", "0", "4294967295"]:
        return False  # capabilities inside a user namespace do not count
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
            return bool(caps >> _CAP_SYS_RESOURCE & 1 or caps >> _CAP_SYS_ADMIN & 1)
    return False
