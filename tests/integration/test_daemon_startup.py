"""Start-up and shutdown of the real daemon: backend pinning, readiness,
socket ownership, socket activation."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest

from cuprumd.settings import DEFAULT_PROGRAMS
from tests.daemon_harness import (
    ACTIVATE,
    HIDE_NATIVE,
    RawConnection,
    base_config,
    daemon_uid,
    job,
    serve_to_exit,
    short_tmpdir,
    start_daemon,
    wait_for,
    write_config,
)
from tests.helpers import pid_alive


def test_toml_pinned_python_is_reported_by_ping_and_every_result() -> None:
    daemon = start_daemon({"stream_backend": "python"})
    try:
        assert daemon.request({"op": "ping"})["result"]["stream_backend"] == "python"
        reply = daemon.request({"op": "run", "job": job(["echo", "x"], ["cat"])})
        assert reply["result"]["stream_backend"] == "python"
        assert {t["pump"] for t in reply["result"]["transfers"]} == {"python"}
        events = daemon.events()
        [resolved] = [e for e in events if e["event"] == "stream_backend.resolved"]
        assert resolved["requested"] == "python"
        assert resolved["source"].startswith("config:")
        assert resolved["rust_available"] is None
    finally:
        assert daemon.terminate() == 0
        daemon.close()


def test_env_overrides_the_pinned_toml_value(native: object) -> None:
    daemon = start_daemon(
        {"stream_backend": "python"}, env={"CUPRUM_STREAM_BACKEND": "rust"}
    )
    try:
        assert daemon.request({"op": "ping"})["result"]["stream_backend"] == "rust"
        reply = daemon.request({"op": "run", "job": job(["echo", "x"], ["cat"])})
        assert reply["result"]["stream_backend"] == "rust"
        events = daemon.events()
        [resolved] = [e for e in events if e["event"] == "stream_backend.resolved"]
        assert resolved["source"] == "env"
    finally:
        daemon.terminate()
        daemon.close()


@pytest.mark.parametrize("how", ["env", "toml"])
def test_forced_rust_without_the_extension_refuses_to_start(how: str) -> None:
    settings = {"stream_backend": "rust"} if how == "toml" else {}
    env = {"CUPRUM_STREAM_BACKEND": "rust"} if how == "env" else {}
    daemon = start_daemon(settings, env=env, prelude=HIDE_NATIVE, wait=False)
    try:
        status = daemon.proc.wait(15)
        assert status == 1
        assert "CUPRUM_STREAM_BACKEND" in daemon.log()
        events = [e["event"] for e in daemon.events()]
        assert "stream_backend.unavailable" in events
        assert "daemon.ready" not in events
        assert not daemon.socket_path.exists()
        assert not any("READY=1" in n for n in daemon.drain_notifications())
    finally:
        daemon.close()


def test_ready_is_sent_when_the_socket_accepts_and_status_names_the_backend() -> None:
    daemon = start_daemon({"stream_backend": "python"}, wait=False)
    try:
        message = daemon.wait_ready()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(daemon.socket_path))  # accepts at once
        probe.close()
        fields = dict(line.split("=", 1) for line in message.splitlines())
        assert fields["READY"] == "1"
        assert "python" in fields["STATUS"]
        assert fields["MAINPID"] == str(daemon.proc.pid)
        assert daemon.terminate() == 0
        assert any("STOPPING=1" in n for n in daemon.drain_notifications())
    finally:
        daemon.close()


def test_socket_file_gets_the_configured_mode_and_is_removed_at_exit() -> None:
    workdir = short_tmpdir()
    nested = workdir / "run" / "cuprumd.sock"
    daemon = start_daemon(
        {"stream_backend": "python", "socket_path": str(nested), "socket_mode": "0640"},
        workdir=workdir,
    )
    try:
        mode = nested.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o640
        assert stat.S_IMODE(nested.parent.stat().st_mode) == 0o755
        assert daemon.terminate() == 0
        assert not nested.exists()
    finally:
        daemon.close()


def test_a_stale_socket_file_is_replaced() -> None:
    workdir = short_tmpdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(workdir / "d.sock"))
    stale.close()  # the file stays, nobody listens: connect gets ECONNREFUSED
    os.chown(workdir / "d.sock", daemon_uid(), daemon_uid())
    daemon = start_daemon({"stream_backend": "python"}, workdir=workdir)
    try:
        assert daemon.request({"op": "ping"})["ok"] is True
    finally:
        assert daemon.terminate() == 0
        daemon.close()


def test_a_live_socket_is_not_stolen_by_a_second_daemon() -> None:
    first = start_daemon({"stream_backend": "python"})
    try:
        config = base_config(first.workdir, stream_backend="python")
        path = write_config(first.workdir / "second.toml", config)
        second = serve_to_exit(path)
        assert second.returncode == 1
        assert "already listening" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.request({"op": "ping"})["ok"] is True
    finally:
        assert first.terminate() == 0
        first.close()


def test_unknown_config_key_exits_78() -> None:
    workdir = short_tmpdir()
    path = workdir / "bad.toml"
    path.write_text('stream_backend = "python"\nsocket_pth = "/tmp/x"\n')
    proc = serve_to_exit(path)
    assert proc.returncode == 78
    assert "socket_pth" in proc.stderr


def test_socket_activation_serves_fd3_and_leaves_the_file_alone() -> None:
    workdir = short_tmpdir()
    path = workdir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    daemon = start_daemon(
        {"stream_backend": "python", "programs": [*DEFAULT_PROGRAMS, "printenv"]},
        env={"CUPRUM_LOG_LEVEL": "debug", "WATCHDOG_USEC": "60000000"},
        prelude=ACTIVATE,
        pass_fd=listener.fileno(),
        workdir=workdir,
    )
    listener.close()  # the daemon holds its own copy
    try:
        with RawConnection.open(path) as conn:
            reply = conn.request({"op": "ping", "id": "act"})
            assert reply["ok"] is True
            assert reply["result"]["pid"] == daemon.proc.pid
            printed = conn.request({"op": "run", "job": job(["printenv"])})
        assert not daemon.socket_path.exists()  # socket_path is not used
        names = {line.split("=", 1)[0] for line in printed["result"]["stdout"].split()}
        leaked = {n for n in names if n.startswith(("LISTEN_", "WATCHDOG_", "CUPRUM_"))}
        assert not leaked
        assert "NOTIFY_SOCKET" not in names
        assert daemon.terminate() == 0
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # never unlinked
    finally:
        daemon.close()


def test_watchdog_pings_at_half_the_timeout() -> None:
    daemon = start_daemon({"stream_backend": "python"}, env={"WATCHDOG_USEC": "200000"})
    try:
        assert wait_for(
            lambda: daemon.drain_notifications().count("WATCHDOG=1") >= 3, timeout=3
        )
    finally:
        assert daemon.terminate() == 0
        daemon.close()


def test_a_watchdog_meant_for_another_pid_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    daemon = start_daemon({"stream_backend": "python"}, env=env)
    try:
        time.sleep(0.3)
        assert "WATCHDOG=1" not in daemon.drain_notifications()
    finally:
        assert daemon.terminate() == 0
        daemon.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_both_event_loops_serve_jobs_and_peer_checks(loop: str) -> None:
    daemon = start_daemon({"stream_backend": "python", "event_loop": loop})
    try:
        reply = daemon.request({"op": "run", "job": job(["echo", "x"], ["cat"])})
        assert reply["result"]["stdout"] == "x\n"
        [selected] = [e for e in daemon.events() if e["event"] == "event_loop.selected"]
        assert selected["loop"] == loop
        conn = daemon.connect()
        conn.send({"op": "run", "job": job(["sleep", "30"])})
        assert wait_for(lambda: len(daemon.children()) == 1)
        [pid] = daemon.children()
        conn.close()
        assert wait_for(lambda: not pid_alive(pid))
    finally:
        assert daemon.terminate() == 0
        daemon.close()


#: Import what the daemon needs while root can still read the interpreter's
#: files (root's pyenv is private here), then drop to nobody.
DROP_TO_NOBODY = (
    "import os, asyncio, uvloop\n"
    "import cuprumd.cli, cuprumd.daemon, cuprumd.server, cuprumd.pipeline\n"
    "import cuprumd.client\n"
    "try:\n    import cuprumd._native\nexcept ImportError:\n    pass\n"
    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
)


@pytest.mark.skipif(
    daemon_uid() != 0, reason="the daemon starts as root here and drops to nobody"
)
def test_runs_as_an_unprivileged_user_and_creates_its_socket_dir() -> None:
    workdir = short_tmpdir()
    workdir.chmod(0o755)
    socket_dir = Path(f"/tmp/cuprumd-test-{workdir.name}")
    daemon = start_daemon(
        {"stream_backend": "python", "socket_path": str(socket_dir / "c.sock")},
        prelude=DROP_TO_NOBODY,
        workdir=workdir,
        shared=True,
    )
    try:
        st = socket_dir.stat()
        # Made in /tmp (sticky, shared): private, as clients require there.
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o700)
        assert daemon.socket_path.stat().st_uid == 65534
        reply = daemon.request({"op": "run", "job": job(["printf", "ok"])})
        assert reply["result"]["stdout"] == "ok"
        assert daemon.terminate() == 0
        assert not daemon.socket_path.exists()
    finally:
        daemon.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_unusable_state_dir_refuses_to_start() -> None:
    workdir = short_tmpdir()
    blocker = workdir / "not-a-dir"
    blocker.write_text("")
    config = base_config(workdir, stream_backend="python")
    config["state_dir"] = str(blocker / "state")
    proc = serve_to_exit(write_config(workdir / "c.toml", config))
    assert proc.returncode == 1
    assert "state_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "d.sock").exists()


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    from cuprumd.daemon import prepare_state_dir

    target = tmp_path / "a" / "state"
    prepare_state_dir(target)
    assert target.is_dir()
    assert target.stat().st_mode & 0o777 == 0o700


#: Makes ``cuprumd._native`` fail to import the way a broken build does (an
#: ImportError that is not "module not found").
BREAK_NATIVE = (
    "import sys, importlib.abc\n"
    "class _Broken(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'cuprumd._native':\n"
    "            raise ImportError('undefined symbol: PyInit_x', name=name)\n"
    "sys.meta_path.insert(0, _Broken())\n"
)


@pytest.mark.parametrize("backend", ["auto", "python"])
def test_a_broken_extension_is_one_event_and_one_line(backend: str) -> None:
    daemon = start_daemon({"stream_backend": backend}, prelude=BREAK_NATIVE, wait=False)
    try:
        assert daemon.proc.wait(15) == 1
        lines = daemon.log().splitlines()
        plain = [line for line in lines if not line.startswith("{")]
        assert len(plain) == 1, plain
        assert plain[0].startswith("cuprumd: cannot start: ")
        assert "cuprumd._native" in plain[0]
        assert "undefined symbol" in plain[0]
        events = [e["event"] for e in daemon.events()]
        assert ("stream_backend.broken" if backend == "auto" else "spawner.broken") in (
            events
        )
        assert "daemon.ready" not in events
        assert not daemon.socket_path.exists()
    finally:
        daemon.close()


@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_a_kernel_without_the_landlock_abi_refuses_the_sandbox(mode: str) -> None:
    daemon = start_daemon(
        {"stream_backend": "python", "sandbox": mode},
        prelude=(
            "import cuprumd.engine.sandbox.rulesets as r\nr.landlock_abi = lambda: 5\n"
        ),
        wait=False,
    )
    try:
        assert daemon.proc.wait(15) == 78
        log = daemon.log()
        assert "configuration error" in log
        assert f'sandbox = "{mode}"' in log
        assert "ABI 5" in log
        assert not daemon.socket_path.exists()
    finally:
        daemon.close()


def test_sandbox_off_is_a_warning_at_start() -> None:
    daemon = start_daemon({"stream_backend": "python", "sandbox": "off"})
    try:
        events = {e["event"]: e for e in daemon.events()}
        assert events["sandbox.off"]["level"] == "warning"
        assert "sandbox.configured" not in events
    finally:
        daemon.terminate()
        daemon.close()
