"""``cuprumctl`` end to end against a real daemon, and the sync client."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.client import Client, DaemonUnavailable
from cuprumd.errors import NotFound, ProgramNotAllowed
from cuprumd.models import JobState
from tests.daemon_harness import PYTHON, Daemon, daemon_env, daemon_uid, job

DAEMON_SETTINGS = {"programs": ["printf", "sort", "cat", "head", "yes", "sleep",
                                "false", "sh", "tr", "wc"]}  # fmt: skip


def ctl(
    daemon: Daemon | None, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = daemon_env()
    if daemon is not None:
        env["CUPRUM_SOCKET_PATH"] = str(daemon.socket_path)
    return subprocess.run(
        [PYTHON, "-m", "cuprumd.ctl", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_run_pipeline_prints_its_output(daemon: Daemon) -> None:
    done = ctl(daemon, "run", "--", "printf", "b\\na\\n", "|", "sort")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"a\nb\n"


def test_stdin_is_forwarded_and_binary_output_is_exact(daemon: Daemon) -> None:
    payload = bytes(range(256)) * 64
    done = ctl(daemon, "run", "--", "cat", "|", "cat", stdin=payload)
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload
    text = ctl(daemon, "run", "--", "tr", "a-z", "A-Z", stdin="héllo\n".encode())
    assert text.stdout == "HéLLO\n".encode()


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["sh", "-c", "exit 3", "|", "cat"], 3),
        (["cat", "|", "false"], 1),
        (["sh", "-c", "kill -9 $$"], 128 + 9),
        (["yes", "|", "head", "-n", "1"], 0),
    ],
    ids=["exit-code", "false", "signal", "sigpipe-upstream"],
)
def test_exit_status_follows_the_job(
    python_daemon: Daemon, argv: list[str], status: int
) -> None:
    assert ctl(python_daemon, "run", "-n", "--", *argv).returncode == status


def test_timeout_cancel_and_error_statuses(python_daemon: Daemon) -> None:
    timed = ctl(python_daemon, "run", "--timeout", "0.3", "--", "sleep", "10")
    assert timed.returncode == 124
    assert b"timed out" in timed.stderr
    refused = ctl(python_daemon, "run", "--", "rm", "-rf", "/tmp/x")
    assert refused.returncode == 1
    assert b"program_not_allowed" in refused.stderr


def test_json_prints_the_job_result(python_daemon: Daemon) -> None:
    done = ctl(
        python_daemon, "run", "--json", "--env", "A=1", "--", "printf", "%s", "x"
    )
    assert done.returncode == 0
    result = json.loads(done.stdout)
    assert result["state"] == "succeeded"
    assert result["stdout"] == "x"
    assert result["output_encoding"] == "utf-8"


def test_submit_status_wait_cancel_list_stats_ping(python_daemon: Daemon) -> None:
    submitted = ctl(python_daemon, "submit", "--", "sleep", "30")
    job_id = submitted.stdout.decode().strip()
    assert len(job_id) == 16
    assert ctl(python_daemon, "status", job_id).stdout.decode().split() == [
        job_id,
        "running",
    ]
    assert job_id in ctl(python_daemon, "list").stdout.decode()
    cancelled = ctl(python_daemon, "cancel", "--json", job_id)
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    assert ctl(python_daemon, "wait", job_id).returncode == 130
    assert ctl(python_daemon, "wait", job_id).returncode == 1  # fetched already
    quick = ctl(python_daemon, "submit", "--", "printf", "done").stdout.decode()
    waited = ctl(python_daemon, "wait", quick.strip())
    assert (waited.returncode, waited.stdout) == (0, b"done")
    stats = json.loads(ctl(python_daemon, "stats").stdout)
    assert stats["jobs"]["cancelled"] >= 1
    pong = ctl(python_daemon, "ping")
    assert pong.returncode == 0
    assert str(python_daemon.proc.pid) in pong.stdout.decode()


def test_socket_flag_and_missing_daemon() -> None:
    done = ctl(None, "ping", "--socket", "/nonexistent/cuprumd.sock")
    assert done.returncode == 69
    assert b"Traceback" not in done.stderr
    assert b"/nonexistent/cuprumd.sock" in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_usage_errors(python_daemon: Daemon) -> None:
    assert ctl(python_daemon, "run").returncode == 2
    assert ctl(python_daemon, "run", "--", "cat", "|").returncode == 2
    assert ctl(python_daemon, "run", "--env", "NOEQ", "--", "cat").returncode == 2


def test_separator_option_lets_a_literal_pipe_through(python_daemon: Daemon) -> None:
    done = ctl(
        python_daemon, "run", "--separator", "::", "--",
        "printf", "a|b", "::", "tr", "|", "-",
    )  # fmt: skip
    assert done.stdout == b"a-b"


def test_sync_client(daemon: Daemon, stream_backend: StreamBackend) -> None:
    with daemon.client() as client:
        assert client.ping().stream_backend == str(stream_backend)
        result = client.run(job(["printf", "b\\na\\n"], ["sort"]))
        assert result.state is JobState.SUCCEEDED
        assert result.stdout == "a\nb\n"
        job_id = client.submit(job(["sleep", "0.1"]))
        assert client.wait(job_id, timeout=10).state is JobState.SUCCEEDED
        with pytest.raises(NotFound):
            client.status(job_id)
        with pytest.raises(ProgramNotAllowed):
            client.run(job(["rm"]))
        assert client.ping().pid == daemon.proc.pid  # connection still fine


def test_sync_client_default_socket_from_environment(
    python_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_SOCKET_PATH", str(python_daemon.socket_path))
    monkeypatch.setenv("CUPRUM_DAEMON_USER", str(daemon_uid()))
    with Client() as client:
        assert client.ping().pid == python_daemon.proc.pid
    monkeypatch.setenv("CUPRUM_SOCKET_PATH", os.devnull + ".sock")
    with Client() as client, pytest.raises(DaemonUnavailable):
        client.ping()
