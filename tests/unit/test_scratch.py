"""Per-job scratch directories: private, empty for each job, never shared
with a job whose processes might still be alive."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cuprumd.engine.scratch import ScratchSpace


def nest(top: Path, depth: int) -> None:
    """``depth`` directories inside each other, made without recursion (or
    path lengths) getting in the way."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def test_a_job_gets_a_private_empty_directory_and_a_used_one_is_removed(
    tmp_path: Path,
) -> None:
    space = ScratchSpace(tmp_path)
    job = space.acquire()
    assert job.path.parent == tmp_path / "scratch"
    assert stat.S_IMODE(job.path.stat().st_mode) == 0o700
    assert list(job.path.iterdir()) == []
    (job.path / "spill").write_text("data")

    job.release(reusable=True)  # not empty: removed, never handed on

    assert not job.path.exists()
    fresh = space.acquire()
    assert fresh.path != job.path
    assert list(fresh.path.iterdir()) == []


def test_an_empty_directory_is_reused_only_when_the_job_is_certainly_over(
    tmp_path: Path,
) -> None:
    space = ScratchSpace(tmp_path)
    contained = space.acquire()
    contained.release(reusable=True)
    assert space.acquire().path == contained.path

    uncertain = space.acquire()
    uncertain.release(reusable=False)  # a setsid escapee may still hold it
    assert not uncertain.path.exists()
    assert space.acquire().path != uncertain.path


def test_release_is_idempotent_and_close_removes_everything(tmp_path: Path) -> None:
    space = ScratchSpace(None)
    job = space.acquire()
    job.release(reusable=True)
    job.release(reusable=False)  # a second release changes nothing
    assert job.path.exists()
    space.close()
    assert not space.base.exists()


def test_leftovers_of_an_earlier_daemon_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "scratch" / "job-1").mkdir(parents=True)
    (tmp_path / "scratch" / "job-1" / "old").write_text("x")
    space = ScratchSpace(tmp_path)
    assert list(space.base.iterdir()) == []


def test_a_directory_whose_metadata_changed_is_not_handed_on(tmp_path: Path) -> None:
    space = ScratchSpace(tmp_path)
    job = space.acquire()
    job.path.chmod(0o777)  # what a job may do to its own directory
    job.release(reusable=True)
    assert not job.path.exists()
    fresh = space.acquire()
    assert fresh.path != job.path
    assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o700


def test_any_tree_a_job_leaves_is_removed_off_the_caller(tmp_path: Path) -> None:
    space = ScratchSpace(tmp_path)
    job = space.acquire()
    nest(job.path, 3000)  # deeper than Python's recursion limit
    job.release(reusable=True)
    assert not job.path.exists()
    space.close()
    assert list(tmp_path.iterdir()) == []


def test_a_restart_clears_a_tree_that_would_break_recursion(tmp_path: Path) -> None:
    (tmp_path / "scratch" / "job-1").mkdir(parents=True)
    nest(tmp_path / "scratch" / "job-1", 3000)
    space = ScratchSpace(tmp_path)
    assert list(space.base.iterdir()) == []
    space.close()
    assert list(tmp_path.iterdir()) == []


def test_an_idle_directory_changed_by_someone_else_is_not_handed_out(
    tmp_path: Path,
) -> None:
    space = ScratchSpace(tmp_path)
    job = space.acquire()
    job.release(reusable=True)  # untouched: pooled
    job.path.chmod(0o777)  # another job of the same user, while it idles
    fresh = space.acquire()
    assert fresh.path != job.path
    assert not job.path.exists()
    assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o700


def test_names_cannot_be_guessed(tmp_path: Path) -> None:
    space = ScratchSpace(tmp_path)
    first, second = space.acquire(), space.acquire()
    for job in (first, second):
        assert re.fullmatch(r"job-[0-9a-f]{24}", job.path.name)
    assert first.path.name != second.path.name


def test_the_job_user_can_pass_through_to_its_directory(tmp_path: Path) -> None:
    space = ScratchSpace(tmp_path, owner=(os.getuid(), os.getgid()))
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o711  # state_dir
    assert stat.S_IMODE(space.base.stat().st_mode) == 0o711  # no listing
    assert stat.S_IMODE(space.acquire().path.stat().st_mode) == 0o700


class FakeRuleset:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_replaced_sandbox_drops_every_kept_ruleset(tmp_path: Path) -> None:
    space = ScratchSpace(tmp_path)
    idle, busy = space.acquire(), space.acquire()
    idle_rules, busy_rules = FakeRuleset(), FakeRuleset()
    idle.ruleset = idle_rules  # type: ignore[assignment]
    busy.ruleset = busy_rules  # type: ignore[assignment]
    idle.release(reusable=True)

    space.forget_rulesets()  # a reload changed the programs or paths

    assert idle_rules.closed
    again = space.acquire()
    assert again.path == idle.path
    assert again.ruleset is None  # the job builds one from the new sandbox
    busy.release(reusable=True)  # in use during the reload
    assert busy_rules.closed
    assert space.acquire().ruleset is None
    space.close()
