"""Start the real daemon as a subprocess and talk to it as clients do.

Every daemon gets a short private directory under /tmp (socket paths are
limited to 107 bytes, and pytest's own temporary paths can be longer), a
TOML config written from a dict, a log file, and a fake ``$NOTIFY_SOCKET``
whose ``READY=1`` tells the test the daemon is serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cuprumd.backend import StreamBackend
from cuprumd.client import Client
from tests.helpers import processes

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
BOOT = "import sys\nfrom cuprumd.cli import main\nsys.exit(main())\n"
#: Hides the native extension: importing it then raises ModuleNotFoundError
#: for exactly ``cuprumd._native``, as when it was never built.
HIDE_NATIVE = "import sys\nsys.modules['cuprumd._native'] = None\n"
#: Puts the socket handed over in $TEST_LISTEN_FD on fd 3 and claims it for
#: this pid, as systemd does before exec'ing the service.
ACTIVATE = (
    "import os\n"
    "fd = int(os.environ.pop('TEST_LISTEN_FD'))\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
)
STARTUP_TIMEOUT = 15.0
#: ``make test`` runs the integration tests a second time with this set to
#: an unprivileged uid: every daemon then runs as that user (the deployed
#: case: no cgroup subtree, the per-user pipe budget), started via setpriv.
DAEMON_USER = os.environ.get("CUPRUM_TEST_DAEMON_USER", "")


def daemon_uid() -> int:
    """The uid the tests' daemons run as."""
    return int(DAEMON_USER) if DAEMON_USER else os.getuid()


def as_daemon_user(argv: list[str]) -> list[str]:
    """Prefix ``argv`` so it runs as the daemon user (no-op for ourselves)."""
    uid = daemon_uid()
    if uid == os.getuid():
        return argv
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--inh-caps=-all", *argv,
    ]  # fmt: skip


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without anything that would steer the daemon."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CUPRUM_", "LISTEN_", "WATCHDOG_"))
        and k not in ("NOTIFY_SOCKET", "PYTEST_CURRENT_TEST")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUPRUM_DAEMON_USER"] = str(daemon_uid())  # clients may trust it
    env.update(extra or {})
    return env


def short_tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cu-", dir="/tmp"))


