"""Per-job cgroups: the parsing and decisions (pure), then the real kernel.

The kernel tests run in a fresh cgroup made under this process's own one
and stand in for the daemon's cgroup there; they skip only when the v2
hierarchy cannot be written (not root, not delegated).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cuprumd.engine.cgroup import (
    JobCgroup,
    JobCgroups,
    _Limit,
    _locate_own,
    find_cgroup2_mount,
    own_cgroup_path,
)
from cuprumd.engine.cgroup_controllers import _may_leave_own, _plan_controllers
from cuprumd.engine.cgroupfs import (
    _cgroup2_mounts,
    _cgroup_dir,
    _cgroup_path_of,
    _populated,
    _within,
)

REPO = Path(__file__).resolve().parents[2]

HYBRID_MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 \
- cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
"""
PURE_V2_MOUNTINFO = """\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 \
- cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V1_ONLY_MOUNTINFO = """\
31 25 0:28 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,nosuid shared:19 - cgroup cgroup rw,pids
"""
HYBRID_PROC_CGROUP = """\
12:pids:/system.slice/cuprumd.service
4:memory:/system.slice/cuprumd.service
1:name=systemd:/system.slice/cuprumd.service
0::/system.slice/cuprumd.service
"""


# --- pure ------------------------------------------------------------------


def test_cgroup2_mount_on_a_hybrid_system() -> None:
    assert find_cgroup2_mount(HYBRID_MOUNTINFO) == "/sys/fs/cgroup/unified"


def test_cgroup2_mount_on_a_pure_v2_system() -> None:
    assert find_cgroup2_mount(PURE_V2_MOUNTINFO) == "/sys/fs/cgroup"


def test_no_cgroup2_mount_on_a_v1_only_system() -> None:
    assert find_cgroup2_mount(V1_ONLY_MOUNTINFO) is None
    assert find_cgroup2_mount("") is None


def test_escaped_characters_in_the_mount_point_are_decoded() -> None:
    text = r"40 1 0:40 / /mnt/my\040cg\134x rw shared:3 - cgroup2 none rw" + "\n"
    assert find_cgroup2_mount(text) == "/mnt/my cg\\x"


def test_a_mount_without_optional_fields_is_read() -> None:
    assert find_cgroup2_mount("40 1 0:40 / /cg rw - cgroup2 none rw\n") == "/cg"


def test_a_later_mount_on_the_same_point_hides_cgroup2() -> None:
    text = PURE_V2_MOUNTINFO + "50 35 0:50 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    assert find_cgroup2_mount(text) is None


def test_the_whole_hierarchy_is_preferred_over_a_bind_mounted_part() -> None:
    text = (
        "40 1 0:29 /system.slice /srv/cg rw - cgroup2 cgroup2 rw\n" + PURE_V2_MOUNTINFO
    )
    assert find_cgroup2_mount(text) == "/sys/fs/cgroup"


def test_cgroup_paths_map_to_directories_through_a_bind_mounted_part() -> None:
    mounts = [("/system.slice", "/srv/cg")]
    assert _cgroup_dir(mounts, "/system.slice/a.service") == Path("/srv/cg/a.service")
    assert _cgroup_dir(mounts, "/system.slice") == Path("/srv/cg")
    assert _cgroup_dir(mounts, "/system.slicex") is None
    assert _cgroup_path_of(mounts, Path("/srv/cg/a.service/j")) == (
        "/system.slice/a.service/j"
    )
    assert _cgroup_path_of(mounts, Path("/elsewhere")) is None
    whole = [("/", "/sys/fs/cgroup")]
    assert _cgroup_dir(whole, "/") == Path("/sys/fs/cgroup")
    assert _cgroup_path_of(whole, Path("/sys/fs/cgroup")) == "/"


def test_own_cgroup_path_on_hybrid_and_pure_v2_systems() -> None:
    assert own_cgroup_path(HYBRID_PROC_CGROUP) == "/system.slice/cuprumd.service"
    assert own_cgroup_path("0::/\n") == "/"
    assert own_cgroup_path("0::/a/b (deleted)\n") == "/a/b"


def test_own_cgroup_path_is_none_on_a_v1_only_system() -> None:
    assert own_cgroup_path("4:memory:/x\n1:name=systemd:/x\n") is None
    assert own_cgroup_path("") is None


def test_membership_of_the_subtree_not_of_a_namesake_sibling() -> None:
    subtree = "/system.slice/cuprumd.service/cuprumd-ab12"
    assert _within(f"0::{subtree}/0f3a\n", subtree)
    assert _within(f"0::{subtree}/0f3a/nested\n", subtree)
    assert _within(f"0::{subtree}\n", subtree)
    assert not _within(f"0::{subtree}.daemon\n", subtree)
    assert not _within("0::/system.slice/cuprumd.service\n", subtree)
    assert not _within("4:memory:" + subtree + "/j\n", subtree)


def test_populated_is_read_from_cgroup_events() -> None:
    assert _populated("populated 1\nfrozen 0\n")
    assert not _populated("populated 0\nfrozen 0\n")
    assert not _populated("")


def test_only_controllers_the_parent_hands_down_are_worth_enabling() -> None:
    available = frozenset({"memory", "pids", "cpu"})
    assert _plan_controllers(["memory", "pids"], available, frozenset()) == (
        "memory",
        "pids",
    )
    assert _plan_controllers(["memory", "pids"], available, frozenset({"pids"})) == (
        "memory",
    )
    assert _plan_controllers(["memory"], frozenset({"hugetlb"}), frozenset()) == ()
    assert _plan_controllers(["pids", "pids"], available, frozenset()) == ("pids",)


def test_the_daemon_leaves_its_cgroup_only_when_alone_there() -> None:
    assert _may_leave_own([42], 42)
    assert not _may_leave_own([42, 43], 42)
    assert not _may_leave_own([43], 42)
    assert not _may_leave_own([], 42)


# --- real kernel -------------------------------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def _controllers(cgroup: Path, name: str = "cgroup.controllers") -> set[str]:
    return set((cgroup / name).read_text().split())


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _killed(pid: int) -> bool:
    """Whether a job's process is gone, reaping it if it became ours.

    Adopted orphans are reaped here and must show SIGKILL; one its own
    parent reaped before dying (``sh`` collects a background child that
    dies first) is merely gone.
    """
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _destroy(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    with contextlib.suppress(OSError):
        (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 5
    while "populated 1" in (cgroup / "cgroup.events").read_text():
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


@pytest.fixture
def parent_cgroup() -> Path:
    """This process's own cgroup, where the test cgroups are made."""
    found = _locate_own(_cgroup2_mounts(Path("/proc/self/mountinfo").read_text()))
    if isinstance(found, str):
        pytest.skip(f"no cgroup v2 here: {found}")
    if not os.access(found, os.W_OK):
        pytest.skip(f"cgroup v2 hierarchy not writable here ({found}, not delegated)")
    return found


