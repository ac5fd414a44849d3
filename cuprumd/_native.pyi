"""Native stream pump (Rust, built from crates/cuprum-native).

Descriptors are borrowed, never closed, and must stay open for the call.
A transfer blocks with the GIL released. Errors: ``ValueError`` for a
negative descriptor or a ``buffer_size`` outside 1..=1 GiB; ``OSError``
carrying the real errno (``EBADF``, ...) for I/O failures, and ``EOPNOTSUPP``
for a descriptor the pump cannot serve (directory, eventfd, wrong access
mode), refused before any byte moves.
"""

from typing import final

@final
class TransferProgress:
    """Live counters of one ``rust_pump_transfer`` call, readable from any
    thread while it runs and after it was abandoned.

    Pass a fresh one to each transfer: the counts add up.
    """

    def __init__(self) -> None: ...
    @property
    def bytes(self) -> int:
        """Bytes the writer has accepted so far."""

    @property
    def method(self) -> str | None:
        """``"splice"`` or ``"copy"``; ``None`` until the pump has chosen."""

def rust_pump_transfer(
    reader_fd: int,
    writer_fd: int,
    *,
    buffer_size: int = 65536,
    progress: TransferProgress | None = None,
    pacing: bool = True,
) -> tuple[int, str, bool]:
    """Move bytes until EOF or until the consumer hangs up.

    Return ``(bytes, method, downstream_closed)``: ``method`` is
    ``"splice"`` or ``"copy"``; ``downstream_closed`` means the consumer
    closed its end first, and the reader is left undrained so the producer
    gets SIGPIPE once the caller closes it. ``progress``, when given, is
    updated after every chunk the writer accepts; when the call returns it
    agrees with the result. ``pacing=False`` turns off the short pauses
    that let data pile up in a large pipe between splices (kept only to
    measure the two side by side).
    """

def is_available() -> bool:
    """Whether ``splice(2)`` works in this process.

    Probed on the first call (a byte spliced from one pipe into another and
    read back, non-blocking) and cached; a probe that could not get
    descriptors answers ``False`` without caching. ``False`` does not mean
    the pump is unusable: ``rust_pump_transfer`` falls back to copying
    through a buffer when splice refuses a pair of descriptors. Importing
    this module is what tells whether the native pump exists.
    """

def spawn_stage(
    program: bytes,
    argv: list[bytes] | tuple[bytes, ...],
    envp: list[bytes] | tuple[bytes, ...],
    stdio: tuple[int, int, int],
    *,
    process_group: int = 0,
    cwd: bytes | None = None,
    cgroup_fd: int | None = None,
    user: tuple[int, int] | None = None,
    landlock_ruleset_fd: int | None = None,
    rlimits: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...] = (),
    parent_death_signal: bool = True,
) -> tuple[int, int]:
    """Start one pipeline stage; return ``(pid, pidfd)`` once it has exec'd.

    ``program`` is an absolute path (no PATH search); ``argv`` includes
    ``argv[0]``; ``envp`` holds ``b"K=V"``. ``stdio`` are descriptors of the
    caller that become the child's 0, 1 and 2 (any numbers, repeats
    allowed); all others are closed in the child, none in the caller. Before
    exec the child resets every signal disposition, leads
    (``process_group=0``) or joins a process group, is in the cgroup whose
    directory is ``cgroup_fd`` (created inside it), switches to ``user``
    (``(uid, gid)``, no supplementary groups), gets SIGKILL as parent-death
    signal (tied to the calling *thread*), applies ``rlimits``
    (``(resource, soft, hard)``, -1 for ``RLIM_INFINITY``), changes to
    ``cwd`` and restricts itself with ``landlock_ruleset_fd``. The caller
    owns the close-on-exec pidfd and must reap the child. The GIL is
    released while the child starts.

    Errors: ``ValueError`` for a NUL byte in a string; ``OSError(errno,
    message, step)`` (``PermissionError``, ``FileNotFoundError``, ...) when a
    step fails, with ``filename`` the step: ``"exec"``, ``"chdir"``,
    ``"cgroup"``, ``"landlock"``, ``"rlimit"``, ``"setpgid"``, ``"stdio"``,
    ``"pdeathsig"``, ``"signals"`` or ``"clone"``; the failed child has been
    reaped.
    """
