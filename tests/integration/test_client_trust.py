"""A client never talks to a daemon it cannot trust: a fake one run by
another user gets not a byte, from the library or from cuprumctl."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cuprumd.client import Client, UntrustedDaemon
from tests.daemon_harness import REPO, daemon_env, short_tmpdir

#: Listens as whoever runs it and writes down every byte a client sends.
FAKE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
    "open(sys.argv[2], 'w').close()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.settimeout(1)\n"
    "    try:\n"
    "        data = c.recv(65536)\n"
    "    except OSError:\n"
    "        data = b''\n"
    "    with open(sys.argv[2], 'ab') as log: log.write(data)\n"
    "    c.close()\n"
)

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="a daemon of another user needs root to start"
)


@pytest.fixture
def fake_daemon() -> Iterator[tuple[Path, Path]]:
    workdir = short_tmpdir()
    workdir.chmod(0o777)
    sock, seen = workdir / "fake.sock", workdir / "seen"
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", FAKE, str(sock), str(seen)],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock, seen
    proc.kill()
    proc.wait()


def test_the_library_sends_nothing_to_another_users_daemon(
    fake_daemon: tuple[Path, Path],
) -> None:
    sock, seen = fake_daemon
    with (
        Client(sock, timeout=5) as client,
        pytest.raises(UntrustedDaemon, match="served by uid 65534"),
    ):
        client.run({"stages": [{"argv": ["cat"]}], "stdin": "secret"})
    time.sleep(0.2)
    assert seen.read_bytes() == b""
    trusting = Client(sock, timeout=5, daemon_user="65534")
    with trusting, pytest.raises(Exception):  # noqa: B017 - no protocol spoken
        trusting.ping()
    time.sleep(0.2)
    assert b'"ping"' in seen.read_bytes()  # named daemon user: it is talked to


def test_cuprumctl_refuses_with_a_clear_message(
    fake_daemon: tuple[Path, Path],
) -> None:
    sock, seen = fake_daemon
    env = daemon_env()
    env.pop("CUPRUM_DAEMON_USER")  # this user names no daemon user
    done = subprocess.run(
        [sys.executable, "-m", "cuprumd.ctl", "--socket", str(sock), "run",
         "--env", "TOKEN=hunter2", "--", "cat"],
        input="secret", capture_output=True, text=True, timeout=30,
        env=env, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "served by uid 65534" in done.stderr
    assert "refusing to send it anything" in done.stderr
    time.sleep(0.2)
    assert seen.read_bytes() == b""
