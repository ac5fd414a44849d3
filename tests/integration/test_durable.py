"""Jobs survive the daemon: the journal and the spool in state_dir.

Every job whose ``submit`` was acknowledged is, after any crash and
restart, either finished with its full output or ``lost`` — never missing,
never twice, never with another job's output; results stay fetchable until
they expire; ``follow`` shows output as it is written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import (
    Daemon,
    RawConnection,
    daemon_uid,
    job,
    short_tmpdir,
    start_daemon,
    wait_for,
)

PROGRAMS = ["printf", "sleep", "sh", "cat", "head"]


class Home:
    """A state_dir and the daemons that come and go on it."""

    def __init__(self) -> None:
        self.workdir = short_tmpdir()
        self.state = self.workdir / "state"
        self.daemon: Daemon | None = None

    def start(self, **settings: Any) -> Daemon:
        if self.daemon is not None:  # the previous one: crashed or stopped
            if self.daemon.proc.poll() is None:
                self.daemon.terminate()
            self.daemon.notify.close()
        notify = self.workdir / "notify"
        if notify.exists():
            notify.unlink()
        self.daemon = start_daemon(
            {"state_dir": str(self.state), "programs": PROGRAMS, **settings},
            workdir=self.workdir,
        )
        return self.daemon

    def crash(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


@pytest.fixture
def home() -> Iterator[Home]:
    place = Home()
    yield place
    place.close()


def submit(conn: RawConnection, *stages: list[str], **fields: Any) -> str:
    reply = conn.request({"op": "submit", "job": job(*stages, **fields)})
    job_id: str = reply["result"]["job_id"]
    return job_id


def test_results_and_history_survive_a_crash(home: Home) -> None:
    daemon = home.start()
    with daemon.connect() as conn:
        done = [submit(conn, ["printf", f"out {i}"]) for i in range(5)]
        sleeper = submit(conn, ["sleep", "60"])
        assert wait_for(
            lambda: all(
                conn.request({"op": "status", "job_id": j})["result"]["state"]
                == "succeeded"
                for j in done
            )
        )
        first = conn.request({"op": "wait", "job_id": done[0]})["result"]
        assert first["stdout"] == "out 0"
    home.crash()

    daemon = home.start()
    with daemon.connect() as conn:
        for i, job_id in enumerate(done):  # fetched or not, still there
            result = conn.request({"op": "wait", "job_id": job_id})["result"]
            assert (result["state"], result["stdout"]) == ("succeeded", f"out {i}")
        lost = conn.request({"op": "wait", "job_id": sleeper})["result"]
        assert lost["state"] == "lost"
        assert "daemon stopped" in lost["error"]
        listed = conn.request({"op": "list"})["result"]["jobs"]
        assert [j["job_id"] for j in listed] == [*done, sleeper]
        assert conn.request({"op": "status", "job_id": sleeper})["result"]["state"] == (
            "lost"
        )
    assert any(
        e["event"] == "journal.opened" and e["lost"] == 1 for e in daemon.events()
    )


def test_every_acknowledged_submit_survives_sigkill_at_any_moment(home: Home) -> None:
    chooser = random.Random(4242)
    acknowledged: list[tuple[str, str]] = []
    for round_ in range(4):
        daemon = home.start()
        stop = threading.Event()

        def client(token_base: int, daemon: Daemon, stop: threading.Event) -> None:
            try:
                with daemon.connect() as conn:
                    for n in range(10_000):
                        if stop.is_set():
                            return
                        token = f"t{token_base}-{n}"
                        acknowledged.append(
                            (submit(conn, ["printf", token], ["cat"]), token)
                        )
            except (OSError, EOFError, KeyError, ValueError):
                return  # the daemon died mid-request: that one was never acked

        threads = [
            threading.Thread(target=client, args=(round_ * 10 + i, daemon, stop))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(chooser.uniform(0.2, 0.8))
        home.crash()
        stop.set()
        for thread in threads:
            thread.join()

    daemon = home.start()
    assert len(acknowledged) > 50
    ids = [job_id for job_id, _ in acknowledged]
    assert len(set(ids)) == len(ids)  # never twice
    states: dict[str, int] = {}
    with daemon.connect() as conn:
        for job_id, token in acknowledged:
            reply = conn.request({"op": "wait", "job_id": job_id})
            assert reply["ok"], reply  # never missing
            result = reply["result"]
            states[result["state"]] = states.get(result["state"], 0) + 1
            if result["state"] == "succeeded":
                assert result["stdout"] == token  # never another job's output
            else:
                assert result["state"] == "lost", result
    assert states.get("succeeded", 0) > 0
    home.daemon.terminate() if home.daemon else None
    with sqlite3.connect(home.state / "journal.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_follow_shows_output_as_it_is_written(home: Home) -> None:
    daemon = home.start()
    script = "for i in 1 2 3; do echo line $i; sleep 0.4; done"
    with daemon.connect() as conn:
        job_id = submit(conn, ["sh", "-c", script])
        conn.send({"id": 7, "op": "follow", "job_id": job_id})
        arrivals = []
        while True:
            reply = conn.read()
            if "event" not in reply:
                break
            arrivals.append((time.monotonic(), reply["event"]["data"]))
    assert reply["result"] == {"job_id": job_id, "state": "succeeded"}
    assert "".join(data for _, data in arrivals) == "line 1\nline 2\nline 3\n"
    assert arrivals[-1][0] - arrivals[0][0] > 0.5  # live, not all at the end
    with daemon.connect() as conn:
        conn.send({"id": 8, "op": "follow", "job_id": job_id, "live": False})
        stored = conn.read()
        assert stored["event"]["data"] == "line 1\nline 2\nline 3\n"
        assert conn.read()["result"]["state"] == "succeeded"


def test_list_filters_and_pages(home: Home) -> None:
    daemon = home.start()
    with daemon.connect() as conn:
        before = time.time()
        ids = [submit(conn, ["printf", str(i)]) for i in range(5)]
        failing = submit(conn, ["sh", "-c", "exit 3"])
        assert wait_for(
            lambda: (
                conn.request({"op": "status", "job_id": failing})["result"]["state"]
                == "failed"
            )
        )
        page = conn.request({"op": "list", "limit": 2})["result"]
        assert [j["job_id"] for j in page["jobs"]] == ids[:2]
        rest = conn.request({"op": "list", "limit": 10, "cursor": page["cursor"]})
        assert [j["job_id"] for j in rest["result"]["jobs"]] == [*ids[2:], failing]
        assert rest["result"]["cursor"] is None
        only = conn.request({"op": "list", "states": ["failed"]})["result"]["jobs"]
        assert [j["job_id"] for j in only] == [failing]
        later = conn.request({"op": "list", "since": time.time() + 60})["result"]
        assert later["jobs"] == []
        since = conn.request({"op": "list", "since": before})["result"]["jobs"]
        assert len(since) == 6
        bad = conn.request({"op": "list", "states": ["sleeping"]})
        assert bad["error"]["code"] == "bad_request"


def test_results_expire_by_age_and_by_size(home: Home) -> None:
    daemon = home.start(result_retention_seconds=0.5, max_state_bytes=1 << 20)
    with daemon.connect() as conn:
        old = submit(conn, ["printf", "old"])
        time.sleep(1.0)
        big: list[str] = []
        for _ in range(3):  # one after another: "oldest" must be unambiguous
            big.append(submit(conn, ["head", "-c", str(400 << 10), "/dev/zero"]))
            assert wait_for(
                lambda: (
                    conn.request({"op": "status", "job_id": big[-1]})
                    .get("result", {})
                    .get("state")
                    == "succeeded"
                )
            )
        gone = conn.request({"op": "wait", "job_id": old})
        assert gone["error"]["code"] == "not_found"
        assert "expired" in gone["error"]["message"]
        # 3 x 400 KiB does not fit in 1 MiB: the oldest went first.
        first = conn.request({"op": "wait", "job_id": big[0]})
        assert "expired" in first["error"]["message"]
        kept = conn.request({"op": "wait", "job_id": big[-1]})["result"]
        assert len(kept["stdout"]) == 400 << 10
    assert not (home.state / "spool" / big[0]).exists()


def test_env_values_are_journaled_only_when_asked(home: Home) -> None:
    daemon = home.start()
    with daemon.connect() as conn:
        submit(conn, ["printf", "x"], env={"TOKEN": "s3cret"})
    home.daemon.terminate() if home.daemon else None
    journal = (home.state / "journal.sqlite3").read_bytes()
    wal = home.state / "journal.sqlite3-wal"
    stored = journal + (wal.read_bytes() if wal.exists() else b"")
    assert b"TOKEN" in stored
    assert b"s3cret" not in stored
    assert stat.S_IMODE((home.state / "journal.sqlite3").stat().st_mode) == 0o600


def test_a_corrupt_journal_is_set_aside_and_the_daemon_starts(home: Home) -> None:
    home.state.mkdir(mode=0o700)
    if daemon_uid() != os.getuid():
        os.chown(home.state, daemon_uid(), daemon_uid())
    (home.state / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    daemon = home.start()
    with daemon.connect() as conn:
        job_id = submit(conn, ["printf", "fresh"])
        assert conn.request({"op": "wait", "job_id": job_id})["result"]["stdout"] == (
            "fresh"
        )
    aside = [p.name for p in home.state.iterdir() if ".unusable-" in p.name]
    assert aside, list(home.state.iterdir())
    assert any(e["event"] == "journal.unusable" for e in daemon.events())


def test_jobs_cannot_read_the_spool(home: Home) -> None:
    daemon = home.start()
    with daemon.connect() as conn:
        secret = submit(conn, ["printf", "private"])
        time.sleep(0.3)
        path = Path(home.state) / "spool" / secret / "stdout"
        result = conn.request({"op": "run", "job": job(["cat", str(path)])})["result"]
    assert result["state"] == "failed"
    assert "private" not in result["stdout"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(json.dumps(result))["stages"][0]["exit_code"] != 0
