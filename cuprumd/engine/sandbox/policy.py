"""What the sandbox allows, as plain data: the policy and its rules.

``build_policy`` turns settings into a ``SandboxPolicy``, reading only ELF
and script headers (to find interpreters) and checking that configured
paths exist and keep clear of ``state_dir``; ``policy_rules`` turns that
into ``(path, rights)`` pairs. Beyond those headers nothing is read and no
Landlock call is made, so every decision can be tested without a kernel
that has Landlock.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cuprumd.engine.sandbox.interpreters import _program_files
from cuprumd.engine.sandbox.landlock import (
    _FS_EXEC_MODE,
    FS_ALL,
    FS_EXECUTE,
    FS_IOCTL_DEV,
    FS_READ,
    FS_READ_FILE,
    FS_TRUNCATE,
    FS_WRITE,
    FS_WRITE_FILE,
)
from cuprumd.errors import ConfigError

__all__ = [
    "READ_DEVICES",
    "REQUIRED_ABI",
    "RISKY_PROGRAMS",
    "SYSTEM_READ_PATHS",
    "WRITE_DEVICES",
    "SandboxMode",
    "SandboxPolicy",
    "build_policy",
    "policy_rules",
    "risky_programs",
]

#: ``strict``: exec, write and read rules; ``exec``: exec and write rules
#: only; ``off``: no sandbox.
SandboxMode = Literal["strict", "exec", "off"]

#: Scoping (signals, abstract sockets) arrived with ABI 6; without it a job
#: could signal the daemon or reach any abstract socket on the host.
REQUIRED_ABI: Final = 6

#: Where programs find their libraries, locale data and configuration.
#: Missing ones are skipped, so the list can name every usual layout.
SYSTEM_READ_PATHS: tuple[str, ...] = (
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/bin", "/sbin",
)  # fmt: skip

#: Devices a stage may open for reading; none of them leaks anything.
READ_DEVICES: tuple[str, ...] = (
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
)  # fmt: skip

#: Devices a stage may open for writing: sinks that store nothing.
WRITE_DEVICES: tuple[str, ...] = ("/dev/null", "/dev/full")

#: Programs that run other programs, write files they are given names of, or
#: reach other processes. With ``sandbox = "off"`` nothing but the allowlist
#: stands between a client and the daemon's identity, and for these names the
#: allowlist alone promises nothing.
RISKY_PROGRAMS: frozenset[str] = frozenset(
    {
        # interpreters and shells
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "csh", "tcsh",
        "fish", "busybox", "toybox", "perl", "python", "python2", "python3",
        "pypy", "pypy3", "ruby", "irb", "node", "nodejs", "deno", "bun", "php",
        "lua", "luajit", "tclsh", "wish", "expect", "Rscript", "R", "julia",
        "java", "jshell", "guile", "racket", "ghci", "ocaml", "scala",
        "pwsh", "osascript",
        # languages in disguise: text tools that can run commands or write
        "awk", "gawk", "mawk", "nawk", "sed", "m4", "dc",
        "ed", "ex", "red", "vim", "vi", "nvim", "view", "vimdiff", "emacs",
        "nano", "pico", "joe", "mg", "less", "more", "most", "man", "info",
        "pager", "sqlite3", "psql", "mysql", "gdb", "lldb", "strace",
        "ltrace", "valgrind",
        # programs that start other programs
        "env", "xargs", "find", "parallel", "nice", "nohup", "timeout",
        "stdbuf", "setsid", "time", "watch", "flock", "script", "chroot",
        "unshare", "nsenter", "su", "sudo", "doas", "runuser", "setpriv",
        "ionice", "taskset", "chrt", "prlimit", "systemd-run", "dbus-send",
        "busctl", "systemctl", "at", "batch", "crontab", "make", "cmake",
        "ninja", "gcc", "cc", "g++", "clang", "git", "hg", "svn", "ssh",
        "scp", "sftp", "rsync", "screen", "tmux", "xdg-open", "sensible-pager",
        "run-parts", "start-stop-daemon", "dpkg", "apt", "apt-get", "rpm",
        "pip", "pip3", "npm", "npx", "gem", "cargo",
        # programs that write files by name
        "sort", "uniq", "shuf", "tee", "dd", "split", "csplit", "ptx",
        "iconv", "xxd", "uudecode", "sponge", "tar", "cpio", "pax", "zip",
        "unzip", "gzip", "gunzip", "zcat", "bzip2", "bunzip2", "xz", "unxz",
        "zstd", "lz4", "7z", "ar", "cp", "mv", "rm", "ln", "link", "unlink",
        "mkdir", "rmdir", "touch", "install", "chmod", "chown", "chgrp",
        "truncate", "shred", "mktemp", "mkfifo", "mknod", "patch", "openssl",
        "gpg", "curl", "wget", "pandoc", "convert", "magick", "ffmpeg",
        "exiftool", "ld", "objcopy", "strip",
        # programs that reach other processes or the network
        "kill", "pkill", "killall", "nc", "ncat", "netcat", "socat",
        "telnet", "ftp",
    }
)  # fmt: skip


def _within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies beneath it (both normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _effective(paths: Iterable[str]) -> tuple[str, ...]:
    """The paths as configured plus where their symlinks lead.

    Rules land on the real inode, so the real path is what the sandbox
    allows; the configured spelling is kept too, because clients name
    working directories the way the operator does. A real path already
    covered by a real (symlink-free) entry adds nothing and is left out.
    """
    named = [os.path.normpath(p) for p in paths]
    real = [os.path.realpath(p) for p in named]
    roots = [n for n, r in zip(named, real, strict=True) if n == r]
    out = list(named)
    for r in real:
        if not any(_within(r, root) for root in roots):
            out.append(r)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class SandboxPolicy:
    """What the sandbox allows, as absolute paths; no descriptors, no kernel.

    ``executables`` are real paths: the allowlisted programs and the
    interpreters they need. ``readable`` is empty in ``exec`` mode, where
    reading is not restricted at all. Devices and the network rules do not
    depend on settings and are not repeated here.
    """

    mode: SandboxMode
    executables: tuple[str, ...] = ()
    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def allows_cwd(self, cwd: str) -> bool:
        """Whether a job may start in ``cwd`` without tripping over the sandbox.

        A courtesy, not a guard: the kernel enforces the sandbox whatever
        this says, but a job refused up front with a message beats one whose
        every relative open fails with EACCES. Only ``strict`` restricts
        reading, so only there can a directory be unusable. Judged on the
        path as written, without touching the file system, so a symlink can
        fool it; the kernel then has the last word.
        """
        if self.mode != "strict":
            return True
        if not os.path.isabs(cwd):
            return False
        path = os.path.normpath(cwd)
        return any(_within(path, root) for root in (*self.readable, *self.writable))

    def describe(self) -> dict[str, object]:
        """The sandbox in plain terms, for ``check-config`` and the start-up log."""
        if self.mode == "off":
            return {"mode": "off", "enforced": False}
        return {
            "mode": self.mode,
            "enforced": True,
            "reads": "restricted" if self.mode == "strict" else "unrestricted",
            "executables": list(self.executables),
            "readable": list(self.readable),
            "writable": list(self.writable),
            "devices": {
                "read": list(READ_DEVICES) if self.mode == "strict" else [],
                "write": list(WRITE_DEVICES),
            },
            "tcp": "denied",
            "scoped": ["abstract_unix_socket", "signal"],
        }


def _existing(key: str, paths: Iterable[Path | str]) -> list[str]:
    found = []
    for path in paths:
        text = os.fspath(path)
        if not os.path.isabs(text):
            msg = f"{key}: {text} is not an absolute path"
            raise ConfigError(msg)
        if not os.path.exists(text):
            msg = (
                f"{key}: {text} does not exist; a Landlock rule can only be "
                "attached to an existing file or directory"
            )
            raise ConfigError(msg)
        found.append(text)
    return found


def _check_state_dir(
    mode: SandboxMode, state_dir: Path | str, exposed: list[tuple[str, str]]
) -> None:
    """Refuse settings that let jobs reach the daemon's state.

    Landlock can only add access beneath a path, never take some back for a
    subpath, so a state directory inside an allowed tree cannot be hidden.
    """
    state = os.path.realpath(state_dir)
    for key, path in exposed:
        real = os.path.realpath(path)
        if key == "system" and (_within(state, real) or _within(real, state)):
            msg = (
                f"state_dir: {state_dir} overlaps {path}, which "
                f'sandbox = "{mode}" lets every job read; Landlock cannot hide '
                "a subpath of an allowed one, so move state_dir (for example to "
                "/var/lib/cuprumd)"
            )
            raise ConfigError(msg)
        if _within(state, real):
            msg = (
                f"{key}: {path} contains state_dir {state_dir}, so every job "
                "could reach the daemon's state (Landlock cannot hide a subpath "
                f"of an allowed one); narrow {key} or move state_dir"
            )
            raise ConfigError(msg)
        if _within(real, state):
            msg = (
                f"{key}: {path} lies inside state_dir {state_dir}, so every job "
                f"could reach the daemon's state; remove it from {key} or move "
                "state_dir"
            )
            raise ConfigError(msg)


def build_policy(
    mode: SandboxMode,
    executables: Iterable[str],
    *,
    readable_paths: Iterable[Path | str] = (),
    writable_paths: Iterable[Path | str] = (),
    state_dir: Path | str | None = None,
) -> SandboxPolicy:
    """Turn settings into the paths the sandbox allows.

    Reads the headers of ``executables`` (absolute paths) to find the
    interpreters they need; checks that configured paths exist and that
    none of them exposes ``state_dir``.

    Raises
    ------
    ConfigError
        Naming ``readable_paths``, ``writable_paths``, ``state_dir`` or
        ``programs`` and what to change.
    """
    if mode == "off":
        return SandboxPolicy(mode="off")
    programs: list[str] = []
    for executable in executables:
        programs.extend(_program_files(executable))
    writable = _existing("writable_paths", writable_paths)
    exposed = [("writable_paths", path) for path in writable]
    readable: list[str] = []
    if mode == "strict":
        system = [path for path in SYSTEM_READ_PATHS if os.path.exists(path)]
        readable = [*system, *_existing("readable_paths", readable_paths)]
        exposed += [("system", path) for path in system]
        exposed += [("readable_paths", path) for path in readable[len(system) :]]
    if state_dir is not None:
        _check_state_dir(mode, state_dir, exposed)
    return SandboxPolicy(
        mode=mode,
        executables=tuple(dict.fromkeys(programs)),
        readable=_effective(readable),
        writable=_effective(writable),
    )


def _handled_fs(mode: SandboxMode) -> int:
    return FS_ALL if mode == "strict" else _FS_EXEC_MODE


def policy_rules(policy: SandboxPolicy) -> list[tuple[str, int]]:
    """``(path, rights)`` pairs for the ruleset, before per-file masking.

    Rights beyond what the mode handles are dropped here, so ``exec`` never
    asks for read rights the ruleset does not handle (the kernel would
    refuse the rule). A program gets ``READ_FILE`` besides ``EXECUTE``
    because the kernel opens it for reading to load it.
    """
    if policy.mode == "off":
        return []
    handled = _handled_fs(policy.mode)
    pairs: list[tuple[str, int]] = []
    pairs += [(path, FS_EXECUTE | FS_READ_FILE) for path in policy.executables]
    pairs += [(path, FS_READ) for path in policy.readable]
    for device in READ_DEVICES:
        rights = FS_READ_FILE | FS_IOCTL_DEV
        if device in WRITE_DEVICES:
            rights |= FS_WRITE_FILE | FS_TRUNCATE
        pairs.append((device, rights))
    pairs += [(path, FS_READ | FS_WRITE) for path in policy.writable]
    return [(path, rights & handled) for path, rights in pairs if rights & handled]


def risky_programs(names: Iterable[str]) -> list[str]:
    """The names (or paths) that the allowlist alone cannot contain.

    A path is judged by its base name, and a versioned name like
    ``python3.12`` by its stem, in the order given and without repeats.
    """
    found: dict[str, None] = {}
    for name in names:
        base = os.path.basename(name)
        if base in RISKY_PROGRAMS or base.rstrip("0123456789.-") in RISKY_PROGRAMS:
            found[name] = None
    return list(found)
