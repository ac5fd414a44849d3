"""Descriptors a client passed for a job's stdin, stdout or stderr.

From the request that carried them to the pipes of the job's stages they
have one owner at a time: the job holds them while it waits, the runner's
plumbing once it starts; whoever holds them last closes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

__all__ = ["STREAM_NAMES", "PassedStreams", "StreamName"]

StreamName = Literal["stdin", "stdout", "stderr"]
STREAM_NAMES: tuple[StreamName, ...] = ("stdin", "stdout", "stderr")


class PassedStreams:
    """Stream name to descriptor; ``take`` moves them, ``close`` ends them."""

    def __init__(self, fds: Mapping[StreamName, int]) -> None:
        self._fds = dict(fds)
        self.names: tuple[StreamName, ...] = tuple(
            name for name in STREAM_NAMES if name in self._fds
        )

    def take(self) -> dict[StreamName, int]:
        """The descriptors, now the caller's to close."""
        fds, self._fds = self._fds, {}
        return fds

    def close(self) -> None:
        """Close what was not taken (idempotent)."""
        for fd in self.take().values():
            os.close(fd)
