"""Who is on the other end of a connection, and whether they may use us.

The kernel vouches for the peer (``SO_PEERCRED``), so this cannot be
spoofed by the client; the admission rule itself is a pure function.
"""

from __future__ import annotations

import errno
import platform
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Peer", "is_peer_allowed", "peer_credentials"]

_UCRED = struct.Struct("3i")
#: ``SO_PEERGROUPS`` (Linux >= 4.13) is missing from Python's socket module;
#: its number is 59 on the architectures that use the generic socket ABI.
_SO_PEERGROUPS: int | None = getattr(socket, "SO_PEERGROUPS", None) or (
    59 if platform.machine() in {"x86_64", "aarch64", "riscv64"} else None
)
_MAX_GROUPS = 65536


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True)
class Peer:
    """A connected client as the kernel reports it.

    ``groups`` are the supplementary groups, so a user admitted through a
    group they belong to (the socket's group) is recognised even when it is
    not their primary one.
    """

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def as_log(self) -> dict[str, int]:
        """Fields logged with every job."""
        return {"peer_uid": self.uid, "peer_gid": self.gid, "peer_pid": self.pid}


def is_peer_allowed(
    peer: Peer,
    allowed_uids: Collection[int] | None,
    allowed_gids: Collection[int],
    daemon_uid: int,
) -> bool:
    """A peer is admitted by its uid or by any of its groups.

    With no ``allowed_uids`` configured only the daemon's own user and root
    are trusted: nothing else may spawn programs as the daemon's user
    unless an operator said so.
    """
    uids = {daemon_uid, 0} if allowed_uids is None else set(allowed_uids)
    if peer.uid in uids:
        return True
    return any(gid in allowed_gids for gid in (peer.gid, *peer.groups))


def _groups(sock: _HasSockopt) -> tuple[int, ...]:
    if _SO_PEERGROUPS is None:
        return ()
    raw = b""
    for size in (64, _MAX_GROUPS):  # most users have few groups
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size * 4)
            break
        except OSError as exc:
            if exc.errno != errno.ERANGE:
                return ()
    count = len(raw) // 4
    return struct.unpack(f"{count}I", raw[: count * 4])


def peer_credentials(sock: _HasSockopt) -> Peer:
    """Read the peer of a connected ``AF_UNIX`` socket.

    Raises
    ------
    OSError
        If the socket has no peer credentials (not a Unix socket).
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid, groups=_groups(sock))