@dataclass
class Daemon:
    """A running (or exited) daemon and the means to talk to it."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    socket_path: Path
    log_path: Path
    notify: socket.socket
    notifications: list[str] = field(default_factory=list)

    # -- life cycle ------------------------------------------------------

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Block until READY=1 arrives; return that datagram."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited {self.proc.returncode}: {self.log()}"
                )
            message = self.next_notification(0.1)
            if message is not None and "READY=1" in message.splitlines():
                return message
        raise TimeoutError(f"daemon not ready after {timeout}s: {self.log()}")

    def next_notification(self, timeout: float) -> str | None:
        self.notify.settimeout(timeout)
        try:
            data = self.notify.recv(4096).decode()
        except TimeoutError:
            return None
        self.notifications.append(data)
        return data

    def drain_notifications(self) -> list[str]:
        while self.next_notification(0.01) is not None:
            pass
        return self.notifications

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.notify.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- observation -----------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
        return found

    def children(self) -> list[int]:
        """Live processes whose parent is the daemon (its jobs' stages)."""
        return [
            p.pid for p in processes() if p.ppid == self.proc.pid and p.state != "Z"
        ]

    # -- talking -----------------------------------------------------------

    def connect(self) -> RawConnection:
        return RawConnection.open(self.socket_path)

    def request(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        with self.connect() as conn:
            return conn.request(doc)

    def client(self, timeout: float | None = 30.0) -> Client:
        return Client(self.socket_path, timeout=timeout, daemon_user=str(daemon_uid()))


def serve_to_exit(
    config: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cuprumd serve`` that is expected to refuse to start."""
    if daemon_uid() != os.getuid():
        for path in (config.parent, config):
            os.chown(path, daemon_uid(), daemon_uid())
    return subprocess.run(
        as_daemon_user([PYTHON, "-m", "cuprumd.cli", "serve", "--config", str(config)]),
        env=daemon_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@dataclass
class RawConnection:
    """A bare socket speaking NDJSON, for requests no client would send."""

    sock: socket.socket
    buffer: bytes = b""

    @classmethod
    def open(cls, path: Path, timeout: float = 30.0) -> RawConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        return cls(sock)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_line(self, line: bytes) -> None:
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")

    def send(self, doc: Mapping[str, Any]) -> None:
        self.send_line(json.dumps(doc).encode())

    def read_line(self) -> bytes:
        """One reply line, or b"" at end of stream."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read(self) -> dict[str, Any]:
        line = self.read_line()
        if not line:
            raise EOFError("connection closed without a reply")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        self.send(doc)
        return self.read()

    def request_line(self, line: bytes, fds: list[int] | None = None) -> dict[str, Any]:
        if fds:
            socket.send_fds(self.sock, [line.rstrip(b"\n") + b"\n"], fds)
        else:
            self.send_line(line)
        return self.read()


def base_config(workdir: Path, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "socket_path": str(workdir / "d.sock"),
        "log_format": "json",
        "log_level": "debug",
        "kill_grace_seconds": 1.0,
        "shutdown_grace_seconds": 2.0,
    }
    config.update(settings)
    return config


def start_daemon(
    settings: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    prelude: str = "",
    pass_fd: int | None = None,
    wait: bool = True,
    workdir: Path | None = None,
    shared: bool = False,
) -> Daemon:
    """Start ``cuprumd serve`` on a private socket; wait for READY=1."""
    workdir = workdir or short_tmpdir()
    config = base_config(workdir, **(settings or {}))
    config_path = write_config(workdir / "cuprumd.toml", config)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workdir / "notify"))
    if shared or daemon_uid() != os.getuid():
        (workdir / "notify").chmod(0o777)  # a daemon that drops root can notify
    extra = {"NOTIFY_SOCKET": str(workdir / "notify"), **(env or {})}
    pass_fds: tuple[int, ...] = ()
    if pass_fd is not None:
        extra["TEST_LISTEN_FD"] = str(pass_fd)
        pass_fds = (pass_fd,)
    log_path = workdir / "daemon.log"
    log_path.touch()
    if daemon_uid() != os.getuid():
        for path in (workdir, config_path, log_path):
            os.chown(path, daemon_uid(), daemon_uid())
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            as_daemon_user(
                [PYTHON, "-c", prelude + BOOT, "serve", "--config", str(config_path)]
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=daemon_env(extra),
            pass_fds=pass_fds,
            cwd=workdir,
        )
    daemon = Daemon(proc, workdir, Path(config["socket_path"]), log_path, notify)
    if wait:
        try:
            daemon.wait_ready()
        except BaseException:
            daemon.close()
            raise
    return daemon


class DaemonPool:
    """One daemon per stream backend, started on first use, for a module."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.daemons: dict[StreamBackend, Daemon] = {}

    def get(self, backend: StreamBackend) -> Daemon:
        daemon = self.daemons.get(backend)
        if daemon is None or daemon.proc.poll() is not None:
            daemon = start_daemon({"stream_backend": str(backend), **self.settings})
            self.daemons[backend] = daemon
        return daemon

    def close(self) -> None:
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.terminate(10)
            daemon.close()


def job(*stages: list[str], **fields: Any) -> dict[str, Any]:
    return {"stages": [{"argv": list(argv)} for argv in stages], **fields}


def as_other_uid(uid: int, socket_path: Path, requests: list[dict[str, Any]]) -> Any:
    """Replies to ``requests`` sent on one connection by a process of ``uid``."""
    probe = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(20)\n"
        "s.connect(sys.argv[1])\n"
        "f = s.makefile('rwb')\n"
        "out = []\n"
        "for line in sys.argv[2:]:\n"
        "    f.write(line.encode() + b'\\n'); f.flush()\n"
        "    out.append(json.loads(f.readline()))\n"
        "print(json.dumps(out))\n"
    )
    argv = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        PYTHON, "-I", "-c", probe, str(socket_path),
        *(json.dumps(r) for r in requests),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)
