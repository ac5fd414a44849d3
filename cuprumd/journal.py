"""The crash-safe job journal: every admitted job, its progress and its end.

A pure storage layer on stdlib ``sqlite3`` so the daemon can answer
"what happened to my job" after a restart, and so a crash never leaves a
job silently pending: on open, whatever was queued or running is marked
``lost``. Writes are buffered and land in one transaction per ``commit()``,
because the daemon admits jobs in bursts and a transaction per job would
make fsync the throughput limit; the transaction is also what guarantees
a crash never leaves half a batch behind.

WAL with ``synchronous = NORMAL`` keeps commits cheap: a commit survives
a daemon crash, and at worst the last few commits are lost on power
failure, never corrupted.

A bad journal (not a database, corrupt, from a newer daemon) is renamed
aside and replaced by a fresh one rather than raised, so a damaged file
can never put the daemon into a crash loop. Only when even a fresh
journal cannot be created does ``Journal.open`` raise.

Not thread-safe: the caller serialises calls (one thread at a time; the
connection is not bound to the thread that opened it, so an executor
thread may be used).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "END_STATES",
    "SCHEMA_VERSION",
    "Journal",
    "JournalRecord",
    "OpenReport",
]

SCHEMA_VERSION = 2
END_STATES = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "error", "lost"}
)

# Migration i brings the schema from user_version i to i + 1. Statements,
# not scripts: ``executescript`` would commit behind our back.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            seq          INTEGER PRIMARY KEY,
            job_id       TEXT    NOT NULL UNIQUE,
            uid          INTEGER NOT NULL,
            gid          INTEGER NOT NULL,
            detached     INTEGER NOT NULL,
            spec         TEXT    NOT NULL,
            argv0s       TEXT    NOT NULL,
            state        TEXT    NOT NULL,
            reason       TEXT,
            accepted_at  REAL    NOT NULL,
            started_at   REAL,
            finished_at  REAL,
            result       TEXT,
            output_bytes INTEGER NOT NULL DEFAULT 0,
            expired      INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX jobs_uid_seq ON jobs (uid, seq)",
        "CREATE INDEX jobs_state ON jobs (state)",
        "CREATE INDEX jobs_finished_at ON jobs (finished_at)",
    ),
    # Every index costs every job a write. What expiry reads is the
    # unexpired finished jobs, oldest first, and compaction the oldest
    # tombstones, so only those are indexed; jobs a crash interrupted are
    # found by one scan when the daemon starts.
    (
        "DROP INDEX jobs_state",
        "DROP INDEX jobs_finished_at",
        "CREATE INDEX jobs_unexpired ON jobs (finished_at, seq) "
        "WHERE expired = 0 AND finished_at IS NOT NULL",
        "CREATE INDEX jobs_tombstones ON jobs (seq) WHERE expired = 1",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# Failures of the environment, not of the file: renaming the journal aside
# would lose good history (a second daemon holds it, the disk is full).
_ENVIRONMENTAL = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_FULL,
    }
)

_COLUMNS = (
    "job_id, seq, uid, gid, detached, spec, argv0s, state, reason, "
    "accepted_at, started_at, finished_at, result, output_bytes, expired"
)
_UNFINISHED = ("queued", "running")
# Both repeat the condition of the index ``jobs_unexpired`` word for word,
# which is what lets SQLite use it.
_AGED = (
    "SELECT job_id, output_bytes FROM jobs "
    "WHERE expired = 0 AND finished_at IS NOT NULL AND finished_at < ? "
    "ORDER BY finished_at, seq"
)
_OLDEST = (
    "SELECT job_id, output_bytes FROM jobs "
    "WHERE expired = 0 AND finished_at IS NOT NULL ORDER BY finished_at, seq"
)
_INSERT_ACCEPTED = (
    "INSERT INTO jobs (seq, job_id, uid, gid, detached, spec, argv0s, "
    "state, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?) "
    "ON CONFLICT (job_id) DO NOTHING"
)
_UPDATE_STARTED = (
    "UPDATE jobs SET state = 'running', started_at = ? "
    "WHERE job_id = ? AND state = 'queued'"
)
_UPDATE_FINISHED = (
    "UPDATE jobs SET state = ?, result = ?, output_bytes = ?, "
    "finished_at = ? WHERE job_id = ? AND state IN ('queued', 'running')"
)


@dataclass(frozen=True)
class JournalRecord:
    """One job as the journal knows it; ``seq`` is the list cursor."""

    job_id: str
    seq: int
    uid: int
    gid: int
    detached: bool
    spec: str
    argv0s: tuple[str, ...]
    state: str
    reason: str | None
    accepted_at: float
    started_at: float | None
    finished_at: float | None
    result: str | None
    output_bytes: int
    expired: bool


@dataclass(frozen=True)
class OpenReport:
    """What opening found, for the caller to log: the journal never logs."""

    jobs: int
    lost: list[str]
    renamed_aside: Path | None
    problem: str | None


class _Unusable(Exception):
    """The file is readable but must not be used (corrupt, too new)."""


class Journal:
    """Buffered writes, committed in batches; reads see the buffer."""

    def __init__(
        self, conn: sqlite3.Connection, next_seq: int, held: int, tombstones: int
    ) -> None:
        self._conn = conn
        self._next_seq = next_seq
        #: ``output_bytes`` of unexpired records, as committed; kept by
        #: each transaction, so no query has to add them up again.
        self._held = held
        self._held_in_transaction = held
        self._tombstones = tombstones
        self._tombstones_in_transaction = tombstones
        self._accepts: list[tuple[object, ...]] = []
        self._starts: list[tuple[float, str]] = []
        self._finishes: list[tuple[str, str, int, float, str]] = []
        self._closed = False

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, lost_reason: str, now: float
    ) -> tuple[Journal, OpenReport]:
        """Open (or create) the journal and mark interrupted jobs ``lost``.

        Raises ``OSError``/``sqlite3.Error`` only when a fresh journal cannot
        be created either; any problem with the file itself is answered by
        renaming it aside, reported in ``OpenReport``.
        """
        try:
            return cls._open_usable(path, lost_reason=lost_reason, now=now)
        except _Unusable as exc:
            problem = str(exc)
        except sqlite3.DatabaseError as exc:
            if _errorcode(exc) in _ENVIRONMENTAL:
                raise
            problem = f"unreadable journal: {exc}"
        aside = _rename_aside(path, now)
        journal, report = cls._open_usable(path, lost_reason=lost_reason, now=now)
        return journal, OpenReport(
            jobs=report.jobs, lost=report.lost, renamed_aside=aside, problem=problem
        )

    @classmethod
    def _open_usable(
        cls, path: Path, *, lost_reason: str, now: float
    ) -> tuple[Journal, OpenReport]:
        _create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                first = rows[0][0] if rows else "no answer"
                raise _Unusable(f"quick_check failed: {first}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _Unusable(
                    f"schema version {version} is newer than this daemon's "
                    f"{SCHEMA_VERSION}"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, version)
            lost = _mark_lost(conn, lost_reason, now)
            jobs, last_seq = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM jobs"
            ).fetchone()
            held = _sum_held(conn)
            tombstones = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE expired = 1"
            ).fetchone()[0]
        except BaseException:
            conn.close()
            raise
        report = OpenReport(jobs=jobs, lost=lost, renamed_aside=None, problem=None)
        return cls(conn, last_seq + 1, held, tombstones), report

    # -- buffered writes -----------------------------------------------------

    def accepted(
        self,
        job_id: str,
        *,
        uid: int,
        gid: int,
        detached: bool,
        spec: str,
        argv0s: Sequence[str],
        at: float,
    ) -> None:
        """Buffer an admitted job; its ``seq`` is fixed now, in admission order.

        A job id already in the journal is ignored at commit (a duplicate
        must not abort the whole batch).
        """
        self._check_open()
        if isinstance(argv0s, str):
            raise TypeError("argv0s must be a sequence of names, not a str")
        self._accepts.append(
            (
                self._next_seq,
                job_id,
                uid,
                gid,
                int(detached),
                spec,
                json.dumps(list(argv0s)),
                at,
            )
        )
        self._next_seq += 1

    def started(self, job_id: str, *, at: float) -> None:
        """Buffer queued -> running; a no-op for an unknown or later job."""
        self._check_open()
        self._starts.append((at, job_id))

    def finished(
        self, job_id: str, *, state: str, result: str, output_bytes: int, at: float
    ) -> None:
        """Buffer the end of a job; ignored if unknown or already finished."""
        self._check_open()
        if state not in END_STATES:
            raise ValueError(f"not an end state: {state!r}")
        self._finishes.append((state, result, output_bytes, at, job_id))

    @property
    def pending(self) -> int:
        """Buffered writes a crash would lose right now."""
        return len(self._accepts) + len(self._starts) + len(self._finishes)

    def commit(self) -> None:
        """Make every buffered write durable, all or nothing.

        On failure the buffer is kept, so a later commit can retry.
        """
        self._check_open()
        if self.pending:
            with self._transaction():
                pass

    # -- reads ---------------------------------------------------------------

    def get(self, job_id: str) -> JournalRecord | None:
        """One job, buffered writes included (they are committed first)."""
        self.commit()
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?",  # noqa: S608
            (job_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def history(
        self,
        *,
        uid: int | None = None,
        states: Collection[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        after_seq: int | None = None,
    ) -> list[JournalRecord]:
        """Records oldest first, ``seq > after_seq``, for paging with a cursor.

        ``uid=None`` is everyone's; ``since <= accepted_at < until``.
        Expired tombstones (``expired=True``) are included only when
        ``states`` is ``None``: asking for states asks for jobs whose result
        can still be fetched. Buffered writes are committed first.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        self.commit()
        where: list[str] = []
        params: list[object] = []
        if after_seq is not None:
            where.append("seq > ?")
            params.append(after_seq)
        if uid is not None:
            where.append("uid = ?")
            params.append(uid)
        if isinstance(states, str):
            raise TypeError("states must be a collection of names, not a str")
        if states is not None:
            wanted = sorted(set(states))
            if not wanted:
                return []
            where.append(f"state IN ({', '.join('?' * len(wanted))}) AND expired = 0")
            params.extend(wanted)
        if since is not None:
            where.append("accepted_at >= ?")
            params.append(since)
        if until is not None:
            where.append("accepted_at < ?")
            params.append(until)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM jobs {clause} ORDER BY seq LIMIT ?",  # noqa: S608
            [*params, limit],
        ).fetchall()
        return [_record(row) for row in rows]

    def output_bytes(self) -> int:
        """Spooled output the journal still vouches for (unexpired records)."""
        self.commit()
        return self._held

    # -- retention -----------------------------------------------------------

    def expire(
        self, *, finished_before: float | None, max_output_bytes: int | None
    ) -> list[str]:
        """Turn finished records into tombstones, returning their job ids.

        First everything finished before ``finished_before``, then the
        oldest-finished until unexpired output is within ``max_output_bytes``.
        Records are kept (``expired=True``) so a late query answers
        "expired" rather than "unknown"; deleting spool files is the
        caller's job, after this returns. One transaction, buffered writes
        included.
        """
        if max_output_bytes is not None and max_output_bytes < 0:
            raise ValueError("max_output_bytes must not be negative")
        if finished_before is None and max_output_bytes is None:
            self.commit()
            return []
        self._check_open()
        with self._transaction() as conn:
            expired: list[tuple[str, int]] = []
            if finished_before is not None:
                expired = conn.execute(_AGED, (finished_before,)).fetchall()
                self._tombstone(conn, expired)
            if (
                max_output_bytes is not None
                and self._held_in_transaction > max_output_bytes
            ):
                oldest = conn.execute(_OLDEST)
                over = self._held_in_transaction - max_output_bytes
                more: list[tuple[str, int]] = []
                for job_id, size in oldest:
                    if over <= 0:
                        break
                    more.append((job_id, size))
                    over -= size
                oldest.close()
                self._tombstone(conn, more)
                expired += more
        return [job_id for job_id, _ in expired]

    def _tombstone(
        self, conn: sqlite3.Connection, records: list[tuple[str, int]]
    ) -> None:
        conn.executemany(
            "UPDATE jobs SET expired = 1 WHERE job_id = ?",
            [(job_id,) for job_id, _ in records],
        )
        self._held_in_transaction -= sum(size for _, size in records)
        self._tombstones_in_transaction += len(records)

    # -- upkeep --------------------------------------------------------------

    @property
    def tombstones(self) -> int:
        """Expired records kept (as committed)."""
        return self._tombstones

    def forget(self, *, keep: int) -> int:
        """Delete the oldest tombstones beyond ``keep``; how many went.

        A forgotten job is unknown from then on, as if it never existed:
        without this the journal would grow by every job ever run.
        """
        if keep < 0:
            raise ValueError("keep must not be negative")
        self._check_open()
        if self._tombstones <= keep:
            self.commit()
            return 0
        with self._transaction() as conn:
            over = self._tombstones_in_transaction - keep
            conn.execute(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs "
                "WHERE expired = 1 ORDER BY seq LIMIT ?)",
                (over,),
            )
            self._tombstones_in_transaction -= over
        return over

    def unexpired_ids(self) -> set[str]:
        """Every job whose record is not a tombstone (its spool may exist)."""
        self.commit()
        return {
            job_id
            for (job_id,) in self._conn.execute(
                "SELECT job_id FROM jobs WHERE expired = 0"
            )
        }

    def integrity_ok(self) -> bool:
        """A full check (slow on a big journal; quick_check runs at open)."""
        self._check_open()
        try:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError:
            return False
        return rows == [("ok",)]

    def close(self) -> None:
        """Commit what is buffered and close; the connection closes even if
        that commit fails (the error is raised)."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._closed = True
            self._conn.close()

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError("the journal is closed")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that starts by flushing the buffer.

        Accepts, then starts, then finishes: since a job only moves forward,
        grouping by kind gives the same result as replaying call order, and
        lets each kind go through one ``executemany``.
        """
        conn = self._conn
        self._held_in_transaction = self._held
        self._tombstones_in_transaction = self._tombstones
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._accepts:
                conn.executemany(_INSERT_ACCEPTED, self._accepts)
            if self._starts:
                conn.executemany(_UPDATE_STARTED, self._starts)
            if self._finishes:
                changed = conn.total_changes
                conn.executemany(_UPDATE_FINISHED, self._finishes)
                if conn.total_changes - changed == len(self._finishes):
                    self._held_in_transaction += sum(f[2] for f in self._finishes)
                else:  # some were no-ops (unknown or ended jobs): count afresh
                    self._held_in_transaction = _sum_held(conn)
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._held = self._held_in_transaction
        self._tombstones = self._tombstones_in_transaction
        self._accepts.clear()
        self._starts.clear()
        self._finishes.clear()


