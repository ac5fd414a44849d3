"""The front door: careless and hostile clients against the real daemon.

Every case asserts three things: the client gets a clear error (or is
refused), the daemon stays up and answers a fresh ``ping`` quickly, and
nothing leaks (descriptors, children, memory within generous bounds).
Each test starts its own daemon, since most cases need their own limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cuprumd.backend import StreamBackend
from tests.daemon_harness import (
    Daemon,
    RawConnection,
    as_other_uid,
    daemon_uid,
    job,
    short_tmpdir,
    start_daemon,
    wait_for,
)
from tests.helpers import fd_count

MiB = 1 << 20
#: A uid that is neither root, nor the daemon's, nor the job user's.
OTHER_UID = 4243

# -- observing the daemon ----------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A numeric field of /proc/<pid>/status (kB for the Vm* ones)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def steady_fd_count(pid: int) -> int:
    """The descriptor count once two reads 0.1 s apart agree."""
    count = fd_count(pid)
    for _ in range(50):
        time.sleep(0.1)
        again = fd_count(pid)
        if again == count:
            return count
        count = again
    return count


def error_of(reply: dict[str, Any]) -> tuple[str, str]:
    """``(code, message)`` of an error reply, checking its shape."""
    assert reply["ok"] is False, reply
    assert set(reply) == {"id", "ok", "error"}, reply
    assert set(reply["error"]) == {"code", "message"}, reply
    assert isinstance(reply["error"]["message"], str)
    assert reply["error"]["message"]
    return reply["error"]["code"], reply["error"]["message"]


def read_to_end(conn: RawConnection, timeout: float = 10.0) -> bytes:
    """Everything the daemon sends until it closes the connection.

    A daemon that closes a connection holding unread input makes the
    kernel report ``ECONNRESET`` after the data: that is a close too.
    """
    conn.sock.settimeout(timeout)
    data = conn.buffer
    conn.buffer = b""
    while True:
        try:
            chunk = conn.sock.recv(1 << 16)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def closed_by_daemon(conn: RawConnection, timeout: float) -> bool:
    """Whether the daemon closes ``conn`` within ``timeout`` sending nothing.

    Raises AssertionError if the daemon sends anything.
    """
    ready, _, _ = select.select([conn.sock], [], [], timeout)
    if not ready:
        return False
    assert read_to_end(conn, 1.0) == b""
    return True


def send_quietly(conn: RawConnection, data: bytes) -> None:
    """Send what we can; a daemon that closes on us is not our failure."""
    try:
        conn.sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass


def ping_ms(conn: RawConnection, n: int) -> list[float]:
    """Round-trip times of ``n`` pings on ``conn``, in milliseconds."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        reply = conn.request({"op": "ping", "id": i})
        times.append((time.perf_counter() - start) * 1000)
        assert reply["ok"] is True
        assert reply["id"] == i
    return times


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@dataclass
class Subject:
    """A daemon under attack and what it looked like before."""

    daemon: Daemon
    fds: int
    rss: float

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def stats(self) -> dict[str, Any]:
        reply = self.daemon.request({"op": "stats"})
        assert reply["ok"] is True, reply
        result: dict[str, Any] = reply["result"]
        return result

    def assert_log_clean(self) -> None:
        log = self.daemon.log()
        assert "Traceback" not in log, log[-4000:]
        errors = [e for e in self.daemon.events() if e.get("level") == "error"]
        assert errors == []

    def assert_healthy(self, *, rss_slack_mib: float = 64.0) -> None:
        """Up, quick to answer, and back to the descriptors it started with."""
        daemon = self.daemon
        assert daemon.proc.poll() is None, daemon.log()[-4000:]
        start = time.monotonic()
        with RawConnection.open(daemon.socket_path, timeout=5.0) as conn:
            reply = conn.request({"op": "ping", "id": "health"})
        assert time.monotonic() - start < 2.0
        assert reply["ok"] is True, reply
        assert reply["id"] == "health"
        assert wait_for(lambda: not daemon.children(), timeout=10), daemon.children()
        assert wait_for(lambda: fd_count(self.pid) <= self.fds, timeout=10), (
            f"{fd_count(self.pid)} descriptors open, {self.fds} before"
        )
        assert rss_mib(self.pid) < self.rss + rss_slack_mib
        self.assert_log_clean()