@contextlib.contextmanager
def _fresh_cgroup(parent: Path) -> Iterator[Path]:
    path = parent / f"cuprumd-test-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cgroup v2 hierarchy not writable here: {exc}")
    try:
        yield path
    finally:
        _destroy(path)


@pytest.fixture
def own_dir(parent_cgroup: Path) -> Iterator[Path]:
    """A fresh cgroup that plays the daemon's own one."""
    with _fresh_cgroup(parent_cgroup) as path:
        yield path


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts; any left alive are killed and reaped."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Adopt orphans, so a ``setsid`` escapee can be reaped and its end seen."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _open(own_dir: Path, tag: str = "t1", **limits: int | None) -> JobCgroups:
    cgroups, why = JobCgroups.open(
        tag,
        memory_max=limits.get("memory_max"),
        pids_max=limits.get("pids_max"),
        own_dir=own_dir,
    )
    assert cgroups is not None, why
    return cgroups


def _join(directory: int) -> None:
    procs = os.open("cgroup.procs", os.O_WRONLY, dir_fd=directory)
    os.write(procs, b"0")
    os.close(procs)


def _start_in(job: JobCgroup, *argv: str) -> subprocess.Popen[bytes]:
    fd = job.fd
    return subprocess.Popen(
        argv,
        preexec_fn=lambda: _join(fd),  # noqa: PLW1509
        pass_fds=(fd,),
    )


