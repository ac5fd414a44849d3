"""The cgroup v2 file system: where it is, and the few operations on it.

Where the hierarchy is mounted, and where a process's cgroup lies in it,
are parsed from ``/proc`` texts by pure functions, so they can be tested on
made-up ones. The rest are the cgroupfs operations job cgroups are made of
(read, write, kill, wait for a cgroup to empty, remove a tree deepest
first), knowing nothing of jobs or of the daemon's layout.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

__all__ = ["find_cgroup2_mount", "own_cgroup_path"]

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
#: Errors that mean the cgroup is already gone (ENODEV: removed while open).
_GONE = (errno.ENOENT, errno.ENODEV)


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _cgroup2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """``(root, mount point)`` of each cgroup2 mount still visible.

    ``root`` is the part of the hierarchy that is mounted there: ``/`` for
    the whole of it, a cgroup path for a bind mount of a subtree. A later
    mount on the same point hides an earlier one.
    """
    found: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        point = _unescape(fields[4])
        found.pop(point, None)
        if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
            found[point] = _unescape(fields[3])
    return [(root, point) for point, root in found.items()]


def find_cgroup2_mount(mountinfo: str) -> str | None:
    """Where the cgroup v2 hierarchy is mounted, from ``/proc/self/mountinfo``.

    Its place varies (``/sys/fs/cgroup`` on a pure v2 system,
    ``/sys/fs/cgroup/unified`` on a hybrid one), so it is looked up, never
    assumed. A mount of the whole hierarchy is preferred over a bind mount
    of part of it.
    """
    mounts = _cgroup2_mounts(mountinfo)
    for root, point in mounts:
        if root == "/":
            return point
    return mounts[0][1] if mounts else None


def own_cgroup_path(proc_cgroup: str) -> str | None:
    """The v2 cgroup path in a ``/proc/<pid>/cgroup`` text (its ``0::`` line).

    None on a v1-only system, where the line is absent.
    """
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path.removesuffix(" (deleted)")
    return None


def _relative(path: str, root: str) -> str | None:
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None


def _cgroup_dir(mounts: Iterable[tuple[str, str]], cgroup_path: str) -> Path | None:
    for root, point in mounts:
        rel = _relative(cgroup_path, root)
        if rel is not None:
            return Path(point, rel)
    return None


def _cgroup_path_of(mounts: Iterable[tuple[str, str]], directory: Path) -> str | None:
    for root, point in mounts:
        if directory.is_relative_to(point):
            return str(PurePosixPath(root) / directory.relative_to(point))
    return None


def _within(proc_cgroup: str, subtree_path: str) -> bool:
    """Whether the process whose ``/proc/<pid>/cgroup`` this is lies in
    ``subtree_path`` (the subtree itself or below it, not a sibling that
    merely shares its name as a prefix)."""
    path = own_cgroup_path(proc_cgroup)
    if path is None:
        return False
    return path == subtree_path or path.startswith(subtree_path.rstrip("/") + "/")


def _populated(events: str) -> bool:
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return False


def _poll_delays(timeout: float) -> Iterator[float]:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while time.monotonic() < deadline:
        yield delay
        delay = min(delay * 2, 0.02)


def _read(path: Path) -> str:
    """Text of a kernel file; cgroup names are bytes, and any that are not
    UTF-8 must still map back to the same directory."""
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def _write(path: Path | str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _words(path: Path) -> frozenset[str]:
    try:
        return frozenset(_read(path).split())
    except FileNotFoundError:
        return frozenset()


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(word) for word in _read(cgroup / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _is_populated(cgroup: Path) -> bool:
    try:
        return _populated(_read(cgroup / "cgroup.events"))
    except FileNotFoundError:
        return False


def _kill(kill_file: Path | str) -> None:
    try:
        _write(kill_file, "1")
    except OSError as exc:
        if exc.errno not in _GONE:
            raise


def _wait_empty(cgroup: Path, timeout: float) -> bool:
    for delay in _poll_delays(timeout):
        if not _is_populated(cgroup):
            return True
        time.sleep(delay)
    return not _is_populated(cgroup)


def _remove_tree(cgroup: Path) -> bool:
    """rmdir a cgroup and any it holds, deepest first: cgroupfs has no
    recursive removal, and a job may have made cgroups of its own."""
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return not cgroup.exists()
