"""Inter-stage pipe sizing: the budget rule (pure), reading its inputs, and
growing real pipes."""

from __future__ import annotations

import fcntl
import itertools
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cuprumd.engine import pipesize
from cuprumd.engine.pipesize import (
    DEFAULT_PIPE_PAGES,
    PipeBudget,
    grow_pipe,
    inter_stage_pipe_size,
)
from cuprumd.engine.plumbing import open_plumbing
from cuprumd.pipeline import RunOptions
from cuprumd.settings import Settings

KiB, MiB = 1 << 10, 1 << 20
PAGE = 4096
#: The kernel's defaults: 64 MiB per user, 1 MiB per pipe without privilege.
UNPRIVILEGED = PipeBudget(
    soft_pages=16384, hard_pages=0, max_size=MiB, page_size=PAGE, exempt=False
)
ROOT = PipeBudget(
    soft_pages=16384, hard_pages=0, max_size=MiB, page_size=PAGE, exempt=True
)


def size(budget: PipeBudget, jobs: int, stages: int, wanted: int = MiB) -> int:
    return inter_stage_pipe_size(wanted, jobs=jobs, max_stages=stages, budget=budget)


def test_an_exempt_process_gets_what_it_asks_within_pipe_max_size() -> None:
    assert size(ROOT, 4096, 256) == MiB
    assert size(ROOT, 16, 16, wanted=8 * MiB) == MiB
    # The kernel rounds sizes up to a power of two pages: ask for less.
    assert size(ROOT, 16, 16, wanted=MiB - 1) == 512 * KiB
    assert size(ROOT, 1, 3, wanted=64 * KiB) == 0  # the default: nothing to grow


def test_without_per_user_limits_nobody_is_limited() -> None:
    unlimited = PipeBudget(0, 0, MiB, PAGE, exempt=False)
    assert size(unlimited, 4096, 256) == MiB


def test_the_default_configuration_grows_nothing_unprivileged() -> None:
    # 16 jobs x 16 stages hold 768 default pipes: 48 MiB of the 64 MiB,
    # leaving nothing within three quarters of the budget to grow with.
    assert size(UNPRIVILEGED, 16, 16) == 0


def test_fewer_jobs_or_stages_leave_room_to_grow() -> None:
    assert size(UNPRIVILEGED, 16, 4) == 256 * KiB
    assert size(UNPRIVILEGED, 16, 8) == 128 * KiB
    assert size(UNPRIVILEGED, 4, 3) == MiB
    assert size(UNPRIVILEGED, 12, 3) == 512 * KiB


def test_one_stage_jobs_have_no_inter_stage_pipe_to_count() -> None:
    assert size(UNPRIVILEGED, 4096, 1) == MiB


def test_the_lower_of_the_two_limits_counts() -> None:
    hard = PipeBudget(16384, 4096, MiB, PAGE, exempt=False)
    assert size(hard, 4, 3) == 512 * KiB
    assert size(hard, 4, 3) < size(UNPRIVILEGED, 4, 3)


def test_large_pages_make_the_default_pipe_already_a_mebibyte() -> None:
    arm = PipeBudget(16384, 0, MiB, 65536, exempt=False)
    assert size(arm, 1, 3) == 0


@pytest.mark.parametrize(
    "budget_pages", [1024, 16384, 65536, 1 << 20], ids=lambda p: f"{p}pages"
)
def test_the_worst_case_always_fits_three_quarters_of_the_budget(
    budget_pages: int,
) -> None:
    budget = PipeBudget(budget_pages, 0, 16 * MiB, PAGE, exempt=False)
    for jobs, stages in itertools.product((1, 2, 5, 16, 128, 4096), (2, 3, 7, 256)):
        grown = size(budget, jobs, stages, wanted=16 * MiB)
        if grown == 0:
            continue
        pages = grown // PAGE
        assert pages > DEFAULT_PIPE_PAGES
        assert pages & (pages - 1) == 0, "a power of two pages"
        per_job = (3 * stages - 2 * (stages - 1)) * DEFAULT_PIPE_PAGES + 2 * (
            stages - 1
        ) * pages
        assert jobs * per_job <= budget_pages * 3 // 4, (jobs, stages, grown)


