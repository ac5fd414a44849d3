"""The ``programs`` allowlist: which executables a stage may name.

Names are resolved on ``PATH`` once, at start-up, so a job can never be
steered to another binary by a later change of ``PATH`` or of the job's own
environment, and every exec uses an absolute path. The rules live in
``build_allowlist`` and ``Allowlist.resolve``; the filesystem is reached only
through the two probes passed in, so the rules are tested without a disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cuprumd.errors import ProgramNotAllowed

__all__ = ["ANY_PROGRAM", "Allowlist", "build_allowlist", "load_allowlist"]

ANY_PROGRAM = "*"

#: ``lookup(name)`` returns the absolute path of ``name`` on PATH, or None.
Lookup = Callable[[str], str | None]
#: ``is_executable(path)`` says whether ``path`` is a file we may exec.
IsExecutable = Callable[[str], bool]


@dataclass(frozen=True)
class Allowlist:
    """The allowlist as resolved at start-up.

    ``by_name`` maps each allowed bare name to the absolute path to exec;
    ``paths`` holds the absolute paths listed as such; ``missing`` keeps the
    configured entries that could not be used, so the daemon can warn about
    them and a client can be told why its program is refused.
    """

    by_name: Mapping[str, str]
    paths: frozenset[str]
    any_program: bool = False
    missing: tuple[str, ...] = ()
    lookup: Lookup = field(default=lambda _name: None, repr=False, compare=False)

    def resolve(self, argv0: str) -> str:
        """Return the absolute path to exec for a stage's ``argv[0]``.

        A bare name is matched by name; a path only when that exact absolute
        path was allowlisted (or ``"*"`` allows everything). Relative paths
        are refused: they would depend on the job's working directory.

        Raises
        ------
        ProgramNotAllowed
            Naming the program and why it is refused.
        """
        if "/" in argv0:
            return self._resolve_path(argv0)
        found = self.by_name.get(argv0)
        if found is not None:
            return found
        if self.any_program:
            located = self.lookup(argv0)
            if located is not None:
                return located
            msg = f"program {argv0!r} was not found on the daemon's PATH"
            raise ProgramNotAllowed(msg)
        if argv0 in self.missing:
            msg = (
                f"program {argv0!r} is allowlisted but was not found on PATH "
                "when the daemon started"
            )
            raise ProgramNotAllowed(msg)
        msg = f"program {argv0!r} is not in the daemon's programs allowlist"
        raise ProgramNotAllowed(msg)

    def _resolve_path(self, argv0: str) -> str:
        if not argv0.startswith("/"):
            msg = (
                f"program {argv0!r}: name a program on PATH or give an "
                "absolute path; relative paths are not accepted"
            )
            raise ProgramNotAllowed(msg)
        if self.any_program or argv0 in self.paths:
            return argv0
        msg = f"program path {argv0!r} is not in the daemon's programs allowlist"
        raise ProgramNotAllowed(msg)

    def resolve_all(self, argv0s: Iterable[str]) -> tuple[str, ...]:
        """Resolve every stage, so nothing is spawned unless all are allowed."""
        return tuple(self.resolve(argv0) for argv0 in argv0s)


def build_allowlist(
    entries: Iterable[str], lookup: Lookup, is_executable: IsExecutable
) -> Allowlist:
    """Resolve configured entries with the given probes (pure otherwise).

    ``"*"`` opens the list; other entries are still resolved so that the
    usual tools keep their start-up paths. An entry that is neither a bare
    name nor an absolute path is kept in ``missing`` rather than guessed at.
    """
    by_name: dict[str, str] = {}
    paths: set[str] = set()
    missing: list[str] = []
    any_program = False
    for entry in entries:
        if entry == ANY_PROGRAM:
            any_program = True
        elif entry.startswith("/"):
            if is_executable(entry):
                paths.add(entry)
            else:
                missing.append(entry)
        elif "/" in entry or not entry:
            missing.append(entry)
        else:
            located = lookup(entry)
            if located is None:
                missing.append(entry)
            else:
                by_name[entry] = located
    return Allowlist(
        by_name=MappingProxyType(by_name),
        paths=frozenset(paths),
        any_program=any_program,
        missing=tuple(dict.fromkeys(missing)),
        lookup=lookup,
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def load_allowlist(entries: Iterable[str], search_path: str | None = None) -> Allowlist:
    """Resolve the allowlist against the real filesystem and ``PATH``.

    ``search_path`` defaults to the daemon's ``PATH`` (or the system default
    when it has none) as it is at start-up. Relative ``PATH`` entries are
    skipped: they would make the answer depend on the daemon's directory.
    """
    raw = search_path or os.environ.get("PATH") or os.defpath
    path = os.pathsep.join(d for d in raw.split(os.pathsep) if os.path.isabs(d))

    def lookup(name: str) -> str | None:
        found = shutil.which(name, path=path)
        return None if found is None else os.path.normpath(found)

    return build_allowlist(entries, lookup, _is_executable)
