"""Passing the memory and pids controllers down to the job cgroups.

Limits reach a job's cgroup only if their controllers are enabled all the
way down, and that may take the daemon moving out of its own cgroup (the
kernel's no-internal-process rule). That step and the decisions around it
are kept apart from ``cgroup``'s job cgroups: it is the one place where the
daemon changes where it itself runs.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

from cuprumd.engine.cgroupfs import _procs, _words, _write
from cuprumd.logging import get_logger

__all__ = ["enable_controllers"]

#: Part of the cgroup set-up, and logged as such.
_log = get_logger("cuprumd.engine.cgroup")


def _plan_controllers(
    controllers: Iterable[str],
    own_available: frozenset[str],
    own_enabled: frozenset[str],
) -> tuple[str, ...]:
    """Which wanted controllers to add to our own ``cgroup.subtree_control``.

    A controller reaches a job's cgroup only through every ancestor's
    ``cgroup.subtree_control``. Ours may add what our parent hands us
    (``cgroup.controllers``); what the parent withholds no write of ours
    can get, so it is not tried.
    """
    return tuple(
        name
        for name in dict.fromkeys(controllers)
        if name in own_available and name not in own_enabled
    )


def _may_leave_own(own_procs: Iterable[int], own_pid: int) -> bool:
    """Whether the daemon may move itself out of its own cgroup.

    A cgroup with processes in it cannot pass controllers down (the kernel's
    no-internal-process rule), so to enable limits the daemon steps into a
    leaf of its own. It does so only when it is alone there (systemd's
    delegated unit): moving away from processes someone else put beside it
    would take it out from under whatever manages them. ``cgroup.procs``
    lists thread groups, so the daemon's threads count once.
    """
    return set(own_procs) == {own_pid}


def _enable(cgroup: Path, controller: str) -> int:
    """0 once ``controller`` is passed to the children of ``cgroup``, else
    the errno (EBUSY: processes in ``cgroup`` itself stand in the way)."""
    try:
        _write(cgroup / "cgroup.subtree_control", f"+{controller}")
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def enable_controllers(
    own: Path,
    subtree: Path,
    controllers: list[str],
    *,
    own_pid: int,
    leaf: Path,
) -> frozenset[str]:
    """Pass the wanted controllers down to job cgroups; return those that
    made it. Anything short of that is a limit not applied, never an error.
    """
    if not controllers:
        return frozenset()
    to_enable = _plan_controllers(
        controllers,
        _words(own / "cgroup.controllers"),
        _words(own / "cgroup.subtree_control"),
    )
    blocked = [name for name in to_enable if _enable(own, name) == errno.EBUSY]
    if blocked and _may_leave_own(_procs(own), own_pid):
        try:
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(own_pid))
        except OSError as exc:
            _log.warning("cgroup.self_move_failed", leaf=str(leaf), error=str(exc))
        else:
            _log.info("cgroup.self_moved", leaf=str(leaf))
            for name in blocked:
                _enable(own, name)
    ready = _words(subtree / "cgroup.subtree_control")
    available = _words(subtree / "cgroup.controllers")
    return frozenset(
        name
        for name in controllers
        if name in ready or (name in available and _enable(subtree, name) == 0)
    )