def _proc(tmp_path: Path, cap_eff: int, uid_map: str) -> Path:
    (tmp_path / "sys/fs").mkdir(parents=True)
    (tmp_path / "self").mkdir()
    (tmp_path / "sys/fs/pipe-user-pages-soft").write_text("16384\n")
    (tmp_path / "sys/fs/pipe-user-pages-hard").write_text("0\n")
    (tmp_path / "sys/fs/pipe-max-size").write_text("1048576\n")
    (tmp_path / "self/status").write_text(
        f"Name:\tcuprumd\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff:016x}\n"
    )
    (tmp_path / "self/uid_map").write_text(uid_map)
    return tmp_path


INIT_NS = "         0          0 4294967295\n"


@pytest.mark.parametrize(
    ("cap_eff", "uid_map", "exempt"),
    [
        (0, INIT_NS, False),
        (1 << 24, INIT_NS, True),  # CAP_SYS_RESOURCE
        (1 << 21, INIT_NS, True),  # CAP_SYS_ADMIN
        (0x1FFFEFFFFFF, INIT_NS, True),  # root without CAP_SYS_RESOURCE
        (1 << 24, "         0       1000          1\n", False),  # user namespace
    ],
)
def test_budget_is_read_from_proc(
    tmp_path: Path, cap_eff: int, uid_map: str, exempt: bool
) -> None:
    budget = PipeBudget.of_this_process(_proc(tmp_path, cap_eff, uid_map))
    assert budget == PipeBudget(16384, 0, MiB, os.sysconf("SC_PAGE_SIZE"), exempt)


def test_unreadable_proc_means_no_privilege_and_kernel_defaults(
    tmp_path: Path,
) -> None:
    budget = PipeBudget.of_this_process(tmp_path)
    assert (budget.soft_pages, budget.max_size, budget.exempt) == (0, MiB, False)


def test_options_from_settings_carry_the_daemon_pipe_size() -> None:
    settings = Settings(max_concurrent_jobs=4, max_stages=3)
    options = RunOptions.from_settings(settings)
    assert options.pipe_size == pipesize.daemon_pipe_size(
        settings.pump_buffer_size, jobs=4, max_stages=3
    )
    assert RunOptions().pipe_size is None


def _capacity(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def test_only_the_inter_stage_pipes_are_grown() -> None:
    links = open_plumbing(3, with_stdin=True, pipe_size=256 * KiB)
    try:
        default = DEFAULT_PIPE_PAGES * os.sysconf("SC_PAGE_SIZE")
        inter = [links.out[0][0], links.out[1][0], links.inp[1][0], links.inp[2][0]]
        assert [_capacity(fd) for fd in inter] == [256 * KiB] * 4
        others = [links.stdin[0], links.out[2][0], *(r for r, _ in links.err)]
        assert [_capacity(fd) for fd in others] == [default] * len(others)
    finally:
        links.close_all()


def test_a_refused_resize_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipesize._Refusals, "logged", False)
    pipes = [os.pipe() for _ in range(3)]
    try:
        for _, w in pipes:
            os.write(w, b"x" * 65536)  # a full default pipe cannot shrink: EBUSY
        with capture_logs() as logs:
            for r, _ in pipes:
                grow_pipe(r, 4096)
        assert [_capacity(r) for r, _ in pipes] == [65536] * 3
        refused = [e for e in logs if e["event"] == "pipe.growth_refused"]
        assert len(refused) == 1
        assert refused[0]["error"] == "EBUSY"
        assert refused[0]["log_level"] == "warning"
    finally:
        for fd in itertools.chain.from_iterable(pipes):
            os.close(fd)


def test_size_zero_leaves_the_pipe_alone() -> None:
    r, w = os.pipe()
    try:
        before = _capacity(r)
        grow_pipe(r, 0)
        assert _capacity(r) == before
    finally:
        os.close(r)
        os.close(w)
