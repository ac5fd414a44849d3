"""``cuprumctl run`` as a pipe: the job's stages read and write cuprumctl's
own descriptors (files, pipes, terminals, /dev/null) with no size limit,
its stderr is theirs, its status is the pipeline's, and a signal to it
cancels the job. A daemon that cannot take descriptors gets capture mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import PYTHON, Daemon, daemon_env, wait_for

DAEMON_SETTINGS = {"programs": ["cat", "wc", "head", "sh", "sleep", "true",
                                "false", "printf", "yes", "sort", "uniq"]}  # fmt: skip
SIZE = 50 << 20  # beyond max_request_bytes and max_output_bytes: never captured


def ctl_env(daemon: Daemon | None = None, sock: Path | None = None) -> dict[str, str]:
    env = daemon_env()
    path = sock if daemon is None else daemon.socket_path
    if path is not None:
        env["CUPRUM_SOCKET"] = str(path)
    return env


def ctl(daemon: Daemon, *args: str, **popen: Any) -> subprocess.CompletedProcess[bytes]:
    """Run cuprumctl; its descriptors default to /dev/null in, pipes out."""
    if "input" not in popen:
        popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [PYTHON, "-m", "cuprumd.ctl", *args],
        env=ctl_env(daemon),
        timeout=120,
        check=False,
        **popen,
    )


def test_stdin_from_a_file_of_any_size(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "in"
    with source.open("wb") as out:
        out.truncate(SIZE)  # sparse: 50 MiB of zeros
    with source.open("rb") as stdin:
        done = ctl(daemon, "run", "--", "cat", "|", "wc", "-c", stdin=stdin)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.strip() == str(SIZE).encode()


def test_stdin_from_a_pipe_of_any_size(daemon: Daemon) -> None:
    producer = subprocess.Popen(
        ["head", "-c", str(SIZE), "/dev/zero"], stdout=subprocess.PIPE
    )
    assert producer.stdout is not None
    with producer.stdout:
        done = ctl(daemon, "run", "--", "cat", "|", "wc", "-c", stdin=producer.stdout)
    assert producer.wait(30) == 0
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.strip() == str(SIZE).encode()


def test_stdout_to_a_file_and_to_dev_null(
    python_daemon: Daemon, tmp_path: Path
) -> None:
    sink = tmp_path / "out"
    with sink.open("wb") as stdout:
        done = ctl(
            python_daemon, "run", "--", "head", "-c", str(SIZE), "/dev/zero",
            stdout=stdout,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")
    assert sink.stat().st_size == SIZE
    quiet = ctl(python_daemon, "run", "--", "yes", "|", "head", "-c", "1000000",
                stdout=subprocess.DEVNULL)  # fmt: skip
    assert (quiet.returncode, quiet.stderr) == (0, b"")


def test_shell_style_pipe_through_sort_and_uniq(python_daemon: Daemon) -> None:
    words = b"b\na\nb\nc\nb\n" * 20000
    done = ctl(
        python_daemon, "run", "--", "sort", "|", "uniq", "-c",
        input=words,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"20000", b"a", b"60000", b"b", b"20000", b"c"]


def test_stderr_of_a_failing_stage_is_ours(python_daemon: Daemon) -> None:
    done = ctl(
        python_daemon, "run", "--",
        "sh", "-c", "echo oops >&2; exit 3", "|", "cat",
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr == b"oops\n"  # the stage's own bytes, nothing added


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["true"], 0),
        (["sh", "-c", "exit 3", "|", "cat"], 3),
        (["cat", "|", "sh", "-c", "exit 4", "|", "cat"], 4),
        (["sh", "-c", "kill -TERM $$", "|", "cat"], 128 + signal.SIGTERM),
        (["sh", "-c", "kill -9 $$"], 128 + signal.SIGKILL),
        (["yes", "|", "head", "-n", "1"], 0),
    ],
    ids=["ok", "exit-code", "middle-stage", "sigterm", "sigkill", "sigpipe-upstream"],
)
def test_status_is_the_pipelines(
    python_daemon: Daemon, argv: list[str], status: int
) -> None:
    assert ctl(python_daemon, "run", "--", *argv).returncode == status


def test_timeout_is_124_with_a_note(python_daemon: Daemon) -> None:
    done = ctl(python_daemon, "run", "--timeout", "0.3", "--", "sleep", "10")
    assert done.returncode == 124
    assert done.stderr == b"cuprumctl: job timed out\n"


def test_a_terminal_is_passed_like_any_stream(python_daemon: Daemon) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [PYTHON, "-m", "cuprumd.ctl", "run", "--", "head", "-n", "1"],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ctl_env(python_daemon),
        )
        os.write(master, b"typed\n")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert (proc.returncode, out, err) == (0, b"typed\n", b"")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_the_job(python_daemon: Daemon, signum: int) -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "cuprumd.ctl", "run", "--", "sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ctl_env(python_daemon),
    )
    try:
        assert wait_for(python_daemon.children, timeout=20)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum
    assert (out, err) == (b"", b"")
    assert wait_for(lambda: not python_daemon.children(), timeout=20)


def test_capture_and_json_keep_the_captured_mode(python_daemon: Daemon) -> None:
    captured = ctl(
        python_daemon, "run", "--capture", "--", "sh", "-c", "echo out; echo err >&2"
    )
    assert (captured.returncode, captured.stdout, captured.stderr) == (
        0,
        b"out\n",
        b"err\n",
    )
    result = json.loads(ctl(python_daemon, "run", "--json", "--", "printf", "x").stdout)
    assert (result["stdout"], result["passed"]) == ("x", [])


# -- a daemon without the "fds" feature ---------------------------------------


def _result(stdout: str) -> dict[str, Any]:
    return {
        "job_id": "0123456789abcdef", "state": "succeeded", "stream_backend": "python",
        "stages": [{"argv": ["cat"], "pid": 1, "exit_code": 0, "signal": None,
                    "stderr": "", "stderr_truncated": False}],
        "stdout": stdout, "stdout_truncated": False, "output_encoding": "base64",
        "failed_stage": None, "transfers": [], "started_at": "", "finished_at": "",
        "duration_ms": 1.0, "error": None,
    }  # fmt: skip


@pytest.fixture
def old_daemon(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A socket answering as a daemon from before descriptor passing: its
    ``ping`` names no features, its ``run`` echoes the stdin it was sent."""
    workdir = Path(tempfile.mkdtemp(prefix="cu-old-", dir="/tmp"))  # short
    path = workdir / "d.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    seen: list[dict[str, Any]] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    seen.append(request)
                    if request["op"] == "ping":
                        result: dict[str, Any] = {
                            "version": "0.0.9", "protocol": 1,
                            "stream_backend": "python", "pid": 1,
                        }  # fmt: skip
                    else:
                        result = _result(request["job"].get("stdin", ""))
                    reply = {"id": request["id"], "ok": True, "result": result}
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, seen
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_daemon_without_fds_gets_capture_mode(
    old_daemon: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, seen = old_daemon
    done = subprocess.run(
        [PYTHON, "-m", "cuprumd.ctl", "run", "--", "cat"],
        input=b"\xffbinary",
        capture_output=True,
        env=ctl_env(sock=path),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"\xffbinary"
    warning = done.stderr.decode()
    assert warning.count("\n") == 1
    assert "cannot take descriptors" in warning
    runs = [request for request in seen if request["op"] == "run"]
    assert len(runs) == 1
    assert "fds" not in runs[0]
    assert runs[0]["job"]["stdin_encoding"] == "base64"


# -- what the quick commands import ---------------------------------------------

#: Modules ``run`` and ``ping`` must not import: the full client and what it
#: brings (pydantic, asyncio), and argparse (for other commands and help).
HEAVY = ("pydantic", "asyncio", "argparse", "cuprumd.client", "cuprumd.models",
         "cuprumd.protocol")  # fmt: skip
#: What ``import cuprumd`` itself loads today (``cuprumd/__init__.py``).
PACKAGE_INIT = ("importlib.metadata", "cuprumd.backend")
REPORT_MODULES = (
    "import sys\n"
    "from cuprumd.ctl import main\n"
    "status = main(sys.argv[1:])\n"
    "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def loaded_by(daemon: Daemon, *args: str) -> set[str]:
    done = subprocess.run(
        [PYTHON, "-c", REPORT_MODULES, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=ctl_env(daemon),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stderr.decode().split())


@pytest.mark.parametrize("args", [["ping"], ["run", "--", "true"]], ids=" ".join)
def test_quick_commands_import_no_client(
    python_daemon: Daemon, args: list[str]
) -> None:
    assert loaded_by(python_daemon, *args).isdisjoint(HEAVY)


def test_quick_commands_skip_the_package_extras(python_daemon: Daemon) -> None:
    assert loaded_by(python_daemon, "run", "--", "true").isdisjoint(PACKAGE_INIT)
