"""The Landlock sandbox: header parsing, the policy, and the kernel's verdicts."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cuprumd.engine import sandbox
from cuprumd.engine.sandbox import (
    REQUIRED_ABI,
    SandboxPolicy,
    build_policy,
    create_ruleset,
    elf_interpreter,
    landlock,
    landlock_abi,
    policy_rules,
    restrict_self,
    risky_programs,
    shebang_interpreter,
)
from cuprumd.engine.sandbox.landlock import (
    FS_EXECUTE,
    FS_READ_DIR,
    FS_READ_FILE,
    FS_WRITE_FILE,
)
from cuprumd.errors import ConfigError
from cuprumd.settings import DEFAULT_PROGRAMS

CAT = "/usr/bin/cat"


# ------------------------------------------------------------------ ELF headers


def make_elf(
    interp: bytes | None,
    *,
    bits: int = 64,
    order: str = "<",
    xnum: bool = False,
    interp_size: int | None = None,
) -> bytes:
    """An ELF file with a PT_LOAD and (optionally) a PT_INTERP header."""
    if bits == 64:
        ehdr, phdr, shdr = "HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ"
    else:
        ehdr, phdr, shdr = "HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII"
    ehsize = 16 + struct.calcsize(order + ehdr)
    phentsize = struct.calcsize(order + phdr)
    shentsize = struct.calcsize(order + shdr)
    count = 2 if interp is not None else 1
    phoff = ehsize
    shoff = phoff + count * phentsize if xnum else 0
    data_at = phoff + count * phentsize + (shentsize if xnum else 0)
    payload = interp or b""
    size = len(payload) if interp_size is None else interp_size

    def program_header(kind: int, offset: int, filesz: int) -> bytes:
        if bits == 64:
            return struct.pack(order + phdr, kind, 4, offset, 0, 0, filesz, filesz, 1)
        return struct.pack(order + phdr, kind, offset, 0, 0, filesz, filesz, 4, 1)

    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2, 1])
    header = ident.ljust(16, b"\0") + struct.pack(
        order + ehdr,
        3,
        62,
        1,
        0,
        phoff,
        shoff,
        0,
        ehsize,
        phentsize,
        0xFFFF if xnum else count,
        shentsize,
        1 if xnum else 0,
        0,
    )
    headers = program_header(1, 0, 0)
    if interp is not None:
        headers += program_header(3, data_at, size)
    section = b""
    if xnum:
        fields = [0] * 10
        fields[7] = count
        section = struct.pack(order + shdr, *fields)
    return header + headers + section + payload


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("order", ["<", ">"])
def test_crafted_elf_names_its_interpreter(bits: int, order: str) -> None:
    image = make_elf(b"/lib/ld-test.so.1\0", bits=bits, order=order)
    assert elf_interpreter(image) == "/lib/ld-test.so.1"


def test_interpreter_count_beyond_pn_xnum_comes_from_section_zero() -> None:
    assert elf_interpreter(make_elf(b"/lib/ld-x.so\0", xnum=True)) == "/lib/ld-x.so"


def test_static_elf_and_other_files_have_no_interpreter() -> None:
    assert elf_interpreter(make_elf(None)) is None
    assert elf_interpreter(b"#!/bin/sh\n") is None
    assert elf_interpreter(b"") is None


def test_interpreter_string_stops_at_nul() -> None:
    image = make_elf(b"/lib/ld.so\0garbage")
    assert elf_interpreter(image) == "/lib/ld.so"


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(make_elf(b"/lib/ld.so\0")[:40], id="header cut"),
        pytest.param(make_elf(b"/lib/ld.so\0")[:100], id="program headers cut"),
        pytest.param(make_elf(b"/lib/ld.so\0", interp_size=4096), id="string beyond"),
        pytest.param(make_elf(b"\0"), id="empty name"),
        pytest.param(b"\x7fELF\x03\x01" + bytes(100), id="unknown class"),
    ],
)
def test_malformed_elf_is_an_error(image: bytes) -> None:
    with pytest.raises(ValueError):
        elf_interpreter(image)


def test_real_dynamic_binary_names_a_loader_that_is_static() -> None:
    interpreter = elf_interpreter(Path(CAT).read_bytes())
    assert interpreter is not None
    assert os.path.isabs(interpreter)
    assert os.path.basename(interpreter).startswith("ld")
    assert elf_interpreter(Path(interpreter).read_bytes()) is None


# --------------------------------------------------------------------- shebangs


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"#!/bin/sh\necho hi\n", "/bin/sh"),
        (b"#! /usr/bin/env python3\n", "/usr/bin/env"),
        (b"#!\t/bin/bash -e\n", "/bin/bash"),
        (b"#!/bin/sh", "/bin/sh"),
        (b"#!/bin/sh\0junk\n", "/bin/sh"),
        (b"#!/bin/sh \n", "/bin/sh"),
        (b"#!\n/bin/sh\n", None),
        (b"#!   \n", None),
        (b"# !/bin/sh\n", None),
        (b"\x7fELF", None),
        (b"", None),
    ],
)
def test_shebang_interpreter(head: bytes, expected: str | None) -> None:
    assert shebang_interpreter(head) == expected


def test_shebang_name_cut_off_by_the_kernel_buffer_is_refused() -> None:
    long_name = b"#!/" + b"x" * 300 + b"\n"
    assert shebang_interpreter(long_name) is None
    ends_in_time = b"#!/" + b"x" * 200 + b" " + b"y" * 100 + b"\n"
    assert shebang_interpreter(ends_in_time) == "/" + "x" * 200


# ------------------------------------------------------------------- the policy


def write_script(path: Path, interpreter: str) -> Path:
    path.write_text(f"#!{interpreter}\nexit 0\n")
    path.chmod(0o755)
    return path


def cat_loader() -> str:
    interpreter = elf_interpreter(Path(CAT).read_bytes())
    assert interpreter is not None
    return os.path.realpath(interpreter)


def test_executables_are_real_paths_with_their_loader(tmp_path: Path) -> None:
    link = tmp_path / "kitty"
    link.symlink_to(CAT)
    policy = build_policy("strict", [str(link)])
    assert policy.executables == (os.path.realpath(CAT), cat_loader())


def test_script_brings_its_interpreter_and_the_interpreter_s_loader(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path / "s", "/bin/sh")
    policy = build_policy("exec", [str(script)])
    shell = os.path.realpath("/bin/sh")
    shell_loader = elf_interpreter(Path(shell).read_bytes())
    assert shell_loader is not None
    assert policy.executables == (
        str(script),
        shell,
        os.path.realpath(shell_loader),
    )


def test_only_one_shebang_is_followed(tmp_path: Path) -> None:
    inner = write_script(tmp_path / "inner", "/bin/sh")
    outer = write_script(tmp_path / "outer", str(inner))
    policy = build_policy("strict", [str(outer)])
    assert policy.executables == (str(outer), str(inner))


@pytest.mark.parametrize("interpreter", ["sh", "/nonexistent/interpreter"])
def test_unusable_interpreter_adds_nothing(tmp_path: Path, interpreter: str) -> None:
    script = write_script(tmp_path / "s", interpreter)
    assert build_policy("strict", [str(script)]).executables == (str(script),)


def test_unreadable_program_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^programs: .*missing"):
        build_policy("strict", [str(tmp_path / "missing")])


def test_duplicate_programs_and_shared_loaders_appear_once() -> None:
    policy = build_policy("strict", [CAT, "/usr/bin/head", CAT])
    assert len(policy.executables) == len(set(policy.executables)) == 3


def test_strict_reads_system_paths_that_exist_and_configured_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "nope")
    monkeypatch.setattr(
        "cuprumd.engine.sandbox.policy.SYSTEM_READ_PATHS", ("/usr", "/etc", missing)
    )
    data = tmp_path / "data"
    data.mkdir()
    policy = build_policy("strict", [CAT], readable_paths=[data])
    assert policy.readable == ("/usr", "/etc", str(data))


def test_exec_mode_restricts_no_reads(tmp_path: Path) -> None:
    policy = build_policy("exec", [CAT], readable_paths=[tmp_path])
    assert policy.readable == ()
    assert policy.describe()["reads"] == "unrestricted"


def test_off_allows_everything_and_reads_nothing() -> None:
    policy = build_policy("off", ["/nonexistent"], readable_paths=[Path("/x")])
    assert policy == SandboxPolicy(mode="off")
    assert policy.describe() == {"mode": "off", "enforced": False}
    assert create_ruleset(policy) is None


@pytest.mark.parametrize("key", ["readable_paths", "writable_paths"])
def test_missing_configured_path_names_its_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: .*does not exist"):
        build_policy("strict", [CAT], **{key: [tmp_path / "gone"]})


def test_symlinked_path_is_allowed_under_both_names(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    policy = build_policy("strict", [CAT], writable_paths=[alias])
    assert policy.writable == (str(alias), str(real))


def test_system_symlinks_into_usr_are_not_repeated() -> None:
    policy = build_policy("strict", [CAT])
    assert "/usr/lib" not in policy.readable
    assert "/usr" in policy.readable


# ----------------------------------------------------------- state_dir overlaps


def test_state_dir_under_a_system_path_is_refused_in_strict_mode() -> None:
    with pytest.raises(ConfigError, match=r"^state_dir: /etc/cuprumd/state .*/etc"):
        build_policy("strict", [CAT], state_dir=Path("/etc/cuprumd/state"))
    with pytest.raises(ConfigError, match=r"^state_dir: / overlaps /usr"):
        build_policy("strict", [CAT], state_dir=Path("/"))


def test_state_dir_under_a_system_path_is_fine_in_exec_mode() -> None:
    build_policy("exec", [CAT], state_dir=Path("/etc/cuprumd/state"))


@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_writable_path_containing_state_dir_is_refused(
    tmp_path: Path, mode: sandbox.SandboxMode
) -> None:
    with pytest.raises(ConfigError, match=r"^writable_paths: .*contains state_dir"):
        build_policy(
            mode, [CAT], writable_paths=[tmp_path], state_dir=tmp_path / "state"
        )


def test_readable_path_containing_state_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^readable_paths: .*contains state_dir"):
        build_policy("strict", [CAT], readable_paths=[tmp_path], state_dir=tmp_path)


def test_readable_path_inside_state_dir_is_refused(tmp_path: Path) -> None:
    inside = tmp_path / "state" / "results"
    inside.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^readable_paths: .*inside state_dir"):
        build_policy(
            "strict", [CAT], readable_paths=[inside], state_dir=tmp_path / "state"
        )


def test_overlap_is_judged_on_real_paths(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "var")
    with pytest.raises(ConfigError, match=r"^readable_paths: "):
        build_policy(
            "strict", [CAT], readable_paths=[alias], state_dir=tmp_path / "var" / "st"
        )


def test_a_sibling_sharing_a_prefix_is_no_overlap(tmp_path: Path) -> None:
    (tmp_path / "stat").mkdir()
    build_policy(
        "strict",
        [CAT],
        readable_paths=[tmp_path / "stat"],
        writable_paths=[tmp_path / "stat"],
        state_dir=tmp_path / "state",
    )


# ------------------------------------------------------------------- allows_cwd


def test_strict_cwd_must_lie_in_a_readable_or_writable_path() -> None:
    policy = SandboxPolicy("strict", (), ("/usr", "/srv/data"), ("/var/spool/x",))
    assert policy.allows_cwd("/usr")
    assert policy.allows_cwd("/usr/share/doc/")
    assert policy.allows_cwd("/var/spool/x/y")
    assert policy.allows_cwd("/srv/data/../data/z")
    assert not policy.allows_cwd("/srv/database")
    assert not policy.allows_cwd("/usr/../tmp")
    assert not policy.allows_cwd("/")
    assert not policy.allows_cwd("usr")


@pytest.mark.parametrize("mode", ["exec", "off"])
def test_other_modes_allow_any_cwd(mode: sandbox.SandboxMode) -> None:
    assert SandboxPolicy(mode).allows_cwd("/tmp/anything")


# ------------------------------------------------------------------------ rules


def test_exec_mode_rules_carry_no_read_rights(tmp_path: Path) -> None:
    policy = build_policy("exec", [CAT], writable_paths=[tmp_path])
    rules = dict(policy_rules(policy))
    assert all(rights & (FS_READ_FILE | FS_READ_DIR) == 0 for rights in rules.values())
    assert rules[os.path.realpath(CAT)] == FS_EXECUTE
    assert rules[str(tmp_path)] & FS_WRITE_FILE
    assert "/dev/zero" not in rules


def test_strict_rules_let_programs_be_loaded_and_system_paths_read() -> None:
    rules = dict(policy_rules(build_policy("strict", [CAT])))
    assert rules[os.path.realpath(CAT)] == FS_EXECUTE | FS_READ_FILE
    assert rules["/usr"] == FS_READ_FILE | FS_READ_DIR
    assert rules["/dev/null"] & FS_WRITE_FILE
    assert not rules["/dev/zero"] & FS_WRITE_FILE


def test_rights_grow_with_the_abi() -> None:
    assert landlock.fs_rights_for_abi(0) == 0
    assert landlock.fs_rights_for_abi(1) == (1 << 13) - 1
    assert landlock.fs_rights_for_abi(3) & landlock.FS_TRUNCATE
    assert not landlock.fs_rights_for_abi(4) & landlock.FS_IOCTL_DEV
    assert landlock.fs_rights_for_abi(7) == landlock.FS_ALL


# ----------------------------------------------------------------------- risky


def test_risky_programs_are_flagged_by_name_path_and_version() -> None:
    names = ["cat", "sed", "/usr/bin/awk", "python3.12", "sha256sum", "sed", "env"]
    assert risky_programs(names) == ["sed", "/usr/bin/awk", "python3.12", "env"]


def test_the_default_allowlist_holds_nothing_risky() -> None:
    assert risky_programs(DEFAULT_PROGRAMS) == []


# ------------------------------------------------------------------ ABI errors


@pytest.fixture
def fake_abi(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def set_abi(abi: int) -> None:
        monkeypatch.setattr("cuprumd.engine.sandbox.rulesets.landlock_abi", lambda: abi)

    return set_abi


@pytest.mark.parametrize(
    ("abi", "found"), [(0, "disabled or unsupported"), (5, "offers Landlock ABI 5")]
)
@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_too_old_a_kernel_is_a_config_error(
    fake_abi: Callable[[int], None], abi: int, found: str, mode: sandbox.SandboxMode
) -> None:
    fake_abi(abi)
    with pytest.raises(ConfigError) as caught:
        create_ruleset(build_policy(mode, [CAT]))
    message = str(caught.value)
    assert message.startswith("sandbox: ")
    assert found in message
    assert f"ABI {REQUIRED_ABI}" in message
    assert 'sandbox = "off"' in message


# ------------------------------------------------------------------- the kernel

needs_landlock = pytest.mark.skipif(
    landlock_abi() < REQUIRED_ABI, reason="kernel without Landlock ABI 6"
)


def errno_of(action: Callable[[], object]) -> int:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def spawn_status(*argv: str) -> int:
    """Exit status of ``argv``, or the errno ``execve`` failed with (negated)."""
    quiet = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    try:
        pid = os.posix_spawn(argv[0], list(argv), {}, file_actions=quiet)
    except OSError as exc:
        return -(exc.errno or 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def in_child(ruleset_fd: int | None, probe: Callable[[], dict[str, int]]) -> dict:
    """Run ``probe`` in a forked child, sandboxed when a ruleset is given."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_end)
            if ruleset_fd is not None:
                restrict_self(ruleset_fd)
            out = json.dumps(probe()).encode()
        except BaseException as exc:
            out = json.dumps({"child_error": repr(exc)}).encode()
            status = 1
        try:
            while out:
                out = out[os.write(write_end, out) :]
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result: dict = json.loads(b"".join(chunks))
    assert "child_error" not in result, result["child_error"]
    return result


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory under /tmp that no rule mentions, with a file in it."""
    (tmp_path / "secret").write_text("s3cret")
    return tmp_path


def probe_everything(outside: Path, listener: socket.socket) -> dict[str, int]:
    def connect() -> None:
        with socket.socket() as sock:
            sock.connect(listener.getsockname())

    def write_new() -> None:
        os.close(os.open(outside / "new", os.O_WRONLY | os.O_CREAT, 0o600))

    def write_devnull() -> None:
        fd = os.open("/dev/null", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"x")
        os.close(fd)

    return {
        "cat": spawn_status(CAT, "/dev/null"),
        "id": spawn_status("/usr/bin/id"),
        "sh": spawn_status("/bin/sh", "-c", "true"),
        "write": errno_of(write_new),
        "read": errno_of((outside / "secret").read_bytes),
        "devnull": errno_of(write_devnull),
        "connect": errno_of(connect),
        "signal": errno_of(lambda: os.kill(os.getppid(), 0)),
    }


@needs_landlock
def test_without_a_sandbox_every_probe_succeeds(
    outside: Path, listener: socket.socket
) -> None:
    result = in_child(None, lambda: probe_everything(outside, listener))
    assert result == dict.fromkeys(result, 0)


@needs_landlock
def test_strict_sandbox(outside: Path, listener: socket.socket) -> None:
    with create_ruleset(build_policy("strict", [CAT])) as ruleset:
        result = in_child(ruleset.fd, lambda: probe_everything(outside, listener))
    assert result == {
        "cat": 0,
        "id": -errno.EACCES,
        "sh": -errno.EACCES,
        "write": errno.EACCES,
        "read": errno.EACCES,
        "devnull": 0,
        "connect": errno.EACCES,
        "signal": errno.EPERM,
    }


@needs_landlock
def test_exec_sandbox_leaves_reads_alone(
    outside: Path, listener: socket.socket
) -> None:
    with create_ruleset(build_policy("exec", [CAT])) as ruleset:
        result = in_child(ruleset.fd, lambda: probe_everything(outside, listener))
    assert result == {
        "cat": 0,
        "id": -errno.EACCES,
        "sh": -errno.EACCES,
        "write": errno.EACCES,
        "read": 0,
        "devnull": 0,
        "connect": errno.EACCES,
        "signal": errno.EPERM,
    }


@needs_landlock
@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_writable_paths_can_be_written_read_and_cleaned(
    tmp_path: Path, mode: sandbox.SandboxMode
) -> None:
    work = tmp_path / "work"
    work.mkdir()

    def probe() -> dict[str, int]:
        def write_read_remove() -> None:
            (work / "sub").mkdir()
            (work / "sub" / "f").write_text("data")
            (work / "sub" / "f").rename(work / "g")
            assert (work / "g").read_text() == "data"
            (work / "g").unlink()
            (work / "sub").rmdir()

        return {
            "work": errno_of(write_read_remove),
            "next door": errno_of((tmp_path / "next").touch),
        }

    policy = build_policy(mode, [CAT], writable_paths=[work])
    with create_ruleset(policy) as ruleset:
        result = in_child(ruleset.fd, probe)
    assert result == {"work": 0, "next door": errno.EACCES}


@needs_landlock
def test_a_cwd_the_policy_allows_is_usable(tmp_path: Path) -> None:
    policy = build_policy("strict", [CAT], readable_paths=[tmp_path])
    (tmp_path / "f").write_text("x")
    assert policy.allows_cwd(str(tmp_path))
    assert not policy.allows_cwd("/tmp")

    def probe() -> dict[str, int]:
        os.chdir(tmp_path)
        return {
            "list": errno_of(lambda: os.listdir(".")),
            "read": spawn_status(CAT, "f"),
        }

    with create_ruleset(policy) as ruleset:
        assert in_child(ruleset.fd, probe) == {"list": 0, "read": 0}


@needs_landlock
def test_abstract_unix_sockets_outside_the_job_are_unreachable() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"\0cuprumd-test-{os.getpid()}")
    server.listen()

    def probe() -> dict[str, int]:
        def connect() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(server.getsockname())

        return {"connect": errno_of(connect)}

    try:
        assert in_child(None, probe) == {"connect": 0}
        with create_ruleset(build_policy("strict", [CAT])) as ruleset:
            assert in_child(ruleset.fd, probe) == {"connect": errno.EPERM}
    finally:
        server.close()


@needs_landlock
@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_a_script_runs_through_its_interpreter(
    tmp_path: Path, mode: sandbox.SandboxMode
) -> None:
    script = write_script(tmp_path / "s", "/bin/sh")
    policy = build_policy(mode, [str(script)])
    with create_ruleset(policy) as ruleset:
        result = in_child(ruleset.fd, lambda: {"script": spawn_status(str(script))})
    assert result == {"script": 0}


@needs_landlock
def test_restrict_self_reports_the_errno() -> None:
    def probe() -> dict[str, int]:
        return {"bad fd": errno_of(lambda: restrict_self(-1))}

    assert in_child(None, probe) == {"bad fd": errno.EBADF}


@needs_landlock
def test_ruleset_descriptor_is_close_on_exec_and_closes_once() -> None:
    ruleset = create_ruleset(build_policy("strict", [CAT]))
    assert ruleset is not None
    assert ruleset.abi == landlock_abi()
    fd = ruleset.fd
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with ruleset:
        pass
    assert ruleset.closed
    ruleset.close()
    assert errno_of(lambda: os.fstat(fd)) == errno.EBADF


def test_abi_probe_is_cached_and_can_be_cleared() -> None:
    first = landlock_abi()
    landlock_abi.cache_clear()
    assert landlock_abi() == first
