"""From a policy to Landlock rulesets: the one part that opens rule targets.

The daemon builds a ``Sandbox`` once per policy (at start-up and on
reload): it opens every rule's target once and then hands each job a fresh
ruleset, its scratch directory included, for a handful of system calls.
``create_ruleset`` does the same once, for ``check-config``.
"""

from __future__ import annotations

import os
import stat

from cuprumd.engine.sandbox.landlock import (
    _SYS_LANDLOCK_CREATE_RULESET,
    FS_FILE_RIGHTS,
    FS_READ,
    FS_WRITE,
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    SCOPE_SIGNAL,
    Ruleset,
    _add_fd_rule,
    _create_ruleset,
    _os_error,
    _PathBeneathAttr,
    _ruleset_attr_size,
    _RulesetAttr,
    fs_rights_for_abi,
    landlock_abi,
)
from cuprumd.engine.sandbox.policy import (
    READ_DEVICES,
    REQUIRED_ABI,
    SandboxMode,
    SandboxPolicy,
    _handled_fs,
    policy_rules,
)
from cuprumd.errors import ConfigError

__all__ = ["Sandbox", "create_ruleset", "open_sandbox"]


def _abi_error(mode: SandboxMode, abi: int) -> ConfigError:
    found = (
        "this kernel has Landlock disabled or unsupported (ABI 0)"
        if abi == 0
        else f"this kernel offers Landlock ABI {abi}"
    )
    return ConfigError(
        f'sandbox: sandbox = "{mode}" needs Landlock ABI {REQUIRED_ABI} or newer '
        f"(Linux 6.12+, for signal and abstract-socket scoping), but {found}; "
        "upgrade the kernel, enable Landlock (lsm=...,landlock), or set "
        'sandbox = "off" to run jobs with the allowlist as the only restriction'
    )


def _open_target(path: str) -> int | None:
    """An ``O_PATH`` descriptor naming ``path``'s inode, for its rule."""
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        if path in READ_DEVICES:
            return None
        msg = f"sandbox: {path} disappeared before its Landlock rule could be added"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"sandbox: cannot open {path} for its Landlock rule: {exc.strerror}"
        raise ConfigError(msg) from None


class Sandbox:
    """A policy's rule targets, opened once; a fresh ruleset per job.

    Each job gets its own ruleset because each has its own scratch
    directory; keeping the targets open makes that a handful of system
    calls instead of a walk over every path. The one owner of those
    descriptors: ``close`` releases them.
    """

    def __init__(self, policy: SandboxPolicy) -> None:
        abi = landlock_abi()
        if abi < REQUIRED_ABI:
            raise _abi_error(policy.mode, abi)
        self.policy = policy
        self.abi = abi
        self._handled = _handled_fs(policy.mode) & fs_rights_for_abi(abi)
        self._targets: list[tuple[int, _PathBeneathAttr, str]] = []
        try:
            for path, rights in policy_rules(policy):
                self._add_target(path, rights)
        except BaseException:
            self.close()
            raise

    def _add_target(self, path: str, rights: int) -> None:
        rights &= self._handled
        if not rights:
            return
        target = _open_target(path)
        if target is None:
            return
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            rights &= FS_FILE_RIGHTS
        if rights:
            attr = _PathBeneathAttr(allowed_access=rights, parent_fd=target)
            self._targets.append((target, attr, path))
        else:
            os.close(target)

    def ruleset(self, scratch: str | None = None) -> Ruleset:
        """A new ruleset: the policy, plus full rights beneath ``scratch``."""
        abi = self.abi
        handled = _RulesetAttr(
            handled_access_fs=self._handled,
            handled_access_net=NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
            scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
        )
        fd = int(
            _create_ruleset(
                _SYS_LANDLOCK_CREATE_RULESET, handled, _ruleset_attr_size(abi), 0
            )
        )
        if fd < 0:
            raise _os_error("landlock_create_ruleset")
        ruleset = Ruleset(fd, abi)
        try:
            for _target, attr, path in self._targets:
                _add_fd_rule(fd, attr, path)
            if scratch is not None:
                target = os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    rights = (FS_READ | FS_WRITE) & self._handled
                    own = _PathBeneathAttr(allowed_access=rights, parent_fd=target)
                    _add_fd_rule(fd, own, scratch)
                finally:
                    os.close(target)
        except BaseException:
            ruleset.close()
            raise
        return ruleset

    def close(self) -> None:
        """Release every target descriptor (idempotent)."""
        targets, self._targets = self._targets, []
        for target, _attr, _path in targets:
            os.close(target)


def open_sandbox(policy: SandboxPolicy) -> Sandbox | None:
    """The daemon's sandbox for ``policy``; None when the mode is ``off``.

    Every right the ABI knows for the mode is handled (so anything without a
    rule is denied); TCP bind and connect are handled with no rule at all,
    and signals and abstract Unix sockets are scoped to the job's own
    processes.

    Raises
    ------
    ConfigError
        When the kernel's Landlock ABI is below ``REQUIRED_ABI`` or a path
        cannot be opened.
    """
    if policy.mode == "off":
        return None
    return Sandbox(policy)


def create_ruleset(policy: SandboxPolicy, scratch: str | None = None) -> Ruleset | None:
    """One ruleset for ``policy`` (see ``open_sandbox``), for one-off use."""
    sandbox = open_sandbox(policy)
    if sandbox is None:
        return None
    try:
        return sandbox.ruleset(scratch)
    finally:
        sandbox.close()
