"""Which socket a client picks, and which daemons it will talk to."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cuprumd.discovery import (
    UntrustedDaemon,
    check_daemon,
    discover_socket,
    trusted_uids,
)

UID = os.getuid()


def find(tmp_path: Path, environ: dict[str, str]) -> Path:
    return Path(
        discover_socket(
            None,
            environ,
            tmp=str(tmp_path / "tmp"),
            system_socket=str(tmp_path / "run" / "cuprumd.sock"),
        )
    )


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir(mode=0o1777)
    return tmp_path


def test_a_named_socket_wins(shared_tmp: Path) -> None:
    assert discover_socket("/x.sock", {}) == "/x.sock"
    assert discover_socket(Path("/x.sock"), {}) == "/x.sock"
    env = {"CUPRUM_SOCKET": "/a.sock", "CUPRUM_SOCKET_PATH": "/b.sock"}
    assert find(shared_tmp, env) == Path("/a.sock")
    assert find(shared_tmp, {"CUPRUM_SOCKET_PATH": "/b.sock"}) == Path("/b.sock")


@pytest.mark.parametrize(
    "given",
    ["/run/x/d.sock/", "/run//x/./d.sock", "run/../x/d.sock", "", ".", "a/", "//a"],
)
def test_named_sockets_are_spelt_as_pathlib_spells_them(given: str) -> None:
    assert discover_socket(given, {}) == str(Path(given)).replace("//", "/")
    assert discover_socket(None, {"CUPRUM_SOCKET": given or "."}) == str(
        Path(given or ".")
    ).replace("//", "/")


def test_runtime_dir_then_system_socket(shared_tmp: Path) -> None:
    runtime = shared_tmp / "xdg"
    (runtime / "cuprumd").mkdir(parents=True)
    mine = runtime / "cuprumd" / "cuprumd.sock"
    system = shared_tmp / "run" / "cuprumd.sock"
    system.parent.mkdir()
    system.touch()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    assert find(shared_tmp, env) == system  # the user's daemon is not running
    mine.touch()
    assert find(shared_tmp, env) == mine


def test_the_tmp_directory_counts_only_when_private_and_ours(
    shared_tmp: Path,
) -> None:
    fallback = shared_tmp / "tmp" / f"cuprumd-{UID}"
    env = {"XDG_RUNTIME_DIR": str(shared_tmp / "xdg")}
    unusable = shared_tmp / "xdg" / "cuprumd" / "cuprumd.sock"
    fallback.mkdir(mode=0o755)
    assert find(shared_tmp, env) == unusable  # not 0700: anyone's
    fallback.chmod(0o700)
    assert find(shared_tmp, env) == fallback / "cuprumd.sock"
    fallback.rmdir()
    elsewhere = shared_tmp / "planted"
    elsewhere.mkdir(mode=0o700)
    fallback.symlink_to(elsewhere)  # a symlink someone could repoint
    assert find(shared_tmp, env) == unusable


def test_trusted_uids_are_root_me_and_the_named_daemon_user() -> None:
    assert trusted_uids(None, {}) == {0, UID}
    assert trusted_uids("4242", {}) == {0, UID, 4242}
    assert trusted_uids(None, {"CUPRUM_DAEMON_USER": "nobody"}) >= {0, UID}
    with pytest.raises(UntrustedDaemon, match="no user 'no-such-user-x'"):
        trusted_uids("no-such-user-x", {})


def test_a_peer_of_another_uid_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        check_daemon(left, Path("p"), frozenset({UID}))  # ourselves: fine
        with pytest.raises(UntrustedDaemon, match=f"served by uid {UID}"):
            check_daemon(left, Path("p"), frozenset({UID + 1}))
    finally:
        left.close()
        right.close()
