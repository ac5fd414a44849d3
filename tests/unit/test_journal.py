"""The job journal: buffering, crash recovery, retention and bad files."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cuprumd.journal import (
    _AGED,
    _MIGRATIONS,
    _OLDEST,
    END_STATES,
    SCHEMA_VERSION,
    Journal,
    JournalRecord,
    OpenReport,
    _rename_aside,
)

T0 = 1_700_000_000.0
LOST = "daemon restarted"


def open_journal(path: Path, *, now: float = T0) -> tuple[Journal, OpenReport]:
    return Journal.open(path, lost_reason=LOST, now=now)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j, report = open_journal(path)
    assert report == OpenReport(jobs=0, lost=[], renamed_aside=None, problem=None)
    yield j
    j.close()


def accept(
    j: Journal,
    job_id: str,
    *,
    uid: int = 1000,
    at: float = T0,
    detached: bool = True,
) -> None:
    j.accepted(
        job_id,
        uid=uid,
        gid=uid,
        detached=detached,
        spec=f'{{"id": "{job_id}"}}',
        argv0s=["cat", "wc"],
        at=at,
    )


def finish(j: Journal, job_id: str, *, at: float, size: int = 0) -> None:
    j.finished(job_id, state="succeeded", result="{}", output_bytes=size, at=at)


def raw_ids(path: Path) -> list[str]:
    """What another process would see in the file right now."""
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT job_id FROM jobs ORDER BY seq")]
    finally:
        conn.close()


def ids(records: list[JournalRecord]) -> list[str]:
    return [r.job_id for r in records]


# -- writes and reads ---------------------------------------------------------


def test_round_trip(journal: Journal) -> None:
    journal.accepted(
        "j1",
        uid=1000,
        gid=100,
        detached=False,
        spec='{"stages": []}',
        argv0s=("grep", "sort"),
        at=T0,
    )
    journal.commit()
    queued = journal.get("j1")
    assert queued is not None
    assert queued.state == "queued"
    assert queued.started_at is None
    assert queued.finished_at is None
    assert queued.result is None

    journal.started("j1", at=T0 + 1)
    assert journal.get("j1") is not None
    assert journal.get("j1").state == "running"  # type: ignore[union-attr]

    journal.finished(
        "j1", state="failed", result='{"exit": 1}', output_bytes=42, at=T0 + 2
    )
    assert journal.get("j1") == JournalRecord(
        job_id="j1",
        seq=1,
        uid=1000,
        gid=100,
        detached=False,
        spec='{"stages": []}',
        argv0s=("grep", "sort"),
        state="failed",
        reason=None,
        accepted_at=T0,
        started_at=T0 + 1,
        finished_at=T0 + 2,
        result='{"exit": 1}',
        output_bytes=42,
        expired=False,
    )
    assert journal.get("nope") is None


def test_constants() -> None:
    assert SCHEMA_VERSION == 2
    assert "lost" in END_STATES
    assert "running" not in END_STATES


def test_writes_are_buffered_until_commit(journal: Journal, path: Path) -> None:
    accept(journal, "a")
    accept(journal, "b")
    journal.started("a", at=T0 + 1)
    assert journal.pending == 3
    assert raw_ids(path) == []
    journal.commit()
    assert journal.pending == 0
    assert raw_ids(path) == ["a", "b"]
    journal.commit()  # nothing pending: a no-op


def test_get_sees_buffered_writes(journal: Journal) -> None:
    accept(journal, "a")
    record = journal.get("a")
    assert record is not None
    assert record.state == "queued"
    assert journal.pending == 0


def test_accept_start_finish_in_one_batch(journal: Journal) -> None:
    accept(journal, "a")
    journal.started("a", at=T0 + 1)
    finish(journal, "a", at=T0 + 2, size=7)
    journal.commit()
    record = journal.get("a")
    assert record is not None
    assert (record.state, record.started_at, record.finished_at) == (
        "succeeded",
        T0 + 1,
        T0 + 2,
    )


def test_transitions_only_move_forward(journal: Journal) -> None:
    accept(journal, "a")
    journal.commit()
    finish(journal, "a", at=T0 + 2, size=5)
    journal.commit()
    journal.started("a", at=T0 + 3)
    journal.finished("a", state="error", result="{}", output_bytes=9, at=T0 + 4)
    journal.commit()
    record = journal.get("a")
    assert record is not None
    assert record.state == "succeeded"
    assert record.started_at is None
    assert (record.finished_at, record.output_bytes) == (T0 + 2, 5)


def test_unknown_jobs_are_ignored(journal: Journal) -> None:
    journal.started("ghost", at=T0)
    finish(journal, "ghost", at=T0)
    journal.commit()
    assert journal.get("ghost") is None
    assert journal.history() == []


def test_finished_needs_an_end_state(journal: Journal) -> None:
    with pytest.raises(ValueError, match="end state"):
        journal.finished("a", state="running", result="{}", output_bytes=0, at=T0)
    assert journal.pending == 0


def test_duplicate_accept_does_not_sink_the_batch(journal: Journal) -> None:
    accept(journal, "a", uid=1)
    journal.commit()
    accept(journal, "a", uid=2)
    accept(journal, "b")
    journal.commit()
    assert ids(journal.history()) == ["a", "b"]
    assert journal.get("a").uid == 1  # type: ignore[union-attr]


def test_a_thousand_accepts_in_one_commit(journal: Journal, path: Path) -> None:
    for n in range(1000):
        accept(journal, f"job-{n}", at=T0 + n)
    assert journal.pending == 1000
    journal.commit()
    assert journal.pending == 0
    records = journal.history(limit=2000)
    assert [r.seq for r in records] == list(range(1, 1001))
    assert len(raw_ids(path)) == 1000


# -- restarts -----------------------------------------------------------------


def test_reopen_marks_interrupted_jobs_lost(path: Path) -> None:
    j, _ = open_journal(path)
    for name in ("done", "running", "queued"):
        accept(j, name)
    j.started("running", at=T0 + 1)
    finish(j, "done", at=T0 + 2, size=3)
    j.close()

    j, report = open_journal(path, now=T0 + 100)
    try:
        assert report == OpenReport(
            jobs=3, lost=["running", "queued"], renamed_aside=None, problem=None
        )
        done = j.get("done")
        assert done is not None
        assert (done.state, done.reason, done.finished_at) == (
            "succeeded",
            None,
            T0 + 2,
        )
        for name in ("running", "queued"):
            record = j.get(name)
            assert record is not None
            assert (record.state, record.reason, record.finished_at) == (
                "lost",
                LOST,
                T0 + 100,
            )
        assert j.get("running").started_at == T0 + 1  # type: ignore[union-attr]
        # A lost job stays lost: a late finish cannot resurrect it.
        finish(j, "queued", at=T0 + 101)
        assert j.get("queued").state == "lost"  # type: ignore[union-attr]
    finally:
        j.close()

    _, report = open_journal(path, now=T0 + 200)
    assert report.lost == []


def test_seq_keeps_growing_across_reopen(path: Path) -> None:
    j, _ = open_journal(path)
    accept(j, "a")
    accept(j, "b")
    j.close()
    j, _ = open_journal(path)
    accept(j, "c")
    j.close()
    j, report = open_journal(path)
    try:
        assert report.jobs == 3
        assert [(r.job_id, r.seq) for r in j.history()] == [
            ("a", 1),
            ("b", 2),
            ("c", 3),
        ]
    finally:
        j.close()


def test_crash_mid_batch_keeps_only_committed(path: Path) -> None:
    crashed, _ = open_journal(path)
    accept(crashed, "a")
    accept(crashed, "b")
    crashed.started("a", at=T0 + 1)
    crashed.commit()
    # The next batch never reaches commit: the process dies here.
    crashed.started("b", at=T0 + 2)
    finish(crashed, "a", at=T0 + 3)
    accept(crashed, "c")
    assert crashed.pending == 3

    j, report = open_journal(path, now=T0 + 50)
    try:
        assert report.jobs == 2
        assert report.lost == ["a", "b"]
        assert ids(j.history()) == ["a", "b"]
        a, b = j.get("a"), j.get("b")
        assert a is not None
        assert b is not None
        assert (a.state, a.started_at, a.finished_at, a.reason) == (
            "lost",
            T0 + 1,
            T0 + 50,
            LOST,
        )
        assert (b.state, b.started_at, b.reason) == ("lost", None, LOST)
        assert j.get("c") is None
        # The uncommitted seq 3 is handed out again, never a lower one.
        accept(j, "d")
        assert j.get("d").seq == 3  # type: ignore[union-attr]
    finally:
        j.close()
        crashed._conn.close()  # the "dead" process's handle, without a flush


def test_close_commits_and_is_idempotent(path: Path) -> None:
    j, _ = open_journal(path)
    accept(j, "a")
    j.close()
    j.close()
    assert raw_ids(path) == ["a"]
    with pytest.raises(sqlite3.ProgrammingError):
        accept(j, "b")


# -- history ------------------------------------------------------------------


@pytest.fixture
def populated(journal: Journal) -> Journal:
    """Six jobs: uid 1 and 2 alternating, one second apart."""
    for n in range(6):
        accept(journal, f"j{n}", uid=1 + n % 2, at=T0 + n)
    journal.started("j2", at=T0 + 10)
    finish(journal, "j0", at=T0 + 10)
    journal.finished("j1", state="failed", result="{}", output_bytes=0, at=T0 + 11)
    journal.commit()
    return journal


def test_history_everyone_oldest_first(populated: Journal) -> None:
    assert ids(populated.history()) == [f"j{n}" for n in range(6)]


def test_history_by_uid(populated: Journal) -> None:
    assert ids(populated.history(uid=1)) == ["j0", "j2", "j4"]
    assert ids(populated.history(uid=2)) == ["j1", "j3", "j5"]
    assert populated.history(uid=3) == []


def test_history_by_states(populated: Journal) -> None:
    assert ids(populated.history(states={"succeeded", "failed"})) == ["j0", "j1"]
    assert ids(populated.history(states=["running"])) == ["j2"]
    assert ids(populated.history(states=("queued",), uid=2)) == ["j3", "j5"]
    assert populated.history(states=()) == []
    with pytest.raises(TypeError):
        populated.history(states="queued")


def test_history_by_accepted_time(populated: Journal) -> None:
    assert ids(populated.history(since=T0 + 2)) == ["j2", "j3", "j4", "j5"]
    assert ids(populated.history(until=T0 + 2)) == ["j0", "j1"]
    assert ids(populated.history(since=T0 + 1, until=T0 + 3)) == ["j1", "j2"]


def test_history_pages_with_a_cursor(populated: Journal) -> None:
    seen: list[str] = []
    cursor: int | None = None
    while page := populated.history(limit=4, after_seq=cursor):
        assert len(page) <= 4
        seen += ids(page)
        cursor = page[-1].seq
    assert seen == [f"j{n}" for n in range(6)]
    assert ids(populated.history(uid=1, limit=1, after_seq=1)) == ["j2"]
    assert populated.history(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        populated.history(limit=-1)


# -- retention ----------------------------------------------------------------


def finished_jobs(j: Journal, sizes: list[int]) -> None:
    """Job ``e<n>`` finishes at T0 + 10 * n with ``sizes[n]`` bytes."""
    for n in range(len(sizes)):
        accept(j, f"e{n}", at=T0)
    for n, size in enumerate(sizes):
        finish(j, f"e{n}", at=T0 + 10 * n, size=size)
    j.commit()


def test_expire_by_age(journal: Journal) -> None:
    finished_jobs(journal, [1, 2, 3, 4])
    accept(journal, "queued")
    assert journal.expire(finished_before=T0 + 20, max_output_bytes=None) == [
        "e0",
        "e1",
    ]
    assert journal.output_bytes() == 7
    assert journal.expire(finished_before=T0 + 20, max_output_bytes=None) == []
    assert journal.get("queued").expired is False  # type: ignore[union-attr]


def test_expire_by_size_oldest_finished_first(journal: Journal) -> None:
    # Finish order differs from admission order: e1 finishes first.
    accept(journal, "e0")
    accept(journal, "e1")
    accept(journal, "e2")
    finish(journal, "e1", at=T0 + 1, size=100)
    finish(journal, "e0", at=T0 + 2, size=50)
    finish(journal, "e2", at=T0 + 3, size=30)
    accept(journal, "running")
    journal.started("running", at=T0)
    journal.commit()
    assert journal.output_bytes() == 180
    # 180 - 100 = 80 is still over 50; 80 - 50 = 30 is within it.
    assert journal.expire(finished_before=None, max_output_bytes=50) == ["e1", "e0"]
    assert journal.output_bytes() == 30
    assert journal.expire(finished_before=None, max_output_bytes=30) == []
    assert journal.expire(finished_before=None, max_output_bytes=0) == ["e2"]
    assert journal.output_bytes() == 0
    assert journal.get("running").expired is False  # type: ignore[union-attr]


def test_expire_by_age_then_size(journal: Journal) -> None:
    finished_jobs(journal, [10, 10, 10, 10, 10])
    expired = journal.expire(finished_before=T0 + 10, max_output_bytes=20)
    assert expired == ["e0", "e1", "e2"]
    assert journal.output_bytes() == 20
    assert journal.expire(finished_before=None, max_output_bytes=None) == []


def test_expire_flushes_the_buffer_in_the_same_transaction(
    journal: Journal,
) -> None:
    accept(journal, "a")
    finish(journal, "a", at=T0, size=5)
    assert journal.expire(finished_before=T0 + 1, max_output_bytes=None) == ["a"]
    assert journal.pending == 0


def test_expired_records_stay_as_tombstones(journal: Journal) -> None:
    finished_jobs(journal, [5, 6])
    journal.expire(finished_before=T0 + 5, max_output_bytes=None)
    tomb = journal.get("e0")
    assert tomb is not None
    assert tomb.expired is True
    assert (tomb.state, tomb.output_bytes, tomb.result) == ("succeeded", 5, "{}")
    everyone = journal.history()
    assert [(r.job_id, r.expired) for r in everyone] == [("e0", True), ("e1", False)]
    # Asking by state asks for fetchable results: tombstones are left out.
    assert ids(journal.history(states={"succeeded"})) == ["e1"]


def test_the_oldest_tombstones_are_forgotten_beyond_what_is_kept(
    journal: Journal, path: Path
) -> None:
    finished_jobs(journal, [1, 1, 1, 1])
    accept(journal, "live")
    journal.expire(finished_before=T0 + 25, max_output_bytes=None)  # e0..e2
    assert journal.tombstones == 3
    assert journal.forget(keep=5) == 0
    assert journal.forget(keep=1) == 2
    assert journal.tombstones == 1
    assert journal.get("e0") is None  # unknown now, not "expired"
    assert journal.get("e2").expired is True  # type: ignore[union-attr]
    assert journal.unexpired_ids() == {"e3", "live"}
    journal.close()
    again, _ = open_journal(path)  # the count is read back at open
    try:
        assert again.tombstones == 1
        assert again.forget(keep=0) == 1
        assert ids(again.history()) == ["e3", "live"]
    finally:
        again.close()


def test_forgetting_keeps_a_non_negative_number(journal: Journal) -> None:
    with pytest.raises(ValueError, match="keep"):
        journal.forget(keep=-1)


def test_expire_rejects_a_negative_budget(journal: Journal) -> None:
    with pytest.raises(ValueError, match="max_output_bytes"):
        journal.expire(finished_before=None, max_output_bytes=-1)


# -- the file -----------------------------------------------------------------


def test_schema_is_versioned_and_indexed(journal: Journal, path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    finally:
        conn.close()
    assert {"jobs_uid_seq", "jobs_unexpired"} <= indexes
    assert not {"jobs_state", "jobs_finished_at"} & indexes  # version 1's


def test_expiry_reads_only_the_unexpired_index(journal: Journal, path: Path) -> None:
    """A sweep must not scan history: it walks the partial index."""
    conn = sqlite3.connect(path)
    try:
        for query, args in ((_AGED, (T0,)), (_OLDEST, ())):
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", args)
            )
            assert "USING INDEX jobs_unexpired" in plan, plan
        tombs = "SELECT seq FROM jobs WHERE expired = 1 ORDER BY seq LIMIT 5"
        plan = " ".join(
            str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {tombs}")
        )
        assert "jobs_tombstones" in plan, plan
    finally:
        conn.close()


def test_a_version_1_journal_is_migrated_with_its_jobs(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (seq, job_id, uid, gid, detached, spec, argv0s, state, "
        "accepted_at, finished_at, result, output_bytes) VALUES "
        "(1, 'old', 7, 7, 1, '{}', '[]', 'succeeded', ?, ?, '{}', 11), "
        "(2, 'cut', 7, 7, 1, '{}', '[]', 'running', ?, NULL, NULL, 0)",
        (T0, T0 + 1, T0),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    j, report = open_journal(path, now=T0 + 5)
    try:
        assert report.problem is None
        assert report.lost == ["cut"]
        assert j.output_bytes() == 11
        assert j.expire(finished_before=T0 + 2, max_output_bytes=None) == ["old"]
        assert j.output_bytes() == 0
    finally:
        j.close()


def test_held_bytes_survive_finishes_that_change_nothing(journal: Journal) -> None:
    """A finish of an unknown or already finished job must not be counted."""
    accept(journal, "a")
    finish(journal, "a", at=T0, size=5)
    finish(journal, "a", at=T0 + 1, size=7)  # a second end: ignored
    finish(journal, "ghost", at=T0 + 1, size=9)
    journal.commit()
    assert journal.output_bytes() == 5
    accept(journal, "b")
    finish(journal, "b", at=T0 + 2, size=3)
    assert journal.expire(finished_before=None, max_output_bytes=4) == ["a"]
    assert journal.output_bytes() == 3


def test_file_is_private_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        j, _ = open_journal(path)
        accept(j, "a")
        j.commit()
        wal = Path(f"{path}-wal")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        j.close()
    finally:
        os.umask(old)


def test_integrity_ok(journal: Journal) -> None:
    accept(journal, "a")
    journal.commit()
    assert journal.integrity_ok() is True


def assert_fresh_after_aside(
    path: Path, report: OpenReport, j: Journal, *, expect: str
) -> Path:
    try:
        assert report.jobs == 0
        assert report.lost == []
        assert report.problem is not None
        assert expect in report.problem
        assert report.renamed_aside == path.with_name(f"{path.name}.unusable-{int(T0)}")
        assert report.renamed_aside.exists()
        accept(j, "fresh")
        assert j.get("fresh").seq == 1  # type: ignore[union-attr]
        assert j.integrity_ok()
    finally:
        j.close()
    return report.renamed_aside


def test_garbage_file_is_renamed_aside(path: Path) -> None:
    garbage = b"this is not a database, just some bytes " * 200
    path.write_bytes(garbage)
    # SQLite itself deletes a -wal with no valid frames when it closes the
    # bad file, so only the database is sure to be found aside here.
    Path(f"{path}-wal").write_bytes(b"stale wal")
    j, report = open_journal(path)
    aside = assert_fresh_after_aside(path, report, j, expect="not a database")
    assert aside.read_bytes() == garbage


def test_rename_aside_moves_the_side_files(path: Path) -> None:
    for suffix, data in (("", b"db"), ("-wal", b"wal"), ("-shm", b"shm")):
        Path(f"{path}{suffix}").write_bytes(data)
    aside = _rename_aside(path, T0)
    assert aside == path.with_name(f"{path.name}.unusable-{int(T0)}")
    assert [Path(f"{aside}{s}").read_bytes() for s in ("", "-wal", "-shm")] == [
        b"db",
        b"wal",
        b"shm",
    ]
    assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))
    # A name taken by an earlier casualty's side file alone still counts.
    path.write_bytes(b"db2")
    Path(f"{path}.unusable-{int(T0) + 1}-wal").write_bytes(b"")
    assert _rename_aside(path, T0 + 1) == path.with_name(
        f"{path.name}.unusable-{int(T0) + 1}.1"
    )


def test_truncated_journal_is_renamed_aside(path: Path) -> None:
    j, _ = open_journal(path)
    for n in range(2000):
        j.accepted(
            f"job-{n:05}",
            uid=n % 7,
            gid=0,
            detached=True,
            spec="x" * 200,
            argv0s=["cat"],
            at=T0,
        )
    j.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2 + 100)  # mid-page, too
    j, report = open_journal(path)
    assert report.problem is not None
    assert "malformed" in report.problem or "quick_check" in report.problem
    assert_fresh_after_aside(path, report, j, expect="")


def test_future_schema_is_renamed_aside(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    j, report = open_journal(path)
    assert_fresh_after_aside(path, report, j, expect="newer")


def test_aside_name_gets_a_counter_when_taken(path: Path) -> None:
    taken = path.with_name(f"{path.name}.unusable-{int(T0)}")
    taken.write_bytes(b"an earlier casualty")
    path.write_bytes(b"garbage " * 100)
    j, report = open_journal(path)
    j.close()
    assert report.renamed_aside == path.with_name(f"{path.name}.unusable-{int(T0)}.1")
    assert taken.read_bytes() == b"an earlier casualty"


def test_a_bad_journal_does_not_raise_twice(path: Path) -> None:
    path.write_bytes(b"garbage " * 100)
    j, first = open_journal(path)
    j.close()
    j, second = open_journal(path)
    j.close()
    assert first.renamed_aside is not None
    assert second == OpenReport(jobs=0, lost=[], renamed_aside=None, problem=None)


def read_only_dir(tmp_path: Path) -> Path:
    """A 0500 directory: its mode holds for us (root runs these tests
    again without the capabilities that override it, below)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / "probe").touch()
    except PermissionError:
        return ro
    ro.chmod(0o700)
    raise AssertionError("directory modes do not hold for this process")


