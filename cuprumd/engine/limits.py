"""Resource limits: the daemon's own descriptor ceiling and its stages' rlimits.

The daemon lifts its soft descriptor limit (each running job holds several
pipes) but its stages must not inherit that: they start with the soft limit
the daemon itself was given, as systemd does for its services, plus any
``job_rlimits`` the operator set.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping

from cuprumd.engine.launch import RLIMIT_RESOURCES

__all__ = ["raise_fd_limit", "stage_rlimits"]


def raise_fd_limit(ceiling: int = 1 << 16) -> tuple[int, int]:
    """Lift the soft descriptor limit towards the hard one.

    Returns ``(before, after)``: ``before`` is what stages get back.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(ceiling, hard) if hard != resource.RLIM_INFINITY else ceiling
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


def stage_rlimits(
    nofile_soft: int, job_rlimits: Mapping[str, int]
) -> tuple[tuple[int, int, int], ...]:
    """``(resource, soft, hard)`` for every stage.

    The descriptor limit keeps its hard value (a stage may raise its own
    soft limit as far as the daemon could); a ``job_rlimits`` entry sets
    both, so a stage cannot lift it again.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = [(resource.RLIMIT_NOFILE, nofile_soft, hard)]
    for name, value in sorted(job_rlimits.items()):
        limits.append((RLIMIT_RESOURCES[name], value, value))
    return tuple(limits)