def _sum_held(conn: sqlite3.Connection) -> int:
    total: int = conn.execute(
        "SELECT COALESCE(SUM(output_bytes), 0) FROM jobs WHERE expired = 0"
    ).fetchone()[0]
    return total


def _errorcode(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code, if the error came from SQLite."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _create_private(path: Path) -> None:
    """Create the file 0600 whatever the umask: it holds users' argv.

    SQLite gives the -wal and -shm files the mode of the database file.
    A leftover -wal without its database would be replayed into the new
    file, so such orphans are removed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _rename_aside(path: Path, now: float) -> Path:
    """Move an unusable journal (and its -wal, -shm) out of the way.

    The side files go first: a -wal left next to a fresh database would be
    replayed into it.
    """
    base = f"{path}.unusable-{int(now)}"
    aside = Path(base)
    counter = 0
    while any(os.path.lexists(f"{aside}{suffix}") for suffix in ("", "-wal", "-shm")):
        counter += 1
        aside = Path(f"{base}.{counter}")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    os.rename(path, aside)
    return aside


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring the schema up to date, one transaction per step."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _mark_lost(conn: sqlite3.Connection, reason: str, now: float) -> list[str]:
    """End the jobs a previous daemon left queued or running."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        lost = [
            job_id
            for (job_id,) in conn.execute(
                "SELECT job_id FROM jobs WHERE state IN (?, ?) ORDER BY seq",
                _UNFINISHED,
            )
        ]
        conn.execute(
            "UPDATE jobs SET state = 'lost', reason = ?, finished_at = ? "
            "WHERE state IN (?, ?)",
            (reason, now, *_UNFINISHED),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return lost


def _record(row: tuple[Any, ...]) -> JournalRecord:
    (
        job_id,
        seq,
        uid,
        gid,
        detached,
        spec,
        argv0s,
        state,
        reason,
        accepted_at,
        started_at,
        finished_at,
        result,
        output_bytes,
        expired,
    ) = row
    return JournalRecord(
        job_id=job_id,
        seq=seq,
        uid=uid,
        gid=gid,
        detached=bool(detached),
        spec=spec,
        argv0s=tuple(json.loads(argv0s)),
        state=state,
        reason=reason,
        accepted_at=accepted_at,
        started_at=started_at,
        finished_at=finished_at,
        result=result,
        output_bytes=output_bytes,
        expired=bool(expired),
    )
