"""A private scratch directory per job, its ``TMPDIR``.

Some text tools need a file of their own: ``sort`` spills large inputs,
``tac`` copies a pipe before reversing it. Under the sandbox a stage may
write nothing by name, so each job gets one directory that only its own
ruleset opens, emptied or removed when the job ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["JobScratch", "ScratchSpace"]


class JobScratch:
    """One job's directory, owned by the job until ``release``."""

    def __init__(self, space: ScratchSpace, path: Path) -> None:
        self.path = path
        self._space = space
        self._held = True

    def release(self, *, reusable: bool) -> None:
        """Hand the directory back (idempotent).

        ``reusable`` means every process of the job is certainly gone (its
        cgroup emptied): an empty directory then serves the next job as it
        is. Otherwise it is removed: Landlock rules name inodes, so a
        leftover process of this job cannot follow the path to a new one.
        """
        if not self._held:
            return
        self._held = False
        if reusable:
            with os.scandir(self.path) as entries:
                reusable = next(entries, None) is None
        if reusable:
            self._space.recycle(self.path)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


class ScratchSpace:
    """The daemon's parent of every job's scratch directory.

    Under ``state_dir`` when there is one (disk, not memory: a big ``sort``
    spills there), else a private directory made at start-up in the
    system's temporary directory. Either way mode 0700 and owned by the
    daemon; leftovers of an earlier instance are removed at start.
    """

    def __init__(self, state_dir: Path | None) -> None:
        if state_dir is not None:
            self.base = state_dir / "scratch"
            shutil.rmtree(self.base, ignore_errors=True)
            self.base.mkdir(mode=0o700, parents=True)
        else:
            self.base = Path(tempfile.mkdtemp(prefix="cuprumd-scratch-"))
        self._free: list[Path] = []
        self._made = 0

    def acquire(self) -> JobScratch:
        """An empty directory (mode 0700) for the next job."""
        if self._free:
            return JobScratch(self, self._free.pop())
        self._made += 1
        path = self.base / f"job-{self._made}"
        os.mkdir(path, 0o700)
        return JobScratch(self, path)

    def recycle(self, path: Path) -> None:
        """Take back an empty directory whose job is certainly over."""
        self._free.append(path)

    def close(self) -> None:
        """Remove every scratch directory (at shutdown)."""
        self._free.clear()
        shutil.rmtree(self.base, ignore_errors=True)
