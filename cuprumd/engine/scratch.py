"""A private scratch directory per job, its ``TMPDIR``.

Some text tools need a file of their own: ``sort`` spills large inputs,
``tac`` copies a pipe before reversing it. Under the sandbox a stage may
write nothing by name, so each job gets one directory that only its own
ruleset opens, removed with everything in it when the job ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["JobScratch", "ScratchSpace"]


class JobScratch:
    """One job's directory; ``close`` removes it (idempotent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open = True

    def close(self) -> None:
        """Remove the directory and whatever the job left in it."""
        if self._open:
            self._open = False
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

    def create(self, job_id: str) -> JobScratch:
        """A new, empty directory for ``job_id`` (mode 0700)."""
        path = self.base / job_id
        os.mkdir(path, 0o700)
        return JobScratch(path)

    def close(self) -> None:
        """Remove every scratch directory (at shutdown)."""
        shutil.rmtree(self.base, ignore_errors=True)
