"""A private scratch directory per job, its ``TMPDIR``.

Some text tools need a file of their own: ``sort`` spills large inputs,
``tac`` copies a pipe before reversing it. Under the sandbox a stage may
write nothing by name, so each job gets one directory that only its own
ruleset opens.

What a job leaves there is the job's to shape: millions of files, a tree
thousands of levels deep, odd modes. So a used directory is first renamed
out of the way (one system call), then removed by ``rm -rf`` on a worker
thread: never on the event loop, never by recursion in the daemon, and a
failure costs disk space, not the daemon.
"""

from __future__ import annotations

import itertools
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from cuprumd.engine.sandbox import Ruleset
from cuprumd.logging import get_logger

__all__ = ["JobScratch", "ScratchSpace"]

_log = get_logger("cuprumd.scratch")
_RM = shutil.which("rm", path="/usr/bin:/bin") or "/bin/rm"


def _ctime(path: Path) -> int:
    try:
        return os.stat(path).st_ctime_ns
    except OSError:
        return -1


class JobScratch:
    """One job's directory, owned by the job until ``release``.

    ``ruleset`` is the Landlock ruleset that opens this directory to the
    job; it names the directory's inode, so it stays with the directory and
    serves every job that reuses it (building one costs more than the rest
    of starting a ``true``). The scratch space closes it with the directory.
    """

    def __init__(
        self,
        space: ScratchSpace,
        path: Path,
        ruleset: Ruleset | None = None,
        *,
        stamp: int | None = None,
    ) -> None:
        self.path = path
        self.ruleset = ruleset
        self._space = space
        self._held = True
        self._stamp = _ctime(path) if stamp is None else stamp
        self._generation = space.generation

    def release(self, *, reusable: bool) -> None:
        """Hand the directory back (idempotent).

        It serves the next job as it is only if ``reusable`` (every process
        of this job is certainly gone: its cgroup emptied) and the job left
        no trace: its status-change time moves with every entry made or
        removed and every change of mode, owner or extended attribute.
        Otherwise it goes: removed at once when untouched (empty), else
        renamed aside for the worker. Landlock rules name inodes, so a
        leftover process cannot follow the path into its successor.
        """
        if not self._held:
            return
        self._held = False
        untouched = _ctime(self.path) == self._stamp
        if reusable and untouched:
            ruleset = self.ruleset
            if ruleset is not None and self._generation != self._space.generation:
                ruleset.close()  # built from a sandbox that was replaced
                ruleset = None
            self._space.recycle(self.path, ruleset, self._stamp)
            return
        if self.ruleset is not None:
            self.ruleset.close()
        if untouched:  # still empty: a new inode will replace it
            try:
                self.path.rmdir()
            except OSError:
                self._space.discard(self.path)
        else:
            self._space.discard(self.path)


class ScratchSpace:
    """The daemon's parent of every job's scratch directory.

    Under ``state_dir`` when there is one (disk, not memory: a big ``sort``
    spills there), else a private directory made at start-up in the
    system's temporary directory. Either way owned by the daemon, mode 0700
    (0711 when jobs run as another user, who must pass through it); each
    job's directory is 0700 and belongs to the user jobs run as.
    """

    def __init__(
        self, state_dir: Path | None, *, owner: tuple[int, int] | None = None
    ) -> None:
        self._owner = owner
        self._free: list[tuple[Path, Ruleset | None, int]] = []
        #: Counts sandbox replacements: a ruleset from an older one is not
        #: kept with its directory.
        self.generation = 0
        self._names = itertools.count(1)
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._remover = threading.Thread(
            target=self._remove_forever, name="scratch-remover", daemon=True
        )
        self._remover.start()
        if state_dir is None:
            self.base = Path(tempfile.mkdtemp(prefix="cuprumd-scratch-"))
        else:
            self.base = state_dir / "scratch"
            if self.base.exists():  # an earlier instance's: out of the way first
                self.discard(self.base)
            self.base.mkdir(mode=0o700)
        if owner is not None:  # the job user passes through, without listing
            self.base.chmod(0o711)
            if state_dir is not None:
                state_dir.chmod(0o711)

    def acquire(self) -> JobScratch:
        """An empty directory (mode 0700, the job user's) for the next job.

        Names are random: jobs share one user, and chmod is not something
        the sandbox can refuse, so a directory must not be found by
        guessing. A pooled one that changed while idle is not handed out.
        """
        while self._free:
            path, ruleset, stamp = self._free.pop()
            if _ctime(path) == stamp:
                return JobScratch(self, path, ruleset, stamp=stamp)
            if ruleset is not None:
                ruleset.close()
            self.discard(path)
        path = self.base / f"job-{secrets.token_hex(12)}"
        os.mkdir(path, 0o700)
        if self._owner is not None:
            os.chown(path, *self._owner)
        return JobScratch(self, path)

    def forget_rulesets(self) -> None:
        """The sandbox changed: close every kept ruleset, now for idle
        directories and at release for those in use."""
        self.generation += 1
        for _path, ruleset, _stamp in self._free:
            if ruleset is not None:
                ruleset.close()
        self._free = [(path, None, stamp) for path, _ruleset, stamp in self._free]

    def recycle(self, path: Path, ruleset: Ruleset | None, stamp: int) -> None:
        """Take back an untouched directory whose job is certainly over;
        ``stamp`` is its status-change time, just seen unchanged."""
        self._free.append((path, ruleset, stamp))

    def discard(self, path: Path) -> None:
        """Rename ``path`` aside now; remove it on the worker thread."""
        trash = path.with_name(f".trash-{next(self._names)}-{path.name}")
        try:
            path.rename(trash)
        except OSError as exc:
            _log.warning("scratch.unremovable", path=str(path), error=str(exc))
            return
        self._doomed.put(trash)

    def _remove_forever(self) -> None:
        while (path := self._doomed.get()) is not None:
            result = subprocess.run(
                [_RM, "-rf", "--one-file-system", "--", str(path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                _log.warning(
                    "scratch.unremovable",
                    path=str(path),
                    error=result.stderr.decode(errors="replace").strip(),
                )

    def close(self, timeout: float = 30.0) -> None:
        """Remove every scratch directory (at shutdown), waiting at most
        ``timeout`` seconds for the worker."""
        for _path, ruleset, _stamp in self._free:
            if ruleset is not None:
                ruleset.close()
        self._free.clear()
        self.discard(self.base)
        self._doomed.put(None)
        self._remover.join(timeout)
