"""Where the daemon listens by default, shared by the daemon and its clients.

Its own module so that a client can find the socket without importing the
daemon's settings model (and pydantic-settings with it); clients import
it for ``SOCKET_NAME`` alone, so pathlib is loaded only by the daemon's
functions below.
"""

from __future__ import annotations

import os

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["SOCKET_NAME", "default_socket_path", "default_state_dir"]

SOCKET_NAME = "cuprumd.sock"


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """Pick the socket path the daemon and its clients agree on by default.

    systemd's ``RuntimeDirectory=`` comes first (it may list several
    directories, separated by colons: the first is ours), then the user's
    runtime directory, then a per-uid directory under /tmp so two users never
    collide.
    """
    from pathlib import Path  # noqa: PLC0415 (see the module docstring)

    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / SOCKET_NAME
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return Path(xdg) / "cuprumd" / SOCKET_NAME
    return Path(f"/tmp/cuprumd-{os.getuid()}") / SOCKET_NAME


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """systemd's ``StateDirectory=`` (the first listed), or none: without a
    state directory the daemon keeps nothing across restarts."""
    from pathlib import Path  # noqa: PLC0415 (see the module docstring)

    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else None
