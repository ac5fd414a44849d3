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
import stat
import sys
from _socket import SO_PEERCRED, SOL_SOCKET

from cuprumd.errors import ClientError
from cuprumd.paths import SOCKET_NAME

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol

    class _Socket(Protocol):
        def getsockopt(self, level: int, option: int, size: int, /) -> bytes: ...


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
SYSTEM_SOCKET = f"/run/cuprumd/{SOCKET_NAME}"
#: ``struct ucred``: pid, uid, gid, each a C int.
_UCRED_SIZE = 12


class UntrustedDaemon(ClientError):
    """The socket's peer is not a daemon this user trusts; nothing was sent."""


def _normal(path: str) -> str:
    """The path as ``pathlib`` would spell it (``a//./b/`` is ``a/b``, the
    empty path is ``.``); ``..`` is kept, as a symlink may precede it."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    joined = "/".join(parts)
    if path.startswith("/"):
        return "/" + joined
    return joined or "."


def _private_tmp_dir(directory: str, uid: int) -> bool:
    """``/tmp/cuprumd-<uid>`` counts only as a real directory (not a
    symlink) of the user's own, mode 0700: anything else someone else may
    have made."""
    try:
        st = os.lstat(directory)
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
    tmp: str = "/tmp",
    system_socket: str = SYSTEM_SOCKET,
) -> str:
    """The socket to use: ``explicit``, a ``CUPRUM_SOCKET`` variable, the
    user's runtime directory, the system service's, then the per-user
    directory in ``/tmp`` if it is safe; else the runtime-directory path,
    which will fail with a clear "cannot connect".

    Paths are strings: ``cuprumctl run`` imports this module, and pathlib
    would cost it a quarter of its start-up."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return _normal(os.fspath(explicit))
    for name in SOCKET_ENV_VARS:
        named = env.get(name, "").strip()
        if named:
            return _normal(named)
    uid = os.getuid()
    candidates = []
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        candidates.append(os.path.join(runtime, "cuprumd", SOCKET_NAME))
    candidates.append(system_socket)
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    fallback = os.path.join(tmp, f"cuprumd-{uid}")
    if _private_tmp_dir(fallback, uid):
        return os.path.join(fallback, SOCKET_NAME)
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


def check_daemon(
    sock: _Socket, path: str | os.PathLike[str], trusted: frozenset[int]
) -> None:
    """Raise ``UntrustedDaemon`` unless the peer of ``sock`` runs as a
    trusted uid; called before a byte is sent."""
    raw = sock.getsockopt(SOL_SOCKET, SO_PEERCRED, _UCRED_SIZE)
    uid = int.from_bytes(raw[4:8], sys.byteorder, signed=True)
    if uid not in trusted:
        msg = (
            f"the socket {path} is served by uid {uid}, which is neither root, "
            f"you, nor a daemon user you named ({DAEMON_USER_ENV_VAR} or "
            "--daemon-user); refusing to send it anything"
        )
        raise UntrustedDaemon(msg)