@contextlib.contextmanager
def serving(
    settings: dict[str, Any] | None = None,
    workdir: Path | None = None,
    *,
    warm_up: bool = True,
) -> Iterator[Subject]:
    """A fresh daemon, warmed up with one job, then measured."""
    daemon = start_daemon(
        {"stream_backend": "python", **(settings or {})}, workdir=workdir
    )
    try:
        if warm_up:
            assert daemon.request({"op": "run", "job": job(["true"])})["ok"] is True
        assert wait_for(lambda: not daemon.children())
        pid = daemon.proc.pid
        subject = Subject(daemon, steady_fd_count(pid), rss_mib(pid))
        yield subject
        assert daemon.terminate() == 0, daemon.log()[-4000:]
    finally:
        daemon.close()


def shared_workdir() -> Path:
    """A daemon directory another uid can reach the socket in."""
    workdir = short_tmpdir()
    workdir.chmod(0o755)
    return workdir


# -- malformed input -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"ping","id":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"op":"ping","id":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b"[" * 100_000,
    ],
    ids=["arrays", "objects", "unterminated"],
)
def test_json_nested_100000_deep(line: bytes) -> None:
    with serving() as subject:
        with subject.daemon.connect() as conn:
            reply = conn.request_line(line)
            assert reply["id"] is None
            assert error_of(reply)[0] == "bad_request"
            # one reply only, and the connection still works
            assert conn.request({"op": "ping", "id": "next"})["id"] == "next"
        subject.assert_healthy()


@pytest.mark.parametrize(
    "line",
    [
        b'{"op":"ping","id":1e400}',
        b'{"op":"ping","id":-1e400}',
        b'{"op":"ping","id":NaN}',
        b'{"op":"ping","id":Infinity}',
        b'{"op":"ping","id":-Infinity}',
        b'{"op":"wait","job_id":"0123456789abcdef","timeout":1e400}',
        b'{"op":"run","job":{"stages":[{"argv":["true"]}],"timeout":Infinity}}',
    ],
)
def test_numbers_json_cannot_hold(line: bytes) -> None:
    with serving() as subject:
        with subject.daemon.connect() as conn:
            reply = conn.request_line(line)
            assert reply["id"] is None  # the request could not be read
            assert error_of(reply)[0] == "bad_request"
            assert conn.request({"op": "ping"})["ok"] is True
            assert subject.stats()["accepted"] == 1  # the warm-up job only
        subject.assert_healthy()


def test_a_timeout_of_1e18_is_above_max_timeout_seconds() -> None:
    with serving({"max_timeout_seconds": 60.0}) as subject:
        for timeout in (1e18, 60.5):
            reply = subject.daemon.request(
                {"op": "run", "id": "t", "job": job(["true"], timeout=timeout)}
            )
            assert reply["id"] == "t"
            code, message = error_of(reply)
            assert code == "bad_request"
            assert "max_timeout_seconds" in message
        assert subject.stats()["accepted"] == 1
        subject.assert_healthy()


def test_duplicate_keys_are_refused_and_run_nothing() -> None:
    line = (
        b'{"op":"run","job":{"stages":[{"argv":["rm","x"]}],'
        b'"stages":[{"argv":["true"]}]}}'
    )
    with serving() as subject:
        with subject.daemon.connect() as conn:
            for doc in (
                line,
                b'{"id":1,"id":2,"op":"ping"}',
                b'{"op":"ping","op":"stats"}',
            ):
                reply = conn.request_line(doc)
                assert reply["id"] is None
                code, message = error_of(reply)
                assert code == "bad_request"
                assert "duplicate" in message
            stats = subject.stats()
            assert stats["accepted"] == 1
            assert stats["jobs"]["succeeded"] == 1
            assert not any(e["event"] == "job.accepted" and e["argv0s"] != ["true"]
                           for e in subject.daemon.events())  # fmt: skip
        subject.assert_healthy()


def test_a_frame_above_max_request_bytes() -> None:
    with serving({"max_request_bytes": 65536}) as subject:
        conn = subject.daemon.connect()
        with conn:
            payload = json.dumps({"op": "run", "job": job(["cat"], stdin="x" * MiB)})
            send_quietly(conn, payload.encode() + b"\n")
            data = read_to_end(conn)
        lines = data.splitlines()
        assert len(lines) == 1, data[:500]
        reply = json.loads(lines[0])
        assert reply["id"] is None
        assert error_of(reply)[0] == "frame_too_large"
        assert subject.stats()["accepted"] == 1
        subject.assert_healthy()


