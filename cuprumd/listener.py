"""The listening socket: adopted from systemd, or bound and owned by us.

Owning a socket file means: never steal a live daemon's socket, replace a
stale one, never let the file exist for a moment with wider permissions than
asked, and on exit remove exactly the file we made (not a successor's).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from cuprumd.errors import ConfigError, StartupError
from cuprumd.systemd import take_activated_socket

__all__ = [
    "SOCKET_DIR_MODE",
    "Listener",
    "check_socket_dir",
    "open_listener",
    "resolve_group",
]

#: Mode of a socket directory the daemon creates: traversable by others so
#: that ``socket_group`` members can reach the socket (whose own mode is the
#: real gate), writable by the daemon only.
SOCKET_DIR_MODE = 0o755
_BACKLOG = socket.SOMAXCONN


@dataclass
class Listener:
    """A listening socket and, when we created it, its file's identity."""

    sock: socket.socket
    path: Path | None
    activated: bool
    identity: tuple[int, int] | None = None

    def describe(self) -> str:
        """How clients reach us, for logs and ``STATUS=``."""
        if self.activated:
            name = self.sock.getsockname()
            return f"{name or 'an unnamed socket'} (socket-activated)"
        return str(self.path)

    def close(self) -> None:
        """Close, and unlink the file only if it is still the one we bound."""
        self.sock.close()
        if self.path is None or self.identity is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self.identity:
                self.path.unlink()


def check_socket_dir(st: os.stat_result, uid: int) -> str | None:
    """Why a directory is unsafe to hold our socket, or ``None`` if safe.

    Another user who owns or can write to the directory could swap the
    socket for their own and read every job sent to it; a sticky
    world-writable directory such as /tmp is safe, since only the owner of
    a file can remove it there.
    """
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link (someone else may point it elsewhere)"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (uid, 0):
        return f"is owned by uid {st.st_uid}, not by the daemon's user or root"
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        return "is writable by other users and not sticky"
    return None


def resolve_group(name: str) -> int:
    """A group name or number to a gid.

    Raises
    ------
    ConfigError
        If no such group exists.
    """
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        msg = f"socket_group: no group named {name!r} exists"
        raise ConfigError(msg) from None


def _prepare_dir(directory: Path) -> None:
    if not directory.exists() and not directory.is_symlink():
        # In a shared sticky directory (/tmp) ours must be private: clients
        # trust a directory there only when it is 0700 and the user's own.
        try:
            shared = directory.parent.stat().st_mode & stat.S_ISVTX
        except OSError:
            shared = 0
        mode = 0o700 if shared else SOCKET_DIR_MODE
        try:
            directory.mkdir(mode=mode, parents=True)
            directory.chmod(mode)  # the umask may have narrowed it
        except FileExistsError:
            pass
        except OSError as exc:
            msg = f"cannot create socket directory {directory}: {exc.strerror}"
            raise StartupError(msg) from None
    problem = check_socket_dir(directory.lstat(), os.getuid())
    if problem is not None:
        msg = f"refusing to use socket directory {directory}: it {problem}"
        raise StartupError(msg)


def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to touch a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"{path} exists and is not a socket; refusing to replace it"
        raise StartupError(msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # stale: its daemon is gone
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        msg = f"cannot check existing socket {path}: {exc.strerror}"
        raise StartupError(msg) from None
    finally:
        probe.close()
    msg = f"another cuprumd is already listening on {path}; refusing to start"
    raise StartupError(msg)


def _bind(path: Path, mode: int, group: str | None) -> Listener:
    gid = None if group is None else resolve_group(group)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # born 0600: no window with wider access
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            msg = f"another cuprumd is already listening on {path}; refusing to start"
        else:
            msg = f"cannot bind {path}: {exc.strerror or exc}"
        raise StartupError(msg) from None
    finally:
        os.umask(old_umask)
    st = path.lstat()
    listener = Listener(sock, path, activated=False, identity=(st.st_dev, st.st_ino))
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        path.chmod(mode)
        sock.listen(_BACKLOG)
    except OSError as exc:
        listener.close()
        msg = f"cannot set up socket {path}: {exc.strerror}"
        raise StartupError(msg) from None
    return listener


def open_listener(path: Path, mode: int, group: str | None) -> Listener:
    """Adopt a socket-activated fd, else bind ``path``.

    Raises
    ------
    StartupError
        If the path is held by a live daemon, is not a socket, or cannot be
        bound; the message names the path.
    ConfigError
        If ``socket_group`` names no group.
    """
    try:
        activated = take_activated_socket(os.environ)
    except OSError as exc:
        msg = f"cannot adopt the socket passed by systemd (fd 3): {exc.strerror}"
        raise StartupError(msg) from None
    if activated is not None:
        if activated.family != socket.AF_UNIX or activated.type != socket.SOCK_STREAM:
            activated.close()
            msg = "the socket passed by systemd is not an AF_UNIX stream socket"
            raise StartupError(msg)
        return Listener(activated, None, activated=True)
    _prepare_dir(path.parent)
    _clear_stale(path)
    return _bind(path, mode, group)