def _check_read_only_directory_raises(tmp_path: Path) -> None:
    ro = read_only_dir(tmp_path)
    try:
        with pytest.raises((OSError, sqlite3.Error)):
            open_journal(ro / "journal.db")
    finally:
        ro.chmod(0o700)


def _check_bad_journal_in_read_only_directory_raises(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "journal.db").write_bytes(b"garbage " * 100)
    ro.chmod(0o500)
    try:
        with pytest.raises((OSError, sqlite3.Error)):
            open_journal(ro / "journal.db")
    finally:
        ro.chmod(0o700)
    assert (ro / "journal.db").read_bytes() == b"garbage " * 100


#: As root, the read-only checks run in a child that lacks the
#: capabilities overriding file modes (CI runs as root).
_WITHOUT_DAC = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search,-fowner",
    "--inh-caps=-all",
]


@pytest.mark.parametrize(
    "check",
    [
        _check_read_only_directory_raises,
        _check_bad_journal_in_read_only_directory_raises,
    ],
)
def test_a_journal_that_cannot_be_made_or_set_aside_raises(
    check: Any, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or os.environ.get("CUPRUM_TEST_NO_DAC") == "1":
        check(tmp_path)
        return
    code = (
        "import sys, pathlib, tempfile\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import tests.unit.test_journal as t\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        f"    t.{check.__name__}(pathlib.Path(d))\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "CUPRUM_TEST_NO_DAC": "1"}
    done = subprocess.run(
        [*_WITHOUT_DAC, sys.executable, "-c", code, repo],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_journal(tmp_path / "absent" / "journal.db")


def test_directory_that_is_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        open_journal(tmp_path / "file" / "journal.db")