def stages_request(count: int) -> bytes:
    spec = {"stages": [{"argv": ["true"]}] * count}
    line = json.dumps({"op": "run", "id": "many", "job": spec}).encode()
    assert len(line) < 8 * MiB  # within the default frame limit
    return line


def test_more_stages_than_max_stages_is_answered_fast() -> None:
    with serving() as subject:
        with subject.daemon.connect() as conn:
            start = time.monotonic()
            reply = conn.request_line(stages_request(30_000))
            assert time.monotonic() - start < 5.0
            assert reply["id"] == "many"
            code, message = error_of(reply)
            assert code == "bad_request"
            assert "max_stages" in message
            assert subject.stats()["accepted"] == 1
        subject.assert_healthy()


def test_a_hundred_thousand_stages_are_refused_fast() -> None:
    with serving() as subject:
        with subject.daemon.connect() as conn:
            start = time.monotonic()
            reply = conn.request_line(stages_request(100_000))
            assert time.monotonic() - start < 5.0
            assert reply["id"] in (None, "many")
            assert error_of(reply)[0] == "bad_request"
            assert conn.request({"op": "ping", "id": "next"})["id"] == "next"
            assert subject.stats()["accepted"] == 1
        subject.assert_healthy()


def test_a_peer_that_is_not_admitted_gets_one_line_and_eof() -> None:
    refused = {"allowed_uids": [os.getuid() + 4242], "allowed_gids": []}
    with serving(refused, warm_up=False) as subject:
        conn = subject.daemon.connect()
        with conn:
            # an unterminated 4 MiB line, sent before the daemon even accepts
            sender = threading.Thread(
                target=send_quietly,
                args=(conn, b'{"op":"ping","id":"' + b"x" * 4 * MiB),
            )
            sender.start()
            data = read_to_end(conn)
            sender.join(30)
            assert not sender.is_alive()
        assert data.count(b"\n") == 1, data[:500]
        assert data.endswith(b"\n")
        reply = json.loads(data)
        assert reply["id"] is None
        assert error_of(reply)[0] == "forbidden"
        assert subject.daemon.proc.poll() is None
        assert wait_for(lambda: fd_count(subject.pid) <= subject.fds)
        # forbidden peers cannot ping, so health is checked from the outside
        assert not subject.daemon.children()
        assert rss_mib(subject.pid) < subject.rss + 32
        assert "Traceback" not in subject.daemon.log()


# -- output bounds ----------------------------------------------------------------


def test_output_beyond_max_output_bytes_ends_the_job(
    stream_backend: StreamBackend,
) -> None:
    settings = {"max_output_bytes": 65536, "stream_backend": str(stream_backend)}
    with serving(settings) as subject:
        start = time.monotonic()
        reply = subject.daemon.request({"op": "run", "job": job(["yes"], timeout=60)})
        assert time.monotonic() - start < 10.0  # not its 60 s timeout
        result = reply["result"]
        assert result["state"] != "timed_out"
        assert result["stdout_truncated"] is True
        assert len(result["stdout"]) == 65536
        assert result["stdout"][:4] == "y\ny\n"
        subject.assert_healthy()


def test_stdout_and_every_stderr_share_max_output_bytes(
    stream_backend: StreamBackend,
) -> None:
    cap = 65536
    # stage 0 writes ~50 kB of complaints, then endless zeros; stage 1 passes
    # the zeros on, after complaining itself: far more than the cap in all.
    missing = [f"/nonexistent/{n:05d}" for n in range(1000)]
    spec = job(
        ["cat", *missing, "/dev/zero"],
        ["cat", *missing[:200], "-"],
        timeout=60,
    )
    settings = {"max_output_bytes": cap, "stream_backend": str(stream_backend)}
    with serving(settings) as subject:
        start = time.monotonic()
        result = subject.daemon.request({"op": "run", "job": spec})["result"]
        assert time.monotonic() - start < 10.0
        stderr = [stage["stderr"] for stage in result["stages"]]
        total = len(result["stdout"]) + sum(len(s) for s in stderr)
        assert total == cap, [len(result["stdout"]), *map(len, stderr)]
        assert all(s.startswith("cat: /nonexistent/00000") for s in stderr), [
            s[:40] for s in stderr
        ]
        assert result["stdout_truncated"] is True  # the zeros never end
        subject.assert_healthy()


