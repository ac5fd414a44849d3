"""The pipes of one job: who holds which descriptor, and when.

The runner makes every pipe itself (``O_CLOEXEC``, so no child inherits
another job's descriptors) and hands each child exactly its stdin, stdout
and stderr. ``Plumbing`` tracks which descriptors the runner still owns, so
that whatever path a job takes, ``close_all`` leaves nothing open.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Mapping

from cuprumd.engine.passed import StreamName
from cuprumd.engine.pipesize import grow_pipe
from cuprumd.fdio import close_quietly

__all__ = ["Plumbing", "SpawnError", "errno_name", "open_plumbing"]


class SpawnError(Exception):
    """A stage could not be started; the message names it and the errno."""


def errno_name(number: int | None) -> str:
    """``EACCES`` for 13: messages name the errno as the man pages do."""
    return errno.errorcode.get(number or 0, str(number))


class Plumbing:
    """Every descriptor of one job, and which of them the runner still owns.

    Stage ``i`` writes stdout into ``out[i]``; for all but the last stage a
    pump carries it into ``inp[i + 1]``, the next stage's stdin. The last
    stage's stdout and every stderr are captured by the runner, unless the
    client passed its own: then the stage gets that descriptor (stderr: a
    duplicate per stage) and there is nothing to capture.
    """

    def __init__(
        self,
        stages: int,
        *,
        with_stdin: bool,
        pipe_size: int,
        passed: Mapping[StreamName, int] | None = None,
    ) -> None:
        given = dict(passed or {})
        self._owned: set[int] = set(given.values())  # ours from the start
        self.passed = frozenset(given)
        try:
            if "stdin" in given:
                self.stdin = (given["stdin"], -1)
            elif with_stdin:
                self.stdin = self._pipe()
            else:
                null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                self._owned.add(null)
                self.stdin = (null, -1)
            self.out = [self._pipe(pipe_size) for _ in range(stages - 1)]
            self.out.append(
                (-1, given["stdout"]) if "stdout" in given else self._pipe()
            )
            self.inp = [self.stdin] + [self._pipe(pipe_size) for _ in range(stages - 1)]
            if "stderr" in given:
                self.err = [(-1, self._dup(given["stderr"])) for _ in range(stages)]
                self._take(given["stderr"])
                os.close(given["stderr"])
            else:
                self.err = [self._pipe() for _ in range(stages)]
        except OSError as exc:
            self.close_all()
            msg = f"cannot create pipes: {exc.strerror} ({errno_name(exc.errno)})"
            raise SpawnError(msg) from exc

    def _pipe(self, size: int = 0) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self._owned.update((r, w))
        if size:
            grow_pipe(r, size)
        return r, w

    def _dup(self, fd: int) -> int:
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        self._owned.add(copy)
        return copy

    def _take(self, fd: int) -> int:
        self._owned.remove(fd)
        return fd

    def child_fds(self, i: int) -> tuple[int, int, int]:
        """The stdin, stdout and stderr of stage ``i``."""
        return self.inp[i][0], self.out[i][1], self.err[i][1]

    def release_child_fds(self, i: int) -> None:
        """Close the runner's copies once stage ``i`` holds its own.

        Until they are closed, the runner itself would keep each pipe's other
        end alive and no reader would ever see EOF.
        """
        for fd in self.child_fds(i):
            if fd in self._owned:
                self._take(fd)
                os.close(fd)

    def take_stdin_writer(self) -> int:
        """Hand over the write end of the first stage's stdin."""
        return self._take(self.stdin[1])

    def take_stdout_reader(self) -> int:
        """Hand over the read end of the last stage's stdout."""
        return self._take(self.out[-1][0])

    def take_stderr_reader(self, i: int) -> int:
        """Hand over the read end of stage ``i``'s stderr."""
        return self._take(self.err[i][0])

    def take_transfer(self, i: int) -> tuple[int, int]:
        """Hand over the pump ends between stage ``i`` and ``i + 1``."""
        return self._take(self.out[i][0]), self._take(self.inp[i + 1][1])

    def close_all(self) -> None:
        """Close every descriptor not handed over (idempotent)."""
        while self._owned:
            close_quietly(self._owned.pop())


def open_plumbing(
    stages: int,
    *,
    with_stdin: bool,
    pipe_size: int,
    passed: Mapping[StreamName, int] | None = None,
) -> Plumbing:
    """Create all pipes of a job at once, or none (``SpawnError``); passed
    descriptors are the plumbing's to close from here on, either way."""
    return Plumbing(stages, with_stdin=with_stdin, pipe_size=pipe_size, passed=passed)
