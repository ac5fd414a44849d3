"""Owning the socket file: directory checks, stale and live sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from cuprumd.errors import ConfigError, StartupError
from cuprumd.listener import check_socket_dir, open_listener, resolve_group


def fake_stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "ok"),
    [
        (stat.S_IFDIR | 0o700, 1000, True),
        (stat.S_IFDIR | 0o755, 0, True),
        (stat.S_IFDIR | 0o1777, 0, True),  # /tmp
        (stat.S_IFDIR | 0o777, 0, False),
        (stat.S_IFDIR | 0o775, 1000, False),
        (stat.S_IFDIR | 0o755, 2000, False),
        (stat.S_IFREG | 0o755, 1000, False),
    ],
)
def test_check_socket_dir(mode: int, uid: int, ok: bool) -> None:
    assert (check_socket_dir(fake_stat(mode, uid), 1000) is None) is ok


@pytest.fixture
def short_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="cul-", dir="/tmp"))


def test_bind_creates_the_directory_and_cleans_up(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LISTEN_PID", raising=False)
    path = short_dir / "sub" / "s.sock"
    listener = open_listener(path, 0o600, str(os.getgid()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_gid == os.getgid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    listener.close()
    assert not path.exists()


def test_close_leaves_a_successors_socket_alone(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    listener = open_listener(path, 0o600, None)
    path.unlink()  # someone replaced it...
    successor = socket.socket(socket.AF_UNIX)
    successor.bind(str(path))
    listener.close()
    assert path.exists()  # ...and their file survives our exit
    successor.close()


def test_live_socket_refused_stale_socket_replaced(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    live = open_listener(path, 0o600, None)
    with pytest.raises(StartupError, match="already listening"):
        open_listener(path, 0o600, None)
    live.sock.close()  # the file stays: now stale
    assert path.exists()
    again = open_listener(path, 0o600, None)
    again.close()


def test_a_non_socket_file_is_never_replaced(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    path.write_text("precious")
    with pytest.raises(StartupError, match="not a socket"):
        open_listener(path, 0o600, None)
    assert path.read_text() == "precious"


def test_unsafe_directory_is_refused(short_dir: Path) -> None:
    short_dir.chmod(0o777)
    with pytest.raises(StartupError, match="writable by other users"):
        open_listener(short_dir / "s.sock", 0o600, None)


def test_unknown_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="socket_group"):
        resolve_group("no-such-group-cuprumd")
    assert resolve_group("0") == 0


def test_a_symlinked_socket_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StartupError, match="symbolic link"):
        open_listener(link / "d.sock", 0o600, None)


def test_a_socket_directory_made_in_a_sticky_directory_is_private(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    listener = open_listener(shared / "cuprumd-x" / "d.sock", 0o600, None)
    try:
        assert (shared / "cuprumd-x").stat().st_mode & 0o777 == 0o700
    finally:
        listener.close()