def test_a_client_that_pipelines_large_runs_and_never_reads(
    stream_backend: StreamBackend,
) -> None:
    size = 8 * MiB
    settings = {"max_output_bytes": size, "stream_backend": str(stream_backend)}
    spec = job(["head", "-c", str(size), "/dev/zero"], output_encoding="base64")
    with serving(settings) as subject:
        reply_size = (size * 4 // 3) / MiB  # one base64 reply, in MiB
        greedy = subject.daemon.connect()
        lines = b"".join(
            json.dumps({"op": "run", "id": n, "job": spec}).encode() + b"\n"
            for n in range(3)
        )
        greedy.sock.sendall(lines)
        # the first job runs; its reply waits for a reader that never comes
        assert wait_for(lambda: subject.stats()["jobs"]["succeeded"] >= 2, timeout=20)
        time.sleep(1.0)  # give a daemon that would run ahead the time to
        stats = subject.stats()
        assert stats["accepted"] == 2, stats  # the warm-up and one of three
        assert stats["running"] == 0
        growth = rss_mib(subject.pid) - subject.rss
        assert growth < 2.5 * reply_size + 32, f"RSS grew {growth:.0f} MiB"
        with subject.daemon.connect() as other:  # others are served meanwhile
            assert other.request({"op": "ping"})["ok"] is True
        greedy.close()
        assert wait_for(lambda: subject.stats()["connections"] == 1)
        subject.assert_healthy(rss_slack_mib=2.5 * reply_size + 32)


# -- retention ---------------------------------------------------------------


def test_unfetched_submits_are_bounded_by_max_retained_jobs() -> None:
    # small reservations, so that max_retained_bytes is not what refuses
    settings = {"max_retained_jobs": 50, "max_output_bytes": 65536}
    with serving(settings) as subject:
        with subject.daemon.connect() as conn:
            accepted, refused = [], 0
            for n in range(200):
                reply = conn.request({"op": "submit", "id": n, "job": job(["true"])})
                assert reply["id"] == n
                if reply["ok"]:
                    accepted.append(reply["result"]["job_id"])
                    continue
                code, message = error_of(reply)
                assert code == "busy"
                assert "max_retained_jobs" in message
                refused += 1
            assert len(accepted) == 50
            assert refused == 150
            assert wait_for(lambda: subject.stats()["jobs"]["succeeded"] == 51)
            stats = subject.stats()
            assert stats["retained"] == 50
            # fetching one frees one place
            fetched = conn.request({"op": "wait", "job_id": accepted[0]})
            assert fetched["result"]["state"] == "succeeded"
            assert conn.request({"op": "submit", "job": job(["true"])})["ok"] is True
            assert error_of(conn.request({"op": "submit", "job": job(["true"])}))[
                0
            ] == ("busy")
        subject.assert_healthy()


def test_max_retained_bytes_is_reserved_at_admission() -> None:
    cap = 65536
    settings = {
        "max_output_bytes": cap,
        "max_retained_bytes": 3 * cap,
        "max_concurrent_jobs": 8,
    }
    with serving(settings) as subject:
        with subject.daemon.connect() as conn:

            def submit(*argv: str) -> dict[str, Any]:
                return conn.request(
                    {"op": "submit", "job": job(list(argv), timeout=30)}
                )

            # three running jobs reserve the whole budget before writing a byte
            sleepers = [submit("sleep", "1")["result"]["job_id"] for _ in range(3)]
            code, message = error_of(submit("true"))
            assert code == "busy"
            assert "max_retained_bytes" in message
            # run is not retained, so it is not refused
            ran = conn.request({"op": "run", "job": job(["echo", "hi"])})
            assert ran["result"]["stdout"] == "hi\n"
            for job_id in sleepers:  # once ended, they hold what they wrote: nothing
                assert wait_for(
                    lambda j=job_id: (
                        conn.request({"op": "status", "job_id": j})["result"]["state"]
                        == "succeeded"
                    ),
                    timeout=10,
                )
            writers = [
                submit("head", "-c", str(cap), "/dev/zero")["result"]["job_id"]
                for _ in range(3)
            ]
            for job_id in writers:
                assert wait_for(
                    lambda j=job_id: (
                        conn.request({"op": "status", "job_id": j})["result"]["state"]
                        == "succeeded"
                    ),
                    timeout=10,
                )
            assert subject.stats()["retained_bytes"] == 3 * cap
            code, message = error_of(submit("true"))
            assert code == "busy"
            assert "max_retained_bytes" in message
            fetched = conn.request({"op": "wait", "job_id": writers[0]})["result"]
            assert len(fetched["stdout"]) == cap
            assert submit("true")["ok"] is True
        subject.assert_healthy()


# -- per-uid job limits -----------------------------------------------------------


PER_UID = {
    "max_concurrent_jobs": 4,
    "max_running_jobs_per_uid": 1,
    "max_queued_jobs_per_uid": 1,
    "allowed_uids": [0, daemon_uid(), OTHER_UID],
    "socket_mode": "0666",
}


def test_max_running_jobs_per_uid_queues_the_second_job() -> None:
    with serving(PER_UID, workdir=shared_workdir()) as subject:
        with subject.daemon.connect() as conn:
            first = conn.request({"op": "submit", "job": job(["sleep", "1"])})
            second = conn.request({"op": "submit", "job": job(["sleep", "1"])})
            ids = [first["result"]["job_id"], second["result"]["job_id"]]
            states = [
                conn.request({"op": "status", "job_id": i})["result"]["state"]
                for i in ids
            ]
            assert states == ["running", "queued"]
            # another uid is not held up by our limit
            other = as_other_uid(
                OTHER_UID,
                subject.daemon.socket_path,
                [
                    {"op": "submit", "job": job(["sleep", "0.5"])},
                    {"op": "ping"},
                ],
            )
            assert other[0]["ok"] is True, other
            other_id = other[0]["result"]["job_id"]
            status = conn.request({"op": "status", "job_id": other_id})["result"]
            assert status["state"] in ("running", "succeeded")
            results = [conn.request({"op": "wait", "job_id": i})["result"] for i in ids]
            assert [r["state"] for r in results] == ["succeeded", "succeeded"]
            assert results[1]["started_at"] >= results[0]["finished_at"]
            conn.request({"op": "wait", "job_id": other_id})
        subject.assert_healthy()


def test_max_queued_jobs_per_uid_refuses_with_busy() -> None:
    with serving(PER_UID, workdir=shared_workdir()) as subject:
        with subject.daemon.connect() as conn:
            ids = [
                conn.request({"op": "submit", "job": job(["sleep", "30"])})["result"][
                    "job_id"
                ]
                for _ in range(2)
            ]
            reply = conn.request({"op": "submit", "id": 3, "job": job(["true"])})
            assert reply["id"] == 3
            code, message = error_of(reply)
            assert code == "busy"
            assert "max_queued_jobs_per_uid" in message
            # the global queue is not full: another uid still gets in
            other = as_other_uid(
                OTHER_UID,
                subject.daemon.socket_path,
                [{"op": "run", "job": job(["echo", "other"])}],
            )
            assert other[0]["result"]["stdout"] == "other\n", other
            for job_id in ids:
                conn.request({"op": "cancel", "job_id": job_id})
        subject.assert_healthy()


# -- connection limits --------------------------------------------------------------


def assert_refused_busy(conn: RawConnection, setting: str) -> None:
    """One ``busy`` line naming ``setting``, then EOF; input never read."""
    send_quietly(conn, json.dumps({"op": "submit", "job": job(["true"])}).encode())
    send_quietly(conn, b"\n")
    data = read_to_end(conn)
    assert data.count(b"\n") == 1, data[:500]
    reply = json.loads(data)
    assert reply["id"] is None
    code, message = error_of(reply)
    assert code == "busy"
    assert setting in message


def open_pinged(daemon: Daemon, n: int) -> list[RawConnection]:
    conns = []
    for i in range(n):
        conn = daemon.connect()
        conns.append(conn)
        assert conn.request({"op": "ping", "id": i})["ok"] is True
    return conns


def only_one_connection(subject: Subject) -> bool:
    """Whether the connection asking is the only one (refusals count as no)."""
    try:
        return bool(subject.stats()["connections"] == 1)
    except (AssertionError, KeyError, EOFError, OSError):
        return False


def test_max_connections() -> None:
    with serving({"max_connections": 4}) as subject:
        daemon = subject.daemon
        conns = open_pinged(daemon, 4)
        try:
            with daemon.connect() as extra:
                assert_refused_busy(extra, "max_connections")
            conns.pop().close()

            def place_again() -> bool:
                conn = daemon.connect()
                try:
                    reply = conn.request({"op": "ping", "id": "again"})
                except (EOFError, OSError):
                    reply = {"ok": False}
                if not reply["ok"]:
                    conn.close()
                    return False
                conns.append(conn)
                return True

            assert wait_for(place_again, timeout=5)
            with daemon.connect() as extra:
                assert_refused_busy(extra, "max_connections")
        finally:
            for conn in conns:
                conn.close()
        assert wait_for(lambda: only_one_connection(subject), timeout=5)
        assert subject.stats()["accepted"] == 1  # nothing refused was read
        subject.assert_healthy()


def test_max_connections_per_uid() -> None:
    settings = {
        "max_connections_per_uid": 3,
        "allowed_uids": [0, daemon_uid(), OTHER_UID],
        "socket_mode": "0666",
    }
    with serving(settings, workdir=shared_workdir()) as subject:
        daemon = subject.daemon
        conns = open_pinged(daemon, 3)
        try:
            with daemon.connect() as extra:
                assert_refused_busy(extra, "max_connections_per_uid")
            # another uid has places of its own
            other = as_other_uid(OTHER_UID, daemon.socket_path, [{"op": "ping"}])
            assert other[0]["ok"] is True, other
        finally:
            for conn in conns:
                conn.close()
        assert wait_for(lambda: only_one_connection(subject), timeout=5)
        with contextlib.ExitStack() as stack:  # the places are free again
            for conn in open_pinged(daemon, 3):
                stack.callback(conn.close)
        assert subject.stats()["accepted"] == 1
        subject.assert_healthy()


# -- idle connections ----------------------------------------------------------------


IDLE = 1.0


def test_an_idle_connection_is_closed() -> None:
    with serving({"idle_timeout_seconds": IDLE}) as subject:
        with subject.daemon.connect() as silent, subject.daemon.connect() as pinged:
            start = time.monotonic()
            assert pinged.request({"op": "ping"})["ok"] is True
            assert closed_by_daemon(pinged, IDLE * 4 + 2)
            assert closed_by_daemon(silent, 2.0)
            assert time.monotonic() - start >= IDLE * 0.9
        assert wait_for(lambda: fd_count(subject.pid) <= subject.fds)
        subject.assert_healthy()


def test_a_long_run_or_wait_is_not_an_idle_connection() -> None:
    nap = job(["sleep", str(IDLE * 2.5)])
    with serving({"idle_timeout_seconds": IDLE}) as subject:
        with subject.daemon.connect() as running, subject.daemon.connect() as waiting:
            job_id = waiting.request({"op": "submit", "job": nap})["result"]["job_id"]
            running.send({"op": "run", "job": nap})
            waited = waiting.request({"op": "wait", "job_id": job_id})
            assert waited["result"]["state"] == "succeeded"
            assert running.read()["result"]["state"] == "succeeded"
            for conn in (running, waiting):
                assert conn.request({"op": "ping", "id": "after"})["id"] == "after"
        subject.assert_healthy()


def test_a_trickled_partial_frame_does_not_keep_a_connection_alive() -> None:
    with serving({"idle_timeout_seconds": IDLE}) as subject:
        with subject.daemon.connect() as conn:
            assert conn.request({"op": "ping"})["ok"] is True
            start = time.monotonic()
            conn.sock.sendall(b'{"op":"ping","id":"')
            closed_at = None
            while time.monotonic() - start < IDLE * 4 + 2:
                if closed_by_daemon(conn, 0.1):
                    closed_at = time.monotonic() - start
                    break
                try:
                    conn.sock.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    closed_at = time.monotonic() - start
                    break
            assert closed_at is not None, "a trickling client kept its connection"
            assert closed_at < IDLE + 2.0
        subject.assert_healthy()


# -- slow and large partial frames -----------------------------------------------------


def pings_while(action: Callable[[], None], daemon: Daemon) -> list[float]:
    """Ping round trips measured while ``action`` runs in a thread (at
    least 50 of them, and for as long as it runs)."""
    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            action()
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=guarded)
    times: list[float] = []
    with daemon.connect() as conn:
        conn.request({"op": "ping"})
        thread.start()
        try:
            while thread.is_alive() or len(times) < 50:
                times += ping_ms(conn, 10)
        finally:
            thread.join(60)
    assert not failures, failures
    return times


