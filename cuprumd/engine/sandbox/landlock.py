"""The Landlock kernel interface: ABI constants, system calls, ``Ruleset``.

Python has no binding for Landlock, so its three system calls (and the
``prctl`` that must come before ``landlock_restrict_self``) are reached
through ctypes here and nowhere else, with the rights numbered as in
``include/uapi/linux/landlock.h`` and the sets of them the sandbox grants.
Which path gets which rights is ``policy``'s decision.
"""

from __future__ import annotations

import ctypes
import functools
import os
from types import TracebackType
from typing import Final

__all__ = ["Ruleset", "landlock_abi", "restrict_self"]

# Landlock ABI values (include/uapi/linux/landlock.h).
FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_REMOVE_DIR: Final = 1 << 4
FS_REMOVE_FILE: Final = 1 << 5
FS_MAKE_CHAR: Final = 1 << 6
FS_MAKE_DIR: Final = 1 << 7
FS_MAKE_REG: Final = 1 << 8
FS_MAKE_SOCK: Final = 1 << 9
FS_MAKE_FIFO: Final = 1 << 10
FS_MAKE_BLOCK: Final = 1 << 11
FS_MAKE_SYM: Final = 1 << 12
FS_REFER: Final = 1 << 13
FS_TRUNCATE: Final = 1 << 14
FS_IOCTL_DEV: Final = 1 << 15
NET_BIND_TCP: Final = 1 << 0
NET_CONNECT_TCP: Final = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
SCOPE_SIGNAL: Final = 1 << 1

#: The only rights the kernel accepts in a rule on a non-directory.
FS_FILE_RIGHTS: Final = (
    FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
)
FS_READ: Final = FS_READ_FILE | FS_READ_DIR
#: What a writable path grants beyond reading. Special files (devices,
#: sockets, FIFOs) and symlinks stay out: a job has no use for them.
FS_WRITE: Final = (
    FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_REG
    | FS_MAKE_DIR
    | FS_TRUNCATE
    | FS_REFER
)
_FS_ALL_ABI1: Final = (1 << 13) - 1
FS_ALL: Final = _FS_ALL_ABI1 | FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV
#: "exec" leaves reading (and device ioctls) to the daemon user's permissions.
_FS_EXEC_MODE: Final = _FS_ALL_ABI1 & ~FS_READ | FS_REFER | FS_TRUNCATE

_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LANDLOCK_ADD_RULE: Final = 445
_SYS_LANDLOCK_RESTRICT_SELF: Final = 446
_LANDLOCK_CREATE_RULESET_VERSION: Final = 1
_LANDLOCK_RULE_PATH_BENEATH: Final = 1
_PR_SET_NO_NEW_PRIVS: Final = 38


def fs_rights_for_abi(abi: int) -> int:
    """File-system rights a kernel of this ABI knows; asking for more is EINVAL."""
    if abi < 1:
        return 0
    rights = _FS_ALL_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _ruleset_attr_size(abi: int) -> int:
    """The kernel rejects fields it does not know, so send only those it does."""
    if abi >= 6:
        return 24
    if abi >= 4:
        return 16
    return 8


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_create_ruleset = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.POINTER(_RulesetAttr),
    ctypes.c_size_t,
    ctypes.c_uint32,
    use_errno=True,
)(("syscall", _libc))
_add_rule = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_PathBeneathAttr),
    ctypes.c_uint32,
    use_errno=True,
)(("syscall", _libc))
_restrict_self = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_uint32, use_errno=True
)(("syscall", _libc))
prctl = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    use_errno=True,
)(("prctl", _libc))


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI this kernel offers; 0 when Landlock is unavailable.

    Cached because the answer cannot change while the daemon runs; tests
    that fake it call ``landlock_abi.cache_clear()``.
    """
    version = _create_ruleset(
        _SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(version), 0)


class Ruleset:
    """A Landlock ruleset descriptor, close-on-exec, owned by the daemon.

    Children inherit it across ``fork`` and lose it at ``execve``; the
    daemon closes it once, when the ruleset is replaced or at shutdown.
    """

    def __init__(self, fd: int, abi: int) -> None:
        self.fd = fd
        self.abi = abi

    def close(self) -> None:
        """Close the descriptor; later calls do nothing."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self.fd < 0

    def __enter__(self) -> Ruleset:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ruleset(fd={self.fd}, abi={self.abi})"


def _add_fd_rule(ruleset_fd: int, attr: _PathBeneathAttr, path: str) -> None:
    result = _add_rule(
        _SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, attr, 0
    )
    if result < 0:
        raise _os_error(f"landlock_add_rule({path})")


def restrict_self(ruleset_fd: int) -> None:
    """Confine the calling process (and all it will start) to the ruleset.

    For a forked child just before ``execve``. ``no_new_privs`` comes first
    because the kernel demands it of unprivileged callers, and because a
    setuid program must not run with the daemon's job's privileges raised.

    Raises
    ------
    OSError
        With the errno of the failing call.
    """
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _os_error("prctl(PR_SET_NO_NEW_PRIVS)")
    if _restrict_self(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) != 0:
        raise _os_error("landlock_restrict_self")
