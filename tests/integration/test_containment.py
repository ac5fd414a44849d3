"""A hostile client against a real daemon with the default sandbox.

Every escape from the containment issue, tried as a client would: programs
that run others or write files by name, loader hooks in the job's
environment, strings that cannot reach ``execve``, background children,
and ``kill -9`` of the daemon. Runs as root and (``make test``'s second
pass) as an unprivileged daemon user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.settings import DEFAULT_PROGRAMS
from tests.daemon_harness import (
    Daemon,
    daemon_uid,
    job,
    short_tmpdir,
    start_daemon,
    wait_for,
)
from tests.helpers import pid_alive, processes

#: The default allowlist plus the programs the issue used to break out:
#: the sandbox, not the allowlist, has to hold them.
RISKY = ["awk", "sed", "sort", "uniq", "sh", "setsid"]
DAEMON_SETTINGS: dict[str, Any] = {"programs": [*DEFAULT_PROGRAMS, *RISKY]}
#: A Python any daemon user can execute (the venv's may live under /root).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


def run(daemon: Daemon, *stages: list[str], **fields: Any) -> dict[str, Any]:
    return ok(daemon.request({"id": 1, "op": "run", "job": job(*stages, **fields)}))


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert not reply["ok"], reply
    return reply["error"]["code"], reply["error"]["message"]


def cgroups_enabled(daemon: Daemon) -> bool:
    return any(e["event"] == "cgroup.enabled" for e in daemon.events())


def target(name: str) -> Path:
    """A path a stage must not be able to create (its directory exists)."""
    folder = short_tmpdir()
    folder.chmod(0o777)
    return folder / name


def sleepers(marker: str) -> list[int]:
    """Live ``sleep <marker>`` processes anywhere on the machine."""
    found = []
    for proc in processes():
        if proc.state == "Z":
            continue
        try:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", marker.encode()]:
            found.append(proc.pid)
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# -- programs that run other programs ------------------------------------------


@pytest.mark.parametrize(
    ("stages", "stdin"),
    [
        ([["awk", 'BEGIN{system("id")}']], None),
        ([["sed", "s/x/id/e"]], "x\n"),
        ([["awk", 'BEGIN{"id" | getline line; print line}']], None),
        ([["sort", "-S", "1K", "--compress-program=id"]], "b\na\n" * 20000),
    ],
    ids=["awk-system", "sed-e", "awk-getline", "sort-compress"],
)
def test_allowlisted_programs_cannot_run_others(
    daemon: Daemon, stages: list[list[str]], stdin: str | None
) -> None:
    fields = {} if stdin is None else {"stdin": stdin}
    result = run(daemon, *stages, **fields)
    everything = result["stdout"] + "".join(s["stderr"] for s in result["stages"])
    assert "uid=" not in everything
    assert result["state"] in ("succeeded", "failed")


@pytest.mark.parametrize(
    "make_stages",
    [
        lambda p: [["awk", f'BEGIN{{print "x" > "{p}"}}']],
        lambda p: [["sed", f"w {p}"]],
        lambda p: [["sort", "-o", str(p)]],
        lambda p: [["uniq", "-", str(p)]],
    ],
    ids=["awk-print", "sed-w", "sort-o", "uniq-output"],
)
def test_allowlisted_programs_cannot_write_files_by_name(
    daemon: Daemon, make_stages: Any
) -> None:
    path = target("written")
    result = run(daemon, *make_stages(path), stdin="data\n")
    assert not path.exists(), result
    assert result["state"] == "failed"


def test_a_stage_reads_system_files_but_not_others(daemon: Daemon) -> None:
    assert run(daemon, ["head", "-c", "4", "/dev/zero"])["state"] == "succeeded"
    assert run(daemon, ["cat", "/etc/passwd"])["stdout"].startswith("root:")
    secret = target("secret")
    secret.write_text("private\n")
    secret.chmod(0o644)
    result = run(daemon, ["cat", str(secret)])
    assert result["state"] == "failed"
    assert "private" not in result["stdout"]
    assert "Permission denied" in result["stages"][0]["stderr"]


def test_cwd_outside_readable_paths_is_a_bad_request(python_daemon: Daemon) -> None:
    reply = python_daemon.request(
        {"id": 1, "op": "run", "job": job(["true"], cwd=str(short_tmpdir()))}
    )
    code, message = error(reply)
    assert code == "bad_request"
    assert "readable_paths" in message
    assert run(python_daemon, ["true"], cwd="/usr")["state"] == "succeeded"


def test_tools_that_need_a_temporary_file_get_a_private_tmpdir(
    daemon: Daemon,
) -> None:
    lines = "".join(f"{n}\n" for n in range(200_000))
    result = run(daemon, ["cat"], ["tac"], stdin=lines)  # tac copies a pipe
    assert result["state"] == "succeeded", result
    assert result["stdout"].split("\n", 1)[0] == "199999"
    spill = run(daemon, ["sort", "-S", "64K", "-n", "-r"], stdin=lines)
    assert spill["state"] == "succeeded", spill
    assert spill["stdout"].split("\n", 1)[0] == "199999"


def test_one_jobs_tmpdir_is_closed_to_every_other_job(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        owner = job(["sh", "-c", 'echo secret > "$TMPDIR/s"; echo "$TMPDIR"; sleep 5'])
        conn.send({"id": 1, "op": "submit", "job": owner})
        job_id = conn.read()["result"]["job_id"]
        try:
            assert wait_for(lambda: len(daemon.children()) == 1)
            time.sleep(0.3)
            mine = run(daemon, ["sh", "-c", 'echo "$TMPDIR"; cd "$TMPDIR" && echo *'])
            own_dir, listing, _ = mine["stdout"].split("\n")
            assert listing == "*"  # the glob matched nothing: an empty TMPDIR
            [secret] = Path(own_dir).parent.glob("*/s")  # seen as root, not a job
            others = run(daemon, ["cat", str(secret)])
            assert others["stdout"] == ""
            assert "Permission denied" in others["stages"][0]["stderr"]
        finally:
            conn.request({"id": 2, "op": "cancel", "job_id": job_id})


# -- the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH", "BASH_ENV",
     "PYTHONPATH", "IFS", "GLIBC_TUNABLES", "MALLOC_CHECK_"],
)  # fmt: skip
def test_loader_and_interpreter_hooks_are_refused(
    python_daemon: Daemon, name: str
) -> None:
    reply = python_daemon.request(
        {"id": 7, "op": "run", "job": job(["cat"], env={name: "/tmp/x"})}
    )
    assert reply["id"] == 7
    code, message = error(reply)
    assert code == "bad_request"
    assert repr(name) in message
    assert python_daemon.children() == []


def test_a_timeout_beyond_the_limit_is_a_bad_request(python_daemon: Daemon) -> None:
    reply = python_daemon.request(
        {"id": 5, "op": "submit", "job": job(["sleep", "1"], timeout=1e18)}
    )
    code, message = error(reply)
    assert code == "bad_request"
    assert "max_timeout_seconds" in message
    assert python_daemon.children() == []


def test_ordinary_env_still_reaches_the_stage(python_daemon: Daemon) -> None:
    result = run(python_daemon, ["sh", "-c", 'printf %s "$GREETING"'],
                 env={"GREETING": "hi"})  # fmt: skip
    assert result["stdout"] == "hi"


# -- strings that cannot reach execve -----------------------------------------------


@pytest.mark.parametrize("where", ["argv", "env", "cwd", "stdin"])
def test_lone_surrogates_are_bad_requests_and_start_nothing(
    python_daemon: Daemon, where: str
) -> None:
    bad = "\ud800"
    spec = job(["sleep", "30"], ["cat", *([bad] if where == "argv" else [])])
    if where == "env":
        spec["env"] = {"X": bad}
    if where == "cwd":
        spec["cwd"] = bad
    if where == "stdin":
        spec["stdin"] = f"text{bad}"
    line = json.dumps({"id": 3, "op": "run", "job": spec}).encode()
    with python_daemon.connect() as conn:
        reply = conn.request_line(line)
        code, _message = error(reply)
        assert code == "bad_request"
        assert conn.request({"id": 4, "op": "ping"})["ok"]
    assert python_daemon.children() == []


# -- nothing outlives its job ---------------------------------------------------------


def test_background_children_do_not_outlive_the_job(daemon: Daemon) -> None:
    marker = f"{40 + os.getpid() % 50}.{time.monotonic_ns() % 1000}"
    before = sorted(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
    ticks = cpu_ticks(daemon.proc.pid)
    started = time.monotonic()
    result = run(daemon, ["sh", "-c", f"sleep {marker} &"], ["true"])
    assert result["state"] == "succeeded"
    assert time.monotonic() - started < 5.0
    assert sleepers(marker) == []
    assert daemon.children() == []
    # No descriptor more than before (a killed cgroup slot is dropped, so
    # there may be one fewer).
    assert wait_for(
        lambda: set(os.listdir(f"/proc/{daemon.proc.pid}/fd")) <= set(before)
    )
    ticks = cpu_ticks(daemon.proc.pid)
    time.sleep(2.0)
    assert cpu_ticks(daemon.proc.pid) - ticks <= 10  # 0.1 s of CPU in 2 s: idle


def test_a_setsid_escapee_is_killed_with_its_job(daemon: Daemon) -> None:
    if not cgroups_enabled(daemon):
        pytest.skip("no cgroup subtree for this daemon user: setsid escapes (docs)")
    marker = f"{95 + os.getpid() % 50}.{time.monotonic_ns() % 1000}"
    result = run(daemon, ["sh", "-c", f"setsid sleep {marker} & sleep 0.2"])
    assert result["state"] == "succeeded"
    assert sleepers(marker) == []


def test_a_later_stage_that_cannot_start_takes_the_earlier_ones_down(
    stream_backend: StreamBackend,
) -> None:
    folder = short_tmpdir()
    folder.chmod(0o755)
    program = folder / "vanishing"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    daemon = start_daemon(
        {"programs": ["sleep", str(program)], "stream_backend": str(stream_backend)}
    )
    try:
        program.unlink()  # allowlisted at start-up, gone when stage 1 starts
        result = run(daemon, ["sleep", "30"], [str(program)])
        assert result["state"] == "error"
        assert "No such file or directory (ENOENT)" in result["error"]
        assert result["stages"][0]["pid"] is not None
        assert daemon.children() == []
        assert not pid_alive(result["stages"][0]["pid"])
    finally:
        daemon.terminate()
        daemon.close()


def test_stages_get_the_daemons_original_descriptor_limit(
    stream_backend: StreamBackend,
) -> None:
    workdir = short_tmpdir()
    daemon = start_daemon(
        {"programs": ["sh"], "stream_backend": str(stream_backend)},
        prelude="import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 4096))\n",
        workdir=workdir,
    )
    try:
        result = run(daemon, ["sh", "-c", "ulimit -Sn; ulimit -Hn"])
        assert result["stdout"].split() == ["200", "4096"]
    finally:
        daemon.terminate()
        daemon.close()


def test_job_rlimits_apply_to_every_stage(stream_backend: StreamBackend) -> None:
    daemon = start_daemon(
        {
            "programs": ["sh", "cat"],
            "job_rlimits": {"fsize": 4096, "cpu": 7},
            "stream_backend": str(stream_backend),
        }
    )
    try:
        result = run(
            daemon, ["sh", "-c", "ulimit -f; ulimit -t"], ["sh", "-c", "cat; ulimit -f"]
        )
        assert result["stdout"].split() == ["8", "7", "8"]  # -f counts 512 B
    finally:
        daemon.terminate()
        daemon.close()


def test_kill_9_of_the_daemon_leaves_no_stage_running(
    stream_backend: StreamBackend,
) -> None:
    daemon = start_daemon(
        {"programs": ["sleep", "cat"], "stream_backend": str(stream_backend)}
    )
    marker = f"{60 + os.getpid() % 50}.{time.monotonic_ns() % 1000}"
    try:
        with daemon.connect() as conn:
            conn.send({"id": 1, "op": "submit", "job": job(["sleep", marker], ["cat"])})
            assert conn.read()["ok"]
        assert wait_for(lambda: len(sleepers(marker)) == 1)
        stage_pids = list(daemon.children())
        assert stage_pids
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        assert wait_for(lambda: not any(pid_alive(p) for p in stage_pids))
        assert sleepers(marker) == []
    finally:
        daemon.close()


def test_a_restarted_daemon_reaps_what_the_killed_one_left(
    stream_backend: StreamBackend,
) -> None:
    settings = {
        "programs": ["sh", "setsid", "sleep"],
        "sandbox": "exec",
        "stream_backend": str(stream_backend),
    }
    workdir = short_tmpdir()
    daemon = start_daemon(settings, workdir=workdir)
    if not cgroups_enabled(daemon):
        daemon.close()
        pytest.skip("no cgroup subtree for this daemon user: nothing to reap (docs)")
    marker = f"{70 + os.getpid() % 50}.{time.monotonic_ns() % 1000}"
    try:
        spec = job(["sh", "-c", f"setsid sleep {marker} & sleep 60"])
        assert daemon.request({"id": 1, "op": "submit", "job": spec})["ok"]
        assert wait_for(lambda: len(sleepers(marker)) == 1)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        assert len(sleepers(marker)) == 1  # the escapee survived the daemon
        (workdir / "d.sock").unlink()
        (workdir / "notify").unlink()
        again = start_daemon(settings, workdir=workdir)
        try:
            assert wait_for(lambda: sleepers(marker) == [])
            reaped = [e for e in again.events() if e["event"] == "cgroup.enabled"]
            assert reaped[0]["reaped_stale"] >= 1
        finally:
            again.terminate()
            again.close()
    finally:
        for pid in sleepers(marker):
            os.kill(pid, signal.SIGKILL)
        daemon.close()


# -- acting as the daemon -------------------------------------------------------------


def test_jobs_cannot_submit_jobs(stream_backend: StreamBackend) -> None:
    workdir = short_tmpdir()
    workdir.chmod(0o755)
    daemon = start_daemon(
        {
            "programs": [SYSTEM_PYTHON],
            "sandbox": "exec",
            "stream_backend": str(stream_backend),
            "socket_mode": "0666",  # the job can connect: the peer check refuses
        },
        workdir=workdir,
    )
    probe = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "print(s.makefile().readline(), end='')\n"
    )
    try:
        result = run(
            daemon, [SYSTEM_PYTHON, "-I", "-c", probe, str(daemon.socket_path)]
        )
        reply = json.loads(result["stdout"])
        assert error(reply) == ("forbidden", "jobs cannot submit jobs")
    finally:
        daemon.terminate()
        daemon.close()


# -- honest results ------------------------------------------------------------


def test_a_cancelled_transfer_reports_its_pump_and_bytes(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        spec = job(["head", "-c", "50000", "/dev/zero"], ["sleep", "30"])
        conn.send({"id": 1, "op": "submit", "job": spec})
        job_id = conn.read()["result"]["job_id"]
        time.sleep(0.5)
        assert ok(conn.request({"id": 2, "op": "cancel", "job_id": job_id}))
        result = ok(conn.request({"id": 3, "op": "wait", "job_id": job_id}))
    assert result["state"] == "cancelled"
    (transfer,) = result["transfers"]
    expected = "python" if daemon_backend(daemon) == "python" else "rust-splice"
    assert transfer["pump"] == expected
    assert transfer["bytes"] == 50000


def daemon_backend(daemon: Daemon) -> str:
    reply = ok(daemon.request({"id": 0, "op": "ping"}))
    backend: str = reply["stream_backend"]
    return backend


def test_stages_never_run_as_root(python_daemon: Daemon) -> None:
    marker = f"{30 + os.getpid() % 50}.{time.monotonic_ns() % 1000}"
    with python_daemon.connect() as conn:
        conn.send({"id": 1, "op": "submit", "job": job(["sleep", marker])})
        job_id = conn.read()["result"]["job_id"]
        try:
            assert wait_for(lambda: len(sleepers(marker)) == 1)
            [stage] = sleepers(marker)
            status = Path(f"/proc/{stage}/status").read_text().splitlines()
            uids = next(line for line in status if line.startswith("Uid:")).split()
            caps = next(line for line in status if line.startswith("CapEff:"))
            expected = 65534 if daemon_uid() == 0 else daemon_uid()
            assert uids[1:] == [str(expected)] * 4
            assert caps.split()[1] == "0000000000000000"
        finally:
            conn.request({"id": 2, "op": "cancel", "job_id": job_id})


def test_the_daemon_user_is_the_one_under_test(python_daemon: Daemon) -> None:
    status = Path(f"/proc/{python_daemon.proc.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) == daemon_uid()


@pytest.fixture(autouse=True)
def _both_backends_present(stream_backend: StreamBackend) -> None:
    """Every test here runs once per pump (and needs the extension for rust)."""