def send_all_you_can(conns: list[RawConnection], data: bytes) -> int:
    """Send ``data`` on every connection, without blocking, until the
    daemon has taken it all or stopped reading for a second; bytes sent."""
    pending = dict.fromkeys(range(len(conns)), data)
    for conn in conns:
        conn.sock.setblocking(False)
    sent_total, stalled = 0, 0
    while pending and stalled < 20:
        progress = False
        for index, rest in list(pending.items()):
            try:
                sent = conns[index].sock.send(rest[: 1 << 16])
            except BlockingIOError:
                continue
            progress = True
            sent_total += sent
            if rest[sent:]:
                pending[index] = rest[sent:]
            else:
                del pending[index]
        stalled = 0 if progress else stalled + 1
        if not progress:
            time.sleep(0.05)
    return sent_total


def test_a_slow_multi_mib_line_does_not_slow_others() -> None:
    with serving() as subject:
        slow = subject.daemon.connect()
        chunk = b"x" * (64 << 10)

        def trickle() -> None:
            slow.sock.sendall(b'{"op":"ping","id":"')
            for _ in range(64):  # 4 MiB, never terminated
                slow.sock.sendall(chunk)
                time.sleep(0.01)

        with slow:
            times = pings_while(trickle, subject.daemon)
            assert p99(times) < 250, sorted(times)[-5:]
            assert rss_mib(subject.pid) < subject.rss + 64
        subject.assert_healthy()


