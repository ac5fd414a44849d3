"""sd_notify and socket-activation helpers, without systemd."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cuprumd.systemd import (
    Notifier,
    activation_fd_count,
    notify_address,
    take_activated_socket,
    watchdog_interval,
)


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/x") == b"\0abstract/x"
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("relative") is None


def test_watchdog_interval_is_half_the_timeout_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, 7) == 10.0
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}
    assert watchdog_interval(env, 7) == 1.0
    assert watchdog_interval(env, 8) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 7) is None
    assert watchdog_interval({}, 7) is None


def test_activation_needs_our_pid() -> None:
    assert activation_fd_count({"LISTEN_PID": "5", "LISTEN_FDS": "2"}, 5) == 2
    assert activation_fd_count({"LISTEN_PID": "6", "LISTEN_FDS": "2"}, 5) == 0
    assert activation_fd_count({"LISTEN_FDS": "1"}, 5) == 0
    assert activation_fd_count({"LISTEN_PID": "5", "LISTEN_FDS": "x"}, 5) == 0


def test_listen_variables_are_removed_even_when_not_ours() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "KEEP": "1"}
    assert take_activated_socket(env) is None
    assert env == {"KEEP": "1"}


def test_notifier_sends_one_datagram_and_forgets_the_variables(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "n"))
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "n"),
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = Notifier.from_environ(env)
    assert env == {}
    assert notifier.watchdog == 2.0
    assert notifier.send(ready=1, status="serving, backend python")
    assert receiver.recv(1024) == b"READY=1\nSTATUS=serving, backend python"
    receiver.close()


def test_notifier_abstract_namespace() -> None:
    name = f"cuprumd-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
    assert notifier.send(stopping=1)
    assert receiver.recv(64) == b"STOPPING=1"
    receiver.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": "/nonexistent/notify"}])
def test_notifier_never_raises(env: dict[str, str]) -> None:
    assert Notifier.from_environ(env).send(ready=1) is False


def test_auto_event_loop_prefers_uvloop_when_installed() -> None:
    from cuprumd.daemon import choose_event_loop

    assert choose_event_loop("auto", uvloop_installed=True) == "uvloop"
    assert choose_event_loop("auto", uvloop_installed=False) == "asyncio"
    assert choose_event_loop("asyncio", uvloop_installed=True) == "asyncio"
    assert choose_event_loop("uvloop", uvloop_installed=False) == "uvloop"
