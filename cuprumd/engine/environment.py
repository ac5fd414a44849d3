"""What a stage's environment may hold.

A stage starts from a minimal base, never from the daemon's own
environment (``NOTIFY_SOCKET``, ``LISTEN_*``, ``CUPRUM_*``, credentials), and
a job may overlay only names that are not on the deny list: loader and
interpreter hooks turn an allowlisted program into the client's own code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

__all__ = ["BASE_ENV", "child_env", "denied_env_names"]

#: The whole environment a stage starts from; the job's ``env`` overlays it.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
}


def child_env(overlay: Mapping[str, str], *, tmpdir: str | None) -> dict[str, str]:
    """Build a stage's environment: the base, the job's overlay, and the
    job's scratch directory as ``TMPDIR`` (which no job may set itself)."""
    env = {**BASE_ENV, **overlay}
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    return env


def denied_env_names(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names a job may not set, in the order given.

    Patterns are shell-style (``LD_*``) and case-sensitive, as the loader
    and the shells read them.
    """
    compiled = tuple(patterns)
    return [
        name
        for name in names
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in compiled)
    ]
