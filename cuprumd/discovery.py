"""Which socket a client talks to, and whether the daemon on it is ours.

A client hands the daemon its input and its environment; a socket in a
place another user could have prepared (``/tmp``) would hand them to that
user's fake daemon instead. So a client takes a socket only from places the
user or the system controls, and, once connected, sends nothing until the
kernel (``SO_PEERCRED``) says the peer runs as root, as the user, or as the
daemon user the user named.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from cuprumd.errors import ClientError
from cuprumd.paths import SOCKET_NAME

__all__ = [
    "DAEMON_USER_ENV_VAR",
    "SOCKET_ENV_VARS",
    "SYSTEM_SOCKET",
    "UntrustedDaemon",
    "check_daemon",
    "discover_socket",
    "trusted_uids",
]

#: Named sockets, first one set wins; the second is the daemon's own setting.
SOCKET_ENV_VARS = ("CUPRUM_SOCKET", "CUPRUM_SOCKET_PATH")
DAEMON_USER_ENV_VAR = "CUPRUM_DAEMON_USER"
#: Where the packaged systemd units put the socket.
SYSTEM_SOCKET = Path("/run/cuprumd") / SOCKET_NAME
_UCRED = struct.Struct("3i")


class UntrustedDaemon(ClientError):
    """The socket's peer is not a daemon this user trusts; nothing was sent."""


def _private_tmp_dir(directory: Path, uid: int) -> bool:
    """``/tmp/cuprumd-<uid>`` counts only as a real directory (not a
    symlink) of the user's own, mode 0700: anything else someone else may
    have made."""
    try:
        st = directory.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == uid
        and stat.S_IMODE(st.st_mode) == 0o700
    )


def discover_socket(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    tmp: Path = Path("/tmp"),
    system_socket: Path = SYSTEM_SOCKET,
) -> Path:
    """The socket to use: ``explicit``, a ``CUPRUM_SOCKET`` variable, the
    user's runtime directory, the system service's, then the per-user
    directory in ``/tmp`` if it is safe; else the runtime-directory path,
    which will fail with a clear "cannot connect"."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return Path(explicit)
    for name in SOCKET_ENV_VARS:
        named = env.get(name, "").strip()
        if named:
            return Path(named)
    uid = os.getuid()
    candidates = []
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        candidates.append(Path(runtime) / "cuprumd" / SOCKET_NAME)
    candidates.append(system_socket)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    fallback = tmp / f"cuprumd-{uid}"
    if _private_tmp_dir(fallback, uid):
        return fallback / SOCKET_NAME
    return candidates[0]


def _uid_of(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        msg = f"{DAEMON_USER_ENV_VAR}/--daemon-user: no user {user!r}"
        raise UntrustedDaemon(msg) from None


def trusted_uids(
    daemon_user: str | None = None, environ: Mapping[str, str] | None = None
) -> frozenset[int]:
    """Root, the user, and the daemon user named by the argument or
    ``$CUPRUM_DAEMON_USER``."""
    env = os.environ if environ is None else environ
    named = daemon_user or env.get(DAEMON_USER_ENV_VAR, "").strip() or None
    uids = {0, os.getuid()}
    if named is not None:
        uids.add(_uid_of(named))
    return frozenset(uids)


def check_daemon(sock: socket.socket, path: Path, trusted: frozenset[int]) -> None:
    """Raise ``UntrustedDaemon`` unless the peer of ``sock`` runs as a
    trusted uid; called before a byte is sent."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    if uid not in trusted:
        msg = (
            f"the socket {path} is served by uid {uid}, which is neither root, "
            f"you, nor a daemon user you named ({DAEMON_USER_ENV_VAR} or "
            "--daemon-user); refusing to send it anything"
        )
        raise UntrustedDaemon(msg)