def _start_escapees(
    job: JobCgroup, spawned: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = _start_in(job, "sh", "-c", "setsid sleep 60 & sleep 60")
    spawned.append(proc)

    def settled() -> bool:
        return sorted(_comm(pid) for pid in job.pids()) == ["sh", "sleep", "sleep"]

    _wait_for(settled)
    sleeps = [pid for pid in job.pids() if pid != proc.pid]
    assert proc.pid in job.pids()
    assert {os.getsid(pid) for pid in sleeps} != {os.getsid(proc.pid)}
    return proc, sleeps


@pytest.mark.usefixtures("subreaper")
def test_close_kills_every_stage_and_setsid_escapee_then_removes_the_cgroup(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    cgroups = _open(own_dir)
    job = cgroups.create("0f3a9c")
    assert job.path == own_dir / "cuprumd-t1" / "0f3a9c"
    proc, sleeps = _start_escapees(job, spawned)
    assert job.populated()

    assert job.close()

    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert all(_killed(pid) for pid in sleeps)
    assert not job.path.exists()
    assert job.fd == -1
    assert job.close()
    assert not job.populated()
    assert job.pids() == []


@pytest.mark.usefixtures("subreaper")
def test_aclose_kills_and_removes_like_close(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    cgroups = _open(own_dir)
    job = cgroups.create("1b2c")
    proc, sleeps = _start_escapees(job, spawned)

    async def close_twice() -> tuple[bool, bool]:
        return await job.aclose(), await job.aclose()

    assert asyncio.run(close_twice()) == (True, True)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert all(_killed(pid) for pid in sleeps)
    assert not job.path.exists()


def test_kill_alone_leaves_the_empty_cgroup_for_close(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    cgroups = _open(own_dir)
    job = cgroups.create("k1")
    proc = _start_in(job, "sleep", "60")
    spawned.append(proc)
    _wait_for(lambda: job.pids() == [proc.pid])
    job.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    _wait_for(lambda: not job.populated())
    assert job.path.is_dir()
    assert job.close()


@pytest.mark.usefixtures("subreaper")
def test_reopening_with_the_same_tag_reaps_the_earlier_jobs_only(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    first = _open(own_dir, "same")
    other = _open(own_dir, "other")
    stale = first.create("aa11")
    kept = other.create("bb22")
    stale_proc = _start_in(stale, "sh", "-c", "sleep 60 & sleep 60")
    kept_proc = _start_in(kept, "sleep", "60")
    spawned += [stale_proc, kept_proc]
    _wait_for(lambda: len(stale.pids()) == 3 and len(kept.pids()) == 1)
    sleeps = [pid for pid in stale.pids() if pid != stale_proc.pid]
    os.close(stale.fd)

    again = _open(own_dir, "same")

    assert again.reaped_stale == 1
    assert not stale.path.exists()
    assert stale_proc.wait(timeout=5) == -signal.SIGKILL
    assert all(_killed(pid) for pid in sleeps)
    assert kept.populated()
    assert kept_proc.poll() is None
    assert kept.close()
    assert _open(own_dir, "other").reaped_stale == 0


def test_owns_pid_recognises_job_members_only(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    cgroups = _open(own_dir)
    job = cgroups.create("c0ffee")
    proc = _start_in(job, "sleep", "60")
    spawned.append(proc)
    _wait_for(lambda: job.pids() == [proc.pid])

    assert cgroups.owns_pid(proc.pid)
    assert not cgroups.owns_pid(os.getpid())
    assert not cgroups.owns_pid((1 << 22) + 1)
    assert job.close()
    proc.wait(timeout=5)
    assert not cgroups.owns_pid(proc.pid)


def test_create_refuses_bad_and_duplicate_job_ids(own_dir: Path) -> None:
    cgroups = _open(own_dir)
    for bad in ("", "..", "a/b", "cgroup.procs", "x" * 65):
        with pytest.raises(ValueError, match="job id"):
            cgroups.create(bad)
    job = cgroups.create("dup")
    with pytest.raises(FileExistsError):
        cgroups.create("dup")
    assert job.close()


def test_subtree_is_removed_at_shutdown_once_no_job_remains(own_dir: Path) -> None:
    cgroups = _open(own_dir)
    job = cgroups.create("j")
    assert not cgroups.close()
    assert cgroups.subtree.is_dir()
    assert job.close()
    assert cgroups.close()
    assert not cgroups.subtree.exists()
    assert cgroups.close()


def test_limits_apply_exactly_when_the_parent_hands_the_controller_down(
    own_dir: Path,
) -> None:
    cgroups, summary = JobCgroups.open(
        "lim", memory_max=64 << 20, pids_max=64, own_dir=own_dir
    )
    assert cgroups is not None, summary
    offered = _controllers(own_dir)
    assert ("job_memory_max" in cgroups.limits_unavailable) == ("memory" not in offered)
    assert ("job_pids_max" in cgroups.limits_unavailable) == ("pids" not in offered)
    assert str(cgroups.subtree) in summary
    job = cgroups.create("l1")
    if "memory" in offered:
        assert (job.path / "memory.max").read_text().strip() == str(64 << 20)
    if "pids" in offered:
        assert (job.path / "pids.max").read_text().strip() == "64"
    assert job.close()


def test_no_limits_asked_means_none_unavailable(own_dir: Path) -> None:
    cgroups = _open(own_dir)
    assert cgroups.limits_unavailable == ()
    assert cgroups.reaped_stale == 0


#: A controller a test can turn on in its own cgroup, with a limit file and a
#: value the kernel keeps as written. hugetlb is the one most likely to be
#: free on a hybrid system, where memory and pids stay on v1.
_TRIAL_LIMITS = (
    ("pids", "pids.max", 50),
    ("memory", "memory.max", 64 << 20),
    ("hugetlb", "hugetlb.2MB.max", 4 << 21),
)


@pytest.fixture
def handed_down(parent_cgroup: Path) -> Iterator[tuple[Path, _Limit]]:
    """A fresh own cgroup to which a controller is handed down, with a limit
    of that controller; one is turned on in this process's cgroup for the
    test (and back off after) when none is."""
    control = parent_cgroup / "cgroup.subtree_control"
    enabled = _controllers(parent_cgroup, "cgroup.subtree_control")
    offered = _controllers(parent_cgroup)
    for name, filename, value in _TRIAL_LIMITS:
        if name in enabled:
            with _fresh_cgroup(parent_cgroup) as path:
                yield path, _Limit("job_trial_max", name, filename, value)
            return
    for name, filename, value in _TRIAL_LIMITS:
        if name not in offered:
            continue
        try:
            control.write_text(f"+{name}")
        except OSError:
            continue
        try:
            with _fresh_cgroup(parent_cgroup) as path:
                yield path, _Limit("job_trial_max", name, filename, value)
        finally:
            control.write_text(f"-{name}")
        return
    pytest.skip("no controller can be handed down to a test cgroup here")


def _stand_in(own_dir: Path, spawned: list[subprocess.Popen[bytes]]) -> int:
    proc = subprocess.Popen(["sleep", "60"])
    spawned.append(proc)
    (own_dir / "cgroup.procs").write_text(str(proc.pid))
    return proc.pid


def test_a_lone_daemon_steps_into_a_leaf_to_enable_limits(
    handed_down: tuple[Path, _Limit], spawned: list[subprocess.Popen[bytes]]
) -> None:
    own_dir, limit = handed_down
    daemon = _stand_in(own_dir, spawned)

    cgroups, summary = JobCgroups._open("mv", (limit,), own_dir=own_dir, own_pid=daemon)

    assert cgroups is not None, summary
    assert cgroups.limits_unavailable == ()
    assert limit.setting in summary
    moved = own_cgroup_path(Path(f"/proc/{daemon}/cgroup").read_text())
    assert moved is not None
    assert moved.endswith(f"/{own_dir.name}/cuprumd-mv.daemon")
    assert limit.controller in _controllers(own_dir, "cgroup.subtree_control")
    job = cgroups.create("m1")
    written = (job.path / limit.filename).read_text().strip()
    assert written == str(limit.value)
    assert job.close()

    reopened = _open(own_dir / "cuprumd-mv.daemon", "mv")
    assert reopened.subtree == cgroups.subtree


def test_a_daemon_with_company_stays_put_and_reports_the_limit_unavailable(
    handed_down: tuple[Path, _Limit], spawned: list[subprocess.Popen[bytes]]
) -> None:
    own_dir, limit = handed_down
    daemon = _stand_in(own_dir, spawned)
    _stand_in(own_dir, spawned)

    cgroups, summary = JobCgroups._open("st", (limit,), own_dir=own_dir, own_pid=daemon)

    assert cgroups is not None, summary
    assert cgroups.limits_unavailable == (limit.setting,)
    assert daemon in [int(p) for p in (own_dir / "cgroup.procs").read_text().split()]
    assert not (own_dir / "cuprumd-st.daemon").exists()
    job = cgroups.create("s1")
    assert not (job.path / limit.filename).exists()
    assert job.close()


def test_an_unprivileged_daemon_degrades_with_a_reason(parent_cgroup: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    script = (
        "from cuprumd.engine.cgroup import JobCgroups\n"
        "cg, why = JobCgroups.open('t', memory_max=None, pids_max=None)\n"
        "print(cg is None, why)\n"
    )
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True "), result.stdout
    assert "not writable" in result.stdout
    assert not (parent_cgroup / "cuprumd-t").exists()


@pytest.mark.usefixtures("subreaper")
def test_a_clean_slot_is_recycled_a_killed_one_is_removed(
    own_dir: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    cgroups = _open(own_dir)
    clean = cgroups.acquire()
    fd = clean.fd
    assert asyncio.run(clean.aclose())  # nothing was left: nothing killed
    again = cgroups.acquire()
    assert again is clean  # the emptied slot, its directory still open
    assert again.fd == fd
    assert not again.populated()
    with pytest.raises(OSError):  # a slot cannot grow sub-cgroups to hide in
        (again.path / "hideout").mkdir()

    proc, sleeps = _start_escapees(again, spawned)
    assert asyncio.run(again.aclose())

    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert all(_killed(pid) for pid in sleeps)
    # Killed: some kernels would kill whatever is later created inside it.
    assert not again.path.exists()
    other = cgroups.acquire()
    assert other is not again
    assert asyncio.run(other.aclose())
    assert other.path.exists()

    assert cgroups.close()

    assert not other.path.exists()
    assert not cgroups.subtree.exists()