def test_many_connections_holding_large_partial_frames() -> None:
    limit = 2 * MiB
    count, size = 48, limit - (64 << 10)  # most of a frame each, never ended
    with serving({"max_request_bytes": limit}) as subject:
        holders = [subject.daemon.connect() for _ in range(count)]
        partial = b'{"op":"ping","id":"' + b"y" * size
        sent: list[int] = []
        try:
            times = pings_while(
                lambda: sent.append(send_all_you_can(holders, partial)),
                subject.daemon,
            )
            assert p99(times) < 250, sorted(times)[-5:]
            growth = rss_mib(subject.pid) - subject.rss
            # far less than the ~90 MiB the clients tried to make it hold
            assert growth < 48, f"RSS grew {growth:.0f} MiB; {sent[0]} bytes sent"
            with subject.daemon.connect() as conn:
                times = ping_ms(conn, 50)
            assert p99(times) < 250, sorted(times)[-5:]
        finally:
            for conn in holders:
                conn.close()
        assert wait_for(lambda: subject.stats()["connections"] == 1, timeout=10)
        # whatever the holders had taken is free again: large frames pass
        with subject.daemon.connect() as conn:
            conn.sock.settimeout(10)
            for n in range(10):
                big = {"op": "ping", "id": "z" * (limit - 100)}
                assert conn.request(big)["ok"] is True, n
        subject.assert_healthy()


