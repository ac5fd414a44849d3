"""Jobs' captured output on disk, in ``state_dir/spool``.

Every job gets a directory with ``stdout`` and one ``stderr.<stage>`` file
(mode 0600, the daemon's): its captures write there as the output comes,
within the job's ``max_output_bytes``, so the daemon's memory holds no
output once a job has ended, results survive a restart, and ``follow`` can
read a running job's output as it grows.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobFiles", "Spool", "SpoolFile"]

_NAME = re.compile(r"[0-9a-f]{16}")
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW


class SpoolFile:
    """One stream's spool file, made on the first write: most jobs write
    nothing to most of their streams, and creating files is the costly part
    of keeping output on some file systems."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory = directory
        self._name = name
        self._fd = -1

    def write(self, data: memoryview) -> None:
        if self._fd < 0:
            self._directory.mkdir(mode=0o700, exist_ok=True)
            self._fd = os.open(self._directory / self._name, _FLAGS, 0o600)
        while data:  # a regular file: short only when the disk is full
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


@dataclass
class JobFiles:
    """The spool files of a running job; ``close`` once."""

    stdout: SpoolFile
    stderrs: list[SpoolFile]

    def close(self) -> None:
        for file in (self.stdout, *self.stderrs):
            file.close()


class Spool:
    """The spool directory; job ids name their directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, exist_ok=True)
        root.chmod(0o700)

    def _dir(self, job_id: str) -> Path:
        if not _NAME.fullmatch(job_id):
            msg = f"not a job id: {job_id!r}"
            raise ValueError(msg)
        return self.root / job_id

    def create(self, job_id: str, stages: int) -> JobFiles:
        """The files of a job about to start, made when first written (job
        ids are random; leftovers no journal names went at start-up)."""
        path = self._dir(job_id)
        return JobFiles(
            SpoolFile(path, "stdout"),
            [SpoolFile(path, f"stderr.{i}") for i in range(stages)],
        )

    def read(self, job_id: str, stages: int) -> tuple[bytes, list[bytes]]:
        """What a job wrote (empty for a job that never started)."""
        path = self._dir(job_id)
        return _read(path / "stdout"), [
            _read(path / f"stderr.{i}") for i in range(stages)
        ]

    def stream_path(self, job_id: str, stream: str, stage: int) -> Path:
        """The file ``follow`` reads: ``stdout`` or a stage's ``stderr``."""
        name = "stdout" if stream == "stdout" else f"stderr.{stage}"
        return self._dir(job_id) / name

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    def keep_only(self, job_ids: set[str]) -> int:
        """Remove every job directory not named (left by a journal that was
        set aside, or by expiry interrupted by a crash); how many went."""
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name not in job_ids:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
