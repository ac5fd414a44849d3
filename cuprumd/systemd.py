"""The two systemd protocols the daemon speaks, without libsystemd.

``sd_notify`` is one datagram to ``$NOTIFY_SOCKET``; socket activation is a
pair of environment variables and fd 3. Both sets of variables are removed
from the process environment once read, so no child can ever see them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = [
    "LISTEN_FDS_START",
    "Notifier",
    "activation_fd_count",
    "notify_address",
    "take_activated_socket",
    "watchdog_interval",
]

LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_address(raw: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address.

    A leading ``@`` names the abstract namespace (a NUL byte on the wire);
    anything that is neither a path nor abstract is ignored, as systemd
    itself ignores it.
    """
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half the watchdog timeout.

    ``None`` when no watchdog is armed for this process (``WATCHDOG_PID``,
    when present, must be ours).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 2 / 1_000_000


def activation_fd_count(environ: Mapping[str, str], pid: int) -> int:
    """How many sockets systemd passed us (0 when they were for another pid)."""
    if environ.get("LISTEN_PID", "") != str(pid):
        return 0
    count = environ.get("LISTEN_FDS", "")
    return int(count) if count.isdigit() else 0


def take_activated_socket(environ: MutableMapping[str, str]) -> socket.socket | None:
    """Adopt fd 3 when systemd activated us, and forget ``LISTEN_*``.

    The descriptor is made close-on-exec (systemd hands it over without)
    and non-blocking for the event loop.
    """
    count = activation_fd_count(environ, os.getpid())
    for name in _LISTEN_VARS:
        environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=LISTEN_FDS_START)
    sock.set_inheritable(False)
    sock.settimeout(0.0)  # non-blocking, for the event loop
    for extra in range(LISTEN_FDS_START + 1, LISTEN_FDS_START + count):
        with contextlib.suppress(OSError):  # only the first socket is ours
            os.close(extra)
    return sock


@dataclass
class Notifier:
    """Sends state changes to the service manager; a no-op outside systemd.

    Failures are swallowed on purpose: a missing supervisor must never take
    the daemon down. ``send`` reports whether the datagram left.
    """

    address: str | bytes | None
    watchdog: float | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Read and remove ``NOTIFY_SOCKET`` and ``WATCHDOG_*``."""
        address = notify_address(environ.get("NOTIFY_SOCKET", ""))
        watchdog = watchdog_interval(environ, os.getpid())
        for name in _NOTIFY_VARS:
            environ.pop(name, None)
        return cls(address, watchdog)

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` becomes ``READY=1``)."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.0)  # non-blocking: never stall the loop
                sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        return True
