"""The one owner of a job's streams: pipes, pumps, captures and the feeder.

Every descriptor of a job that is not a child's belongs here from the
moment the pipes are made, and ``close`` is the single way they end: after
it, no pump, capture or feeder holds a descriptor or a loop callback,
whatever path the job took (ran to the end, timed out, cancelled, failed
to start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cuprumd.backend import StreamBackend
from cuprumd.engine.plumbing import Plumbing
from cuprumd.fdio import (
    Capture,
    ChunkQueue,
    Deliver,
    Feeder,
    OutputBudget,
    Relay,
    StreamFeeder,
)
from cuprumd.outcome import TransferOutcome
from cuprumd.pump import Transfer, start_transfer
from cuprumd.spool import JobFiles

__all__ = ["OutputStreamer", "Streams"]

#: For a streaming client: the ``Deliver`` for a stream (``"stdout"`` or
#: ``"stderr"``) of a stage.
OutputStreamer = Callable[[str, int], Deliver]


class Streams:
    """Moves a job's bytes between its stages and collects its output."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        plumbing: Plumbing,
        backend: StreamBackend,
        *,
        max_output_bytes: int,
        buffer_size: int,
        job_id: str | None,
        streamer: OutputStreamer | None = None,
        spool: JobFiles | None = None,
    ) -> None:
        self._loop = loop
        self.plumbing = plumbing
        self._backend = backend
        self._budget = OutputBudget(max_output_bytes)
        self._buffer_size = buffer_size
        self._job_id = job_id
        self._streamer = streamer
        self._spool = spool
        self.stdout: Capture | Relay | None = None
        self.stderrs: list[Capture | Relay | None] = [None] * len(plumbing.err)
        self.feeder: Feeder | StreamFeeder | None = None
        self.transfers: list[Transfer] = []

    def start(self, stdin: bytes | ChunkQueue | None) -> None:
        """Hand every runner-side descriptor to its reader, writer or pump."""
        links = self.plumbing
        if isinstance(stdin, ChunkQueue):
            self.feeder = StreamFeeder(self._loop, links.take_stdin_writer(), stdin)
            self.feeder.start()
        elif stdin is not None:
            self.feeder = Feeder(self._loop, links.take_stdin_writer(), stdin)
            self.feeder.start()
        last = len(self.stderrs) - 1
        if "stderr" not in links.passed:
            for i in range(len(self.stderrs)):
                self.stderrs[i] = self._output(links.take_stderr_reader(i), "stderr", i)
        if "stdout" not in links.passed:
            self.stdout = self._output(links.take_stdout_reader(), "stdout", last)
        for i in range(len(self.stderrs) - 1):
            reader, writer = links.take_transfer(i)
            context = {"job_id": self._job_id, "from_stage": i, "to_stage": i + 1}
            self.transfers.append(
                start_transfer(
                    self._backend,
                    reader,
                    writer,
                    buffer_size=self._buffer_size,
                    log_context=context,
                )
            )

    def _output(self, fd: int, stream: str, stage: int) -> Capture | Relay:
        """A capture within the job's budget, or, for a streaming client, a
        relay to it (nothing kept, so no budget)."""
        reader: Capture | Relay
        if self._streamer is None:
            sink = None
            if self._spool is not None:
                spool = self._spool
                sink = spool.stdout if stream == "stdout" else spool.stderrs[stage]
            reader = Capture(self._loop, fd, self._budget, sink)
        else:
            reader = Relay(self._loop, fd, self._streamer(stream, stage))
        reader.start()
        return reader

    def _captures(self) -> list[Capture | Relay | Feeder | StreamFeeder]:
        found = [self.stdout, *self.stderrs, self.feeder]
        return [c for c in found if c is not None]

    def stop_feeding(self) -> None:
        """The job is being terminated: its input no longer matters."""
        if self.feeder is not None:
            self.feeder.abort()

    async def drain(self, grace: float) -> None:
        """Let every stream reach EOF, for at most ``grace`` seconds.

        Once the stages are gone and their leftovers swept, only a process
        that escaped every sweep could hold a pipe open; the job must not
        hang on it.
        """
        pending: list[asyncio.Future[Any]] = [t.done for t in self.transfers]
        pending += [c.done for c in self._captures()]
        if not all(done.done() for done in pending):
            await asyncio.wait(pending, timeout=grace)

    def close(self) -> None:
        """The one close contract (idempotent); see the module docstring."""
        for capture in self._captures():
            capture.abort()
        for transfer in self.transfers:
            transfer.abort()
        self.plumbing.close_all()

    def outcomes(
        self, on_error: Callable[[int, BaseException], None]
    ) -> list[TransferOutcome]:
        """Each transfer's outcome; ``on_error`` hears of a pump that failed."""
        for i, transfer in enumerate(self.transfers):
            if transfer.error is not None:
                on_error(i, transfer.error)
        return [transfer.outcome() for transfer in self.transfers]

    def cut_stages(self) -> list[bool]:
        """Per stage, whether the daemon closed one of its output streams
        (the job's output budget was spent): a SIGPIPE it then dies of was
        earned, as behind ``| head -c N``."""
        cut = [isinstance(c, Capture) and c.cut for c in self.stderrs]
        if isinstance(self.stdout, Capture) and self.stdout.cut:
            cut[-1] = True
        return cut

    def spooled_bytes(self) -> int | None:
        """What the captures wrote to the job's spool files, if it has any."""
        if self._spool is None:
            return None
        found = [self.stdout, *self.stderrs]
        return sum(c.kept for c in found if isinstance(c, Capture))

    def contents(self) -> tuple[tuple[bytes, bool], list[tuple[bytes, bool]]]:
        """Captured stdout and each stderr, with their truncation flags."""
        stdout = (b"", False) if self.stdout is None else self.stdout.contents()
        stderrs = [(b"", False) if c is None else c.contents() for c in self.stderrs]
        return stdout, stderrs
