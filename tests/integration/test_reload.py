"""SIGHUP reloads the settings from their sources, atomically, and tells
systemd (``Type=notify-reload``): a changed allowlist applies to the next job
while a running one carries on; a bad file changes nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import (
    Daemon,
    base_config,
    daemon_uid,
    job,
    start_daemon,
    wait_for,
    write_config,
)

START = {"programs": ["cat", "sleep", "true"], "max_concurrent_jobs": 2}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = start_daemon(START)
    yield d
    d.close()


def rewrite(daemon: Daemon, **settings: Any) -> None:
    path = daemon.workdir / "cuprumd.toml"
    write_config(path, base_config(daemon.workdir, **settings))
    if daemon_uid() != os.getuid():
        os.chown(path, daemon_uid(), daemon_uid())


def hangup(daemon: Daemon) -> list[str]:
    """Send SIGHUP; the notifications up to the READY=1 that ends it."""
    daemon.drain_notifications()
    daemon.proc.send_signal(signal.SIGHUP)
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = daemon.next_notification(0.2)
        if message is not None:
            seen.append(message)
            if "READY=1" in message.splitlines():
                return seen
    raise AssertionError(f"no READY=1 after SIGHUP: {seen}\n{daemon.log()}")


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["event"] == name]


def test_a_changed_allowlist_applies_to_the_next_job_not_the_running_one(
    daemon: Daemon,
) -> None:
    refused = daemon.request({"op": "run", "job": job(["tac"])})
    assert refused["error"]["code"] == "program_not_allowed"
    with daemon.connect() as conn:
        conn.send({"id": 1, "op": "run", "job": job(["sleep", "1"], ["cat"])})
        time.sleep(0.2)
        rewrite(
            daemon, **{**START, "programs": [*START["programs"], "tac"]}, max_stages=3
        )
        notes = hangup(daemon)
        reply = conn.read()
    assert reply["result"]["state"] == "succeeded"  # not dropped by the reload
    reloading = notes[0].splitlines()
    assert "RELOADING=1" in reloading
    usec = next(line for line in reloading if line.startswith("MONOTONIC_USEC="))
    assert 0 < int(usec.split("=")[1]) <= time.monotonic_ns() // 1000
    ran = daemon.request({"op": "run", "job": job(["tac"], stdin="a\nb\n")})
    assert ran["result"]["stdout"] == "b\na\n"
    many = daemon.request({"op": "run", "job": job(*[["true"]] * 4)})
    assert "max_stages (3)" in many["error"]["message"]
    (done,) = events(daemon, "daemon.reloaded")
    assert set(done["applied"]) == {"programs", "max_stages"}


def test_a_bad_file_keeps_every_old_setting_and_says_why(daemon: Daemon) -> None:
    (daemon.workdir / "cuprumd.toml").write_text("programs = [\n")
    hangup(daemon)
    (failed,) = events(daemon, "daemon.reload_failed")
    assert "cuprumd.toml" in failed["error"]
    rewrite(daemon, programs=["cat", "tac"], max_concurrent_jobs=0)
    hangup(daemon)
    assert len(events(daemon, "daemon.reload_failed")) == 2
    assert "max_concurrent_jobs" in events(daemon, "daemon.reload_failed")[1]["error"]
    # Neither reload took anything: tac stays refused, true still runs.
    refused = daemon.request({"op": "run", "job": job(["tac"])})
    assert refused["error"]["code"] == "program_not_allowed"
    ran = daemon.request({"op": "run", "job": job(["true"])})
    assert ran["result"]["state"] == "succeeded"
    assert not events(daemon, "daemon.reloaded")


def test_keys_set_up_once_wait_for_a_restart(daemon: Daemon) -> None:
    backend = daemon.request({"op": "ping"})["result"]["stream_backend"]
    other = "python" if backend != "python" else "rust"
    rewrite(daemon, **{**START, "max_concurrent_jobs": 1}, stream_backend=other)
    hangup(daemon)
    (waiting,) = events(daemon, "daemon.reload_restart_needed")
    assert waiting["keys"] == ["stream_backend"]
    assert daemon.request({"op": "ping"})["result"]["stream_backend"] == backend
    stats = daemon.request({"op": "stats"})["result"]
    assert stats["max_concurrent_jobs"] == 1


def test_raised_limits_start_queued_jobs_at_once(daemon: Daemon) -> None:
    rewrite(daemon, **{**START, "max_concurrent_jobs": 1})
    hangup(daemon)
    with daemon.connect() as conn:
        first = conn.request({"op": "submit", "job": job(["sleep", "30"])})
        second = conn.request({"op": "submit", "job": job(["sleep", "30"])})
        ids = [first["result"]["job_id"], second["result"]["job_id"]]

        def state(job_id: str) -> str:
            return str(
                conn.request({"op": "status", "job_id": job_id})["result"]["state"]
            )

        assert state(ids[1]) == "queued"
        rewrite(daemon, **START)
        hangup(daemon)
        assert wait_for(lambda: state(ids[1]) == "running")
        for job_id in ids:
            conn.request({"op": "cancel", "job_id": job_id})
