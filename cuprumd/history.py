"""What the daemon keeps of every job in ``state_dir``: the journal (who
asked for what, when, and how it ended) and the spooled output.

The registry tells this module each step of a job's life; the server asks
it for results and history that outlive the daemon. Writes are batched:
one transaction per event-loop turn, and a ``submit`` is acknowledged only
once its job is committed, so a crash never forgets a job a client was
told about.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cuprumd.journal import Journal, JournalRecord, OpenReport
from cuprumd.logging import get_logger
from cuprumd.models import JobResult, JobSpec, JobState
from cuprumd.outcome import Facts, build_result, with_output
from cuprumd.spool import JobFiles, Spool

__all__ = ["History", "open_history"]

_log = get_logger("cuprumd.history")
JOURNAL_NAME = "journal.sqlite3"
#: How often finished results are checked for expiry by age.
SWEEP_SECONDS = 1.0
#: How long a job's start may wait to be committed with others.
FLUSH_SECONDS = 0.05
#: Expired jobs remembered as such ("expired", not "unknown"); older
#: tombstones are deleted, so the journal does not grow without end.
TOMBSTONES_KEPT = 100_000
LOST_REASON = (
    "the daemon stopped while the job was queued or running; its processes "
    "were killed with it"
)


@dataclass
class History:
    """The journal and the spool, with the daemon's retention settings."""

    journal: Journal
    spool: Spool
    journal_env: bool
    retention_seconds: float
    max_bytes: int
    #: Spooled output of unexpired results, kept up to date between sweeps.
    held_bytes: int = 0
    _commit: asyncio.Future[None] | None = field(default=None, repr=False)
    _next_sweep: float = field(default=0.0, repr=False)
    _flush: asyncio.TimerHandle | None = field(default=None, repr=False)

    # -- a job's life -----------------------------------------------------

    def accepted(
        self, job_id: str, spec: JobSpec, uid: int, gid: int, *, detached: bool
    ) -> None:
        # Input is not history (and may be large); env values may be secrets.
        if spec.env and not self.journal_env:
            spec = spec.model_copy(update={"env": dict.fromkeys(spec.env, "")})
        stored = spec.model_dump_json(exclude={"stdin"}, exclude_none=True)
        self.journal.accepted(
            job_id,
            uid=uid,
            gid=gid,
            detached=detached,
            spec=stored,
            argv0s=spec.argv0s,
            at=time.time(),
        )
        self._commit_soon()

    def started(self, job_id: str, stages: int) -> JobFiles:
        """Note the start; the job's fresh spool files."""
        self.journal.started(job_id, at=time.time())
        self._commit_later()
        return self.spool.create(job_id, stages)

    def finished(self, job_id: str, result: JobResult) -> list[str]:
        """Note the end; the ids of results this expired (oldest first).

        Expiry scans the journal, so it runs at most once a second, or at
        once when the spool grew past ``max_state_bytes``.
        """
        meta = result.model_dump_json()
        now = time.time()
        self.journal.finished(
            job_id,
            state=str(result.state),
            result=meta,
            output_bytes=result.output_bytes,
            at=now,
        )
        self.held_bytes += result.output_bytes
        self._commit_soon()  # an end a client may have seen must outlast a crash
        if self.held_bytes > self.max_bytes or now >= self._next_sweep:
            try:
                return self.expire()
            except (OSError, sqlite3.Error):  # a job's end must not fail on it
                _log.exception("journal.expire_failed")
        return []

    def expire(self) -> list[str]:
        """Drop results past ``result_retention_seconds``, then the oldest
        until the spool is within ``max_state_bytes``."""
        now = time.time()
        self._next_sweep = now + SWEEP_SECONDS
        gone = self.journal.expire(
            finished_before=now - self.retention_seconds,
            max_output_bytes=self.max_bytes,
        )
        for job_id in gone:
            self.spool.remove(job_id)
        self.held_bytes = self.journal.output_bytes()
        self.journal.forget(keep=TOMBSTONES_KEPT)
        return gone

    # -- durability -----------------------------------------------------------

    def _commit_soon(self) -> None:
        """Commit at the end of this loop turn, once for all its jobs."""
        if self._commit is None:
            loop = asyncio.get_running_loop()
            self._commit = loop.create_future()
            loop.call_soon(self._commit_now)

    def _commit_later(self) -> None:
        """A start needs no prompt commit (nobody sees it, and a crash
        before it leaves the job ``lost`` either way): it rides along with
        the next commit, or goes within ``FLUSH_SECONDS``."""
        if self._flush is None and self._commit is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_SECONDS, self._commit_now)

    def _commit_now(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        waiter, self._commit = self._commit, None
        try:
            self.journal.commit()
        except Exception as exc:  # the daemon serves on; the log says why
            _log.exception("journal.commit_failed")
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def durable(self) -> None:
        """Return once everything noted so far is committed."""
        if self._commit is not None:
            await asyncio.shield(self._commit)

    # -- reading back -----------------------------------------------------------

    def record(self, job_id: str) -> JournalRecord | None:
        if time.time() >= self._next_sweep:  # an idle daemon expires too
            self.expire()
        return self.journal.get(job_id)

    def full_result(self, job_id: str, meta: JobResult) -> JobResult:
        """A finished job's result with its output read back from the spool."""
        if meta.output_bytes == 0:  # nothing was spooled: no file to open
            return meta
        stdout, stderrs = self.spool.read(job_id, len(meta.stages))
        return with_output(meta, stdout, stderrs)

    def result_of(self, record: JournalRecord) -> JobResult | None:
        """The stored result of a finished record, output included."""
        if record.result is None:
            return None
        meta = JobResult.model_validate_json(record.result)
        meta._output_bytes = record.output_bytes  # not part of the stored JSON
        return self.full_result(record.job_id, meta)

    def close(self) -> None:
        self._commit_now()
        self.journal.close()


def spec_of(record: JournalRecord) -> JobSpec:
    """The job as it was stored (input and, unless kept, env values out)."""
    doc: dict[str, Any] = json.loads(record.spec)
    return JobSpec.model_validate(doc)


def lost_result(record: JournalRecord) -> JobResult:
    """The result a job ``lost`` in a crash reports: it has no other."""
    spec = spec_of(record)
    count = len(spec.stages)
    result = build_result(
        Facts(
            job_id=record.job_id,
            backend="unknown",
            argvs=[stage.argv for stage in spec.stages],
            pids=[None] * count,
            returncodes=[None] * count,
            stderrs=[(b"", False)] * count,
            stdout=(b"", False),
            transfers=[],
            encoding=spec.output_encoding,
            started_at=_iso(record.started_at or record.accepted_at),
            duration_ms=0.0,
            error=None,
            end_state=JobState.LOST,
            fail_fast_stage=None,
        )
    )
    return result.model_copy(update={"error": record.reason})


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))


def open_history(
    state_dir: Path,
    *,
    journal_env: bool,
    retention_seconds: float,
    max_bytes: int,
) -> tuple[History, OpenReport]:
    """Open (or start) the journal and the spool; jobs the previous daemon
    left queued or running become ``lost``; spool files no journal record
    names are removed."""
    journal, report = Journal.open(
        state_dir / JOURNAL_NAME, lost_reason=LOST_REASON, now=time.time()
    )
    spool = Spool(state_dir / "spool")
    history = History(journal, spool, journal_env, retention_seconds, max_bytes)
    history.expire()  # what aged out while the daemon was down
    removed = spool.keep_only(journal.unexpired_ids())
    if report.renamed_aside is not None:
        _log.error(
            "journal.unusable",
            moved_to=str(report.renamed_aside),
            problem=report.problem,
        )
    _log.info(
        "journal.opened",
        path=str(state_dir / JOURNAL_NAME),
        jobs=report.jobs,
        lost=len(report.lost),
        spool_removed=removed,
        pid=os.getpid(),
    )
    return history, report
