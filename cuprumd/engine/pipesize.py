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
no new pipes at all. An unprivileged daemon therefore sizes its pipes for
the worst case it admits: ``max_concurrent_jobs`` jobs of ``max_stages``
stages each, all their default-sized pipes counted, a quarter of the budget
left for everything else of the user (the stages' own pipes, when they run
as the daemon's user). Whatever is left is shared among the inter-stage
pipes; if that does not reach a default pipe's size, nothing is grown.

``inter_stage_pipe_size`` is the rule (pure); ``PipeBudget.of_this_process``
reads its inputs; ``grow_pipe`` applies it and says once when the kernel
refuses.
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
    "daemon_pipe_size",
    "grow_pipe",
    "inter_stage_pipe_size",
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


def inter_stage_pipe_size(
    wanted: int, *, jobs: int, max_stages: int, budget: PipeBudget
) -> int:
    """The size to grow each inter-stage pipe to; 0 leaves them as they are.

    ``wanted`` (``pump_buffer_size``) is capped at ``pipe-max-size`` and
    rounded down to a power of two pages, as the kernel would round it up.
    An exempt process, or a kernel without per-user limits, gets that. An
    unprivileged one gets at most what keeps ``jobs`` concurrent jobs of
    ``max_stages`` stages within three quarters of the per-user budget:
    each such job holds ``3 * max_stages`` pipes at the default 16 pages,
    ``2 * (max_stages - 1)`` of which (both ends of every pump) are grown.
    """
    page = budget.page_size
    default_size = DEFAULT_PIPE_PAGES * page
    size = _pow2_floor(min(wanted, budget.max_size) // page) * page
    if size <= default_size:
        return 0
    limit = budget.limit_pages
    grown = jobs * 2 * (max_stages - 1)
    if budget.exempt or limit == 0 or grown == 0:
        return size
    usable = limit - limit // _HEADROOM_PARTS
    spare = usable - jobs * 3 * max_stages * DEFAULT_PIPE_PAGES
    if spare <= 0:
        return 0
    fits = _pow2_floor(DEFAULT_PIPE_PAGES + spare // grown) * page
    return min(size, fits) if fits > default_size else 0


def daemon_pipe_size(wanted: int, *, jobs: int, max_stages: int) -> int:
    """``inter_stage_pipe_size`` for this process, as the kernel sees it now."""
    return inter_stage_pipe_size(
        wanted, jobs=jobs, max_stages=max_stages, budget=PipeBudget.of_this_process()
    )


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
