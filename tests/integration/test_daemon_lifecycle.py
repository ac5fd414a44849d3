"""Jobs whose clients leave, and a daemon told to stop while jobs run."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from cuprumd.backend import StreamBackend
from tests.daemon_harness import (
    Daemon,
    RawConnection,
    job,
    start_daemon,
    wait_for,
)
from tests.helpers import pid_alive


def running_children(daemon: Daemon, count: int) -> list[int]:
    assert wait_for(lambda: len(daemon.children()) >= count), daemon.children()
    return daemon.children()


def test_run_client_hangup_cancels_the_job_and_kills_its_processes(
    daemon: Daemon, stream_backend: StreamBackend
) -> None:
    before = set(daemon.children())
    conn = daemon.connect()
    conn.send({"op": "run", "job": job(["sleep", "30"], ["cat"], ["cat"])})
    pids = set(running_children(daemon, len(before) + 3)) - before
    assert len(pids) == 3
    conn.close()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=5)
    assert wait_for(
        lambda: any(
            e["event"] == "job.finished" and e["state"] == "cancelled"
            for e in daemon.events()
        )
    )
    assert daemon.request({"op": "ping"})["ok"]
    assert daemon.request({"op": "stats"})["result"]["running"] == 0


def test_half_closed_run_client_still_gets_its_result(python_daemon: Daemon) -> None:
    with python_daemon.connect() as conn:
        conn.send({"op": "run", "id": 1, "job": job(["sleep", "0.3"])})
        conn.sock.shutdown(socket.SHUT_WR)  # done sending, still listening
        reply = conn.read()
        assert reply["result"]["state"] == "succeeded"
        assert conn.read_line() == b""


def test_pipelined_request_behind_a_run_is_served_after_it(
    python_daemon: Daemon,
) -> None:
    with python_daemon.connect() as conn:
        conn.send({"op": "run", "id": 1, "job": job(["sleep", "0.2"])})
        conn.send({"op": "ping", "id": 2})
        assert conn.read()["id"] == 1
        assert conn.read()["id"] == 2


def test_hangup_while_a_pipelined_request_waits_still_cancels(
    python_daemon: Daemon,
) -> None:
    before = set(python_daemon.children())
    conn = python_daemon.connect()
    conn.send({"op": "run", "job": job(["sleep", "30"])})
    conn.send({"op": "ping"})
    pids = set(running_children(python_daemon, len(before) + 1)) - before
    conn.close()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=5)


def _run_in_thread(daemon: Daemon, doc: dict[str, Any], out: dict[str, Any]) -> None:
    def go() -> None:
        with RawConnection.open(daemon.socket_path) as conn:
            try:
                out["reply"] = conn.request(doc)
            except Exception as exc:  # reported by the test
                out["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    out["thread"] = thread


def test_sigterm_finishes_short_jobs_and_cancels_the_rest(
    stream_backend: StreamBackend,
) -> None:
    daemon = start_daemon(
        {
            "stream_backend": str(stream_backend),
            "shutdown_grace_seconds": 1.5,
            "max_concurrent_jobs": 2,
            "max_queued_jobs": 4,
        }
    )
    try:
        short: dict[str, Any] = {}
        long: dict[str, Any] = {}
        queued: dict[str, Any] = {}
        _run_in_thread(daemon, {"op": "run", "job": job(["sleep", "0.6"])}, short)
        _run_in_thread(
            daemon, {"op": "run", "job": job(["sleep", "30"], ["cat"])}, long
        )
        assert wait_for(
            lambda: daemon.request({"op": "stats"})["result"]["running"] == 2
        )
        _run_in_thread(daemon, {"op": "run", "job": job(["true"])}, queued)
        assert wait_for(
            lambda: daemon.request({"op": "stats"})["result"]["queue_depth"] == 1
        )
        started = time.monotonic()
        status = daemon.terminate(timeout=15)
        elapsed = time.monotonic() - started
        assert status == 0
        for out in (short, long, queued):
            out["thread"].join(5)
        assert short["reply"]["result"]["state"] == "succeeded"
        assert long["reply"]["result"]["state"] == "cancelled"
        assert queued["reply"]["result"]["state"] == "cancelled"
        assert elapsed < 1.5 + 1.0 + 2.0  # grace + kill grace + slack
        assert not daemon.socket_path.exists()
        events = [e["event"] for e in daemon.events()]
        assert "daemon.stopping" in events
        assert not daemon.children()
    finally:
        daemon.close()


def test_sigterm_when_idle_exits_at_once_and_removes_the_socket() -> None:
    daemon = start_daemon({"stream_backend": "python"})
    try:
        with daemon.connect() as idle:  # an idle client must not hold it up
            started = time.monotonic()
            assert daemon.terminate(timeout=10) == 0
            assert time.monotonic() - started < 3
            assert idle.read_line() == b""
        assert not daemon.socket_path.exists()
    finally:
        daemon.close()


def test_job_events_carry_metadata_but_never_data(python_daemon: Daemon) -> None:
    secret = "s3cr3t-payload"
    reply = python_daemon.request(
        {
            "op": "run",
            "job": job(["cat"], ["cat"], stdin=secret, env={"TOKEN": secret}),
        }
    )
    assert reply["result"]["stdout"] == secret
    job_id = reply["result"]["job_id"]
    assert wait_for(lambda: job_id in python_daemon.log())
    assert secret not in python_daemon.log()
    [finished] = [
        e
        for e in python_daemon.events()
        if e["event"] == "job.finished" and e["job_id"] == job_id
    ]
    for key in ("state", "duration_ms", "exit_codes", "bytes", "pumps", "peer_uid"):
        assert key in finished
    assert finished["bytes"] == len(secret)
