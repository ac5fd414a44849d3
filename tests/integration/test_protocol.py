"""Every op and every error code, over a raw socket, against the real daemon.

After each bad request the daemon must still answer, and a client that was
already connected must not notice anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from cuprumd.backend import StreamBackend
from tests.daemon_harness import Daemon, RawConnection, job, start_daemon, wait_for

MAX_REQUEST = 4096
DAEMON_SETTINGS = {"max_request_bytes": MAX_REQUEST, "max_stages": 3}


@pytest.fixture
def bystander(python_daemon: Daemon) -> Iterator[RawConnection]:
    """A client connected before the misbehaviour, checked after it."""
    with python_daemon.connect() as conn:
        assert conn.request({"op": "ping", "id": "before"})["ok"]
        yield conn
        reply = conn.request({"op": "ping", "id": "after"})
        assert reply == {"id": "after", "ok": True, "result": reply["result"]}
        assert python_daemon.request({"op": "ping"})["ok"]
        assert python_daemon.proc.poll() is None


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert set(reply) == {"id", "ok", "error"}
    assert set(reply["error"]) == {"code", "message"}
    assert reply["error"]["message"]
    code: str = reply["error"]["code"]
    return code


# -- the ops -----------------------------------------------------------------


def test_ping(python_daemon: Daemon) -> None:
    reply = python_daemon.request({"op": "ping", "id": {"any": ["json", 1]}})
    assert reply["id"] == {"any": ["json", 1]}
    assert reply["ok"] is True
    result = reply["result"]
    assert set(result) == {"version", "protocol", "stream_backend", "pid", "features"}
    assert result["features"] == ["fds"]
    assert result["protocol"] == 1
    assert result["pid"] == python_daemon.proc.pid


def test_requests_on_one_connection_are_answered_in_order(
    python_daemon: Daemon,
) -> None:
    with python_daemon.connect() as conn:
        lines = b"".join(
            json.dumps({"op": "ping", "id": n}).encode() + b"\n" for n in range(20)
        )
        conn.sock.sendall(lines)
        assert [conn.read()["id"] for _ in range(20)] == list(range(20))


def test_run(daemon: Daemon, stream_backend: StreamBackend) -> None:
    reply = daemon.request(
        {"op": "run", "id": 7, "job": job(["printf", "b\\na\\n"], ["tac"])}
    )
    assert reply["id"] == 7
    result = reply["result"]
    assert result["state"] == "succeeded"
    assert result["stdout"] == "a\nb\n"
    assert result["stream_backend"] == str(stream_backend)
    assert [t["bytes"] for t in result["transfers"]] == [4]


def test_submit_status_wait(python_daemon: Daemon) -> None:
    with python_daemon.connect() as conn:
        submitted = conn.request({"op": "submit", "job": job(["sleep", "0.3"])})
        job_id = submitted["result"]["job_id"]
        status = conn.request({"op": "status", "job_id": job_id})["result"]
        assert status == {"job_id": job_id, "state": "running"}
        listed = conn.request({"op": "list"})["result"]["jobs"]
        assert {
            "job_id": job_id,
            "state": "running",
            "argv0s": ["sleep"],
            "uid": os.getuid(),
        } in [{k: v for k, v in j.items() if k not in TIMES} for j in listed]
        result = conn.request({"op": "wait", "job_id": job_id, "timeout": 10})
        assert result["result"]["state"] == "succeeded"
        assert result["result"]["job_id"] == job_id
        # fetched by wait: gone
        gone = conn.request({"op": "status", "job_id": job_id})
        assert error_of(gone) == "not_found"


def test_submitted_result_is_kept_until_fetched(python_daemon: Daemon) -> None:
    job_id = python_daemon.request({"op": "submit", "job": job(["true"])})["result"][
        "job_id"
    ]
    assert wait_for(
        lambda: (
            python_daemon.request({"op": "status", "job_id": job_id})["result"]["state"]
            == "succeeded"
        )
    )
    # another connection, later: still there
    reply = python_daemon.request({"op": "wait", "job_id": job_id})
    assert reply["result"]["state"] == "succeeded"


def test_cancel_a_running_job(python_daemon: Daemon) -> None:
    with python_daemon.connect() as conn:
        job_id = conn.request({"op": "submit", "job": job(["sleep", "30"])})["result"][
            "job_id"
        ]
        reply = conn.request({"op": "cancel", "id": "c", "job_id": job_id})
        assert reply == {
            "id": "c",
            "ok": True,
            "result": {"job_id": job_id, "state": "cancelled"},
        }
        result = conn.request({"op": "wait", "job_id": job_id})["result"]
        assert result["state"] == "cancelled"
        assert result["stages"][0]["signal"] == "SIGTERM"


TIMES = ("accepted_at", "finished_at")


def test_stats(python_daemon: Daemon) -> None:
    python_daemon.request({"op": "run", "job": job(["echo", "hi"], ["cat"])})
    result = python_daemon.request({"op": "stats"})["result"]
    assert set(result["jobs"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "error",
        "lost",
    }
    assert result["jobs"]["succeeded"] >= 1
    assert result["bytes"]["python"] >= 3
    assert set(result["bytes"]) == {"python", "rust-splice", "rust-copy"}
    assert result["queue_depth"] == 0
    assert result["stream_backend"] == "python"


# -- the error codes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"this is not json", "bad_request"),
        (b"\xff\xfe{}", "bad_request"),
        (b"[1, 2, 3]", "bad_request"),
        (b'"ping"', "bad_request"),
        (b'{"id": 1}', "bad_request"),
        (b'{"op": 5}', "bad_request"),
        (b'{"op": "ping", "id": NaN}', "bad_request"),
        (b'{"op": "launch"}', "unknown_op"),
    ],
)
def test_unparseable_requests(
    python_daemon: Daemon, bystander: RawConnection, line: bytes, code: str
) -> None:
    with python_daemon.connect() as conn:
        reply = conn.request_line(line)
        assert error_of(reply) == code
        # the connection stays usable
        assert conn.request({"op": "ping", "id": 2})["ok"] is True


@pytest.mark.parametrize(
    "request_doc",
    [
        {"op": "ping", "extra": True},
        {"op": "run", "job": {"stages": [{"argv": "sort"}]}},
        {"op": "run", "job": {"stages": []}},
        {"op": "run", "job": {"stages": [{"argv": ["cat"]}], "shell": True}},
        {"op": "run", "job": {"stages": [{"argv": ["cat"]}], "timeout": "5"}},
        {"op": "run", "job": {"stages": [{"argv": ["cat"]}], "env": {"A": 1}}},
        {"op": "submit", "job": job(["cat"], ["cat"], ["cat"], ["cat"])},
        {"op": "wait", "job_id": "x", "timeout": "soon"},
        {"op": "status", "job_id": 12},
        {"op": "status"},
    ],
    ids=[
        "unknown-field",
        "argv-not-list",
        "no-stages",
        "unknown-job-field",
        "timeout-string",
        "env-int",
        "too-many-stages",
        "wait-timeout-string",
        "job-id-int",
        "missing-job-id",
    ],
)
def test_bad_requests_echo_the_id(
    python_daemon: Daemon, bystander: RawConnection, request_doc: dict[str, Any]
) -> None:
    with python_daemon.connect() as conn:
        reply = conn.request({**request_doc, "id": "bad"})
        assert reply["id"] == "bad"
        assert error_of(reply) == "bad_request"
        assert conn.request({"op": "ping"})["ok"] is True


def test_oversized_frame_gets_a_reply_then_the_connection_closes(
    python_daemon: Daemon, bystander: RawConnection
) -> None:
    with python_daemon.connect() as conn:
        big = {"op": "run", "job": job(["cat"], stdin="x" * (MAX_REQUEST * 4))}
        try:
            conn.send(big)
        except BrokenPipeError:
            pass
        reply = conn.read()
        assert reply["id"] is None
        assert error_of(reply) == "frame_too_large"
        assert conn.read_line() == b""  # closed


def test_a_frame_just_under_the_limit_is_accepted(python_daemon: Daemon) -> None:
    doc = {"op": "ping", "id": ""}
    padding = MAX_REQUEST - len(json.dumps(doc).encode())
    doc["id"] = "p" * padding
    line = json.dumps(doc).encode()
    assert len(line) == MAX_REQUEST
    with python_daemon.connect() as conn:
        assert conn.request_line(line)["ok"] is True


def test_program_not_allowed(python_daemon: Daemon, bystander: RawConnection) -> None:
    before = set(python_daemon.children())
    for argv0 in ("rm", "/bin/cat", "./cat", "bash"):
        reply = python_daemon.request(
            {"op": "run", "id": argv0, "job": job(["cat"], [argv0, "-rf", "/"])}
        )
        assert error_of(reply) == "program_not_allowed"
        assert argv0 in reply["error"]["message"]
    assert set(python_daemon.children()) <= before  # nothing was spawned
    rejected = [e for e in python_daemon.events() if e["event"] == "job.rejected"]
    assert rejected
    assert rejected[-1]["peer_uid"] == os.getuid()


def test_unknown_job_ids(python_daemon: Daemon, bystander: RawConnection) -> None:
    for op in ("status", "wait", "cancel"):
        reply = python_daemon.request({"op": op, "job_id": "0123456789abcdef"})
        assert error_of(reply) == "not_found"


def test_wait_timeout(python_daemon: Daemon, bystander: RawConnection) -> None:
    with python_daemon.connect() as conn:
        job_id = conn.request({"op": "submit", "job": job(["sleep", "30"])})["result"][
            "job_id"
        ]
        reply = conn.request({"op": "wait", "job_id": job_id, "timeout": 0.1})
        assert error_of(reply) == "timeout"
        conn.request({"op": "cancel", "job_id": job_id})


def test_forbidden_peer() -> None:
    other_uid = os.getuid() + 4242
    daemon = start_daemon(
        {"stream_backend": "python", "allowed_uids": [other_uid], "allowed_gids": []}
    )
    try:
        with daemon.connect() as waiting, daemon.connect() as conn:
            reply = conn.request({"op": "run", "id": 9, "job": job(["true"])})
            assert reply["id"] is None  # refused on accept, before any parsing
            assert error_of(reply) == "forbidden"
            assert conn.read_line() == b""  # and the connection is closed
            assert error_of(waiting.read()) == "forbidden"  # without asking
        assert daemon.proc.poll() is None
        assert not daemon.children()
        assert any(
            e["event"] == "peer.refused" and e["code"] == "forbidden"
            for e in daemon.events()
        )
    finally:
        assert daemon.terminate() == 0
        daemon.close()


def test_busy_when_the_queue_is_full() -> None:
    daemon = start_daemon(
        {"stream_backend": "python", "max_concurrent_jobs": 1, "max_queued_jobs": 0}
    )
    try:
        with daemon.connect() as conn:
            first = conn.request({"op": "submit", "job": job(["sleep", "30"])})
            job_id = first["result"]["job_id"]
            reply = daemon.request({"op": "run", "id": "b", "job": job(["true"])})
            assert error_of(reply) == "busy"
            assert daemon.request({"op": "stats"})["result"]["running"] == 1
            conn.request({"op": "cancel", "job_id": job_id})
            after = daemon.request({"op": "run", "job": job(["true"])})
            assert after["result"]["state"] == "succeeded"
    finally:
        assert daemon.terminate() == 0
        daemon.close()


def test_queued_jobs_run_in_turn() -> None:
    daemon = start_daemon(
        {"stream_backend": "python", "max_concurrent_jobs": 1, "max_queued_jobs": 2}
    )
    try:
        with daemon.connect() as conn:
            ids = [
                conn.request({"op": "submit", "job": job(["sleep", "0.2"])})["result"][
                    "job_id"
                ]
                for _ in range(3)
            ]
            states = [
                conn.request({"op": "status", "job_id": i})["result"]["state"]
                for i in ids
            ]
            assert states == ["running", "queued", "queued"]
            assert error_of(conn.request({"op": "submit", "job": job(["true"])})) == (
                "busy"
            )
            stats = conn.request({"op": "stats"})["result"]
            assert stats["queue_depth"] == 2
            # cancelling a queued job ends it at once
            cancelled = conn.request({"op": "cancel", "job_id": ids[2]})["result"]
            assert cancelled["state"] == "cancelled"
            results = [
                conn.request({"op": "wait", "job_id": i})["result"]["state"]
                for i in ids
            ]
            assert results == ["succeeded", "succeeded", "cancelled"]
    finally:
        assert daemon.terminate() == 0
        daemon.close()
