"""The Landlock sandbox every stage runs in: policy, ruleset and the restriction.

The allowlist only decides what ``argv[0]`` may be; a program can still run
others, write files it is given names of, or talk to the network. Landlock
makes the allowlist hold for every descendant, because the kernel checks each
``execve``, ``open``, ``connect`` and ``kill`` against a ruleset the process
cannot shed. The ruleset is built once per daemon (and again on reload) and
its descriptor handed to every spawn, so a job pays one ``landlock_restrict_self``
and no file-system walk.

The work is split so that the rules can be tested without a kernel:
``build_policy`` turns settings into plain data (reading only ELF and script
headers to find interpreters), ``policy_rules`` turns that into
``(path, rights)`` pairs, and ``create_ruleset`` is the only part that makes
Landlock system calls.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from cuprumd.errors import ConfigError

__all__ = [
    "READ_DEVICES",
    "REQUIRED_ABI",
    "RISKY_PROGRAMS",
    "SYSTEM_READ_PATHS",
    "WRITE_DEVICES",
    "Ruleset",
    "Sandbox",
    "SandboxMode",
    "SandboxPolicy",
    "build_policy",
    "create_ruleset",
    "elf_interpreter",
    "landlock_abi",
    "open_sandbox",
    "policy_rules",
    "restrict_self",
    "risky_programs",
    "shebang_interpreter",
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

_ELF_MAGIC: Final = b"\x7fELF"
_PT_INTERP: Final = 3
_PN_XNUM: Final = 0xFFFF
#: The kernel reads this much of a file to find ``#!`` and its interpreter.
_BINPRM_BUF_SIZE: Final = 256
#: ``#!`` lines followed per program, and interpreters at most; see
#: ``_program_files``.
_SHEBANG_DEPTH: Final = 1
_INTERPRETER_CHAIN: Final = 4


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


# ---------------------------------------------------------------- interpreters


@dataclass(frozen=True)
class _ElfClass:
    """Where the fields we need sit in a 32- or 64-bit ELF file."""

    header_size: int
    phoff: tuple[str, int]
    shoff: tuple[str, int]
    phentsize: int
    phnum: int
    ph_min: int
    ph_offset: tuple[str, int]
    ph_filesz: tuple[str, int]
    sh_min: int
    sh_info: int


_ELF32 = _ElfClass(52, ("I", 28), ("I", 32), 42, 44, 32, ("I", 4), ("I", 16), 40, 28)
_ELF64 = _ElfClass(64, ("Q", 32), ("Q", 40), 54, 56, 56, ("Q", 8), ("Q", 32), 64, 44)


def _field(image: bytes | mmap.mmap, order: str, code: str, offset: int) -> int:
    fmt = order + code
    if offset < 0 or offset + struct.calcsize(fmt) > len(image):
        msg = f"truncated ELF: field at {offset} lies beyond {len(image)} bytes"
        raise ValueError(msg)
    value: int = struct.unpack_from(fmt, image, offset)[0]
    return value


def elf_interpreter(image: bytes | mmap.mmap) -> str | None:
    """Return the ``PT_INTERP`` path an ELF file names, or None.

    The kernel opens that interpreter for the program, and Landlock checks
    it like the program itself, so it needs the same rights. None means a
    static binary or not an ELF file at all. ``image`` is the whole file
    (a ``mmap`` is fine); a header pointing outside it raises ``ValueError``,
    as the kernel would refuse to run such a file.
    """
    if image[:4] != _ELF_MAGIC:
        return None
    if len(image) < 16:
        msg = "truncated ELF identification"
        raise ValueError(msg)
    layout = {1: _ELF32, 2: _ELF64}.get(image[4])
    order = {1: "<", 2: ">"}.get(image[5])
    if layout is None or order is None:
        msg = f"unknown ELF class {image[4]} or byte order {image[5]}"
        raise ValueError(msg)
    phoff = _field(image, order, *layout.phoff)
    phentsize = _field(image, order, "H", layout.phentsize)
    phnum = _field(image, order, "H", layout.phnum)
    if phnum == _PN_XNUM:
        shoff = _field(image, order, *layout.shoff)
        phnum = _field(image, order, "I", shoff + layout.sh_info)
    if phnum and phentsize < layout.ph_min:
        msg = f"ELF program header entries of {phentsize} bytes are too small"
        raise ValueError(msg)
    for index in range(phnum):
        entry = phoff + index * phentsize
        if _field(image, order, "I", entry) != _PT_INTERP:
            continue
        start = _field(image, order, layout.ph_offset[0], entry + layout.ph_offset[1])
        size = _field(image, order, layout.ph_filesz[0], entry + layout.ph_filesz[1])
        if size == 0 or start + size > len(image):
            msg = f"ELF interpreter at {start}+{size} lies outside the file"
            raise ValueError(msg)
        name = bytes(image[start : start + size]).split(b"\0", 1)[0]
        if not name:
            msg = "ELF names an empty interpreter"
            raise ValueError(msg)
        return os.fsdecode(name)
    return None


def shebang_interpreter(head: bytes) -> str | None:
    """Return the interpreter a ``#!`` line names, as the kernel reads it.

    ``head`` is the file's first 256 bytes (fewer if the file is shorter).
    Like ``binfmt_script``: the name starts after blanks and ends at a
    blank, NUL or newline; a first line that fills the buffer without ending
    the name is refused (None), because the name may have been cut off.
    """
    buf = head[:_BINPRM_BUF_SIZE].ljust(_BINPRM_BUF_SIZE, b"\0")
    if not buf.startswith(b"#!"):
        return None
    newline = buf.find(b"\n")
    line = buf[2:] if newline < 0 else buf[2:newline]
    line = line.lstrip(b" \t")
    end = next((i for i, byte in enumerate(line) if byte in b" \t\0"), None)
    if end is None:
        if newline < 0:
            return None
        end = len(line)
    name = line[:end]
    return os.fsdecode(name) if name else None


def _interpreter_of(path: str) -> tuple[str | None, bool]:
    """The interpreter ``execve(path)`` would open, and whether via ``#!``.

    A file the kernel would refuse to run (a malformed ELF, a script without
    an interpreter) yields None: no extra rule makes it runnable.
    """
    with open(path, "rb") as fh:
        head = fh.read(_BINPRM_BUF_SIZE)
        if head.startswith(b"#!"):
            return shebang_interpreter(head), True
        if not head.startswith(_ELF_MAGIC):
            return None, False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as image:
            try:
                return elf_interpreter(image), False
            except ValueError:
                return None, False


def _program_files(executable: str) -> list[str]:
    """The program and every interpreter its ``execve`` opens (real paths).

    An ELF program brings its dynamic loader. A ``#!`` script brings its
    interpreter and, since that is usually an ELF binary, the interpreter's
    loader. Only one ``#!`` is followed: a script whose interpreter is
    itself a script is rare enough that allowlisting the inner interpreter
    explicitly is the clearer way to run it. A relative or missing
    interpreter is skipped: the program would fail without a sandbox too.
    """
    real = os.path.realpath(executable)
    files = [real]
    shebangs = 0
    while len(files) <= _INTERPRETER_CHAIN:
        try:
            interpreter, via_shebang = _interpreter_of(files[-1])
        except OSError as exc:
            if len(files) > 1:
                break
            msg = (
                f"programs: cannot read {executable} to find its interpreter: "
                f"{exc.strerror}"
            )
            raise ConfigError(msg) from None
        shebangs += via_shebang
        if interpreter is None or not os.path.isabs(interpreter):
            break
        if shebangs > _SHEBANG_DEPTH:
            break
        target = os.path.realpath(interpreter)
        if target in files or not os.path.isfile(target):
            break
        files.append(target)
    return files


# ---------------------------------------------------------------------- policy


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


# ---------------------------------------------------------------------- kernel


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
_prctl = ctypes.CFUNCTYPE(
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


def _add_fd_rule(ruleset_fd: int, attr: _PathBeneathAttr, path: str) -> None:
    result = _add_rule(
        _SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, attr, 0
    )
    if result < 0:
        raise _os_error(f"landlock_add_rule({path})")


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
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _os_error("prctl(PR_SET_NO_NEW_PRIVS)")
    if _restrict_self(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) != 0:
        raise _os_error("landlock_restrict_self")


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