# -- signals ------------------------------------------------------------------------


def test_sighup_keeps_the_daemon_and_its_jobs() -> None:
    with serving() as subject:
        with subject.daemon.connect() as conn:
            job_id = conn.request({"op": "submit", "job": job(["sleep", "1"])})[
                "result"
            ]["job_id"]
            running = []

            def run_it() -> None:
                with subject.daemon.connect() as other:
                    running.append(
                        other.request({"op": "run", "job": job(["sleep", "1"])})
                    )

            runner = threading.Thread(target=run_it)
            runner.start()
            assert wait_for(lambda: len(subject.daemon.children()) == 2)
            os.kill(subject.pid, signal.SIGHUP)
            assert conn.request({"op": "ping", "id": "hup"})["id"] == "hup"
            result = conn.request({"op": "wait", "job_id": job_id, "timeout": 10})
            assert result["result"]["state"] == "succeeded"
            runner.join(10)
            assert running[0]["result"]["state"] == "succeeded"
            assert subject.daemon.proc.poll() is None
        subject.assert_healthy()


def test_a_connection_reset_mid_request_is_harmless() -> None:
    with serving() as subject:
        for _ in range(20):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(subject.daemon.socket_path))
            sock.sendall(b'{"op":"run","job":{"stages":[{"argv":["sleep","30"]}]}}\n')
            sock.close()
        assert wait_for(lambda: subject.stats()["connections"] == 1, timeout=10)
        subject.assert_healthy()
