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
    PipeGrant,
    PipeLedger,
    grow_pipe,
    job_pipe_grant,
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


def size(
    budget: PipeBudget,
    stages: int,
    *,
    others: int = 0,
    held: int = 0,
    max_stages: int = 16,
    wanted: int = MiB,
) -> int:
    return job_pipe_grant(
        wanted,
        stages=stages,
        held_pages=held,
        others=others,
        max_stages=max_stages,
        budget=budget,
    ).size


def test_an_exempt_process_gets_what_it_asks_within_pipe_max_size() -> None:
    assert size(ROOT, 256, others=4095, held=1 << 30) == MiB
    assert size(ROOT, 3, wanted=8 * MiB) == MiB
    # The kernel rounds sizes up to a power of two pages: ask for less.
    assert size(ROOT, 3, wanted=MiB - 1) == 512 * KiB
    assert size(ROOT, 3, wanted=64 * KiB) == 0  # the default: nothing to grow


def test_without_per_user_limits_nobody_is_limited() -> None:
    unlimited = PipeBudget(0, 0, MiB, PAGE, exempt=False)
    assert size(unlimited, 256, others=4095) == MiB


def test_a_job_alone_on_a_default_daemon_grows_its_pipes() -> None:
    # 15 more jobs of 16 stages may start: 720 default pipes (45 MiB) kept
    # for them, 9 for this job, a quarter of the 64 MiB for the rest.
    assert size(UNPRIVILEGED, 3, others=15) == 512 * KiB
    assert size(UNPRIVILEGED, 3, others=0) == MiB


def test_a_full_daemon_grows_nothing() -> None:
    # The 16th job of 16 stages: the others hold their default pipes.
    held = 15 * 3 * 16 * DEFAULT_PIPE_PAGES
    assert size(UNPRIVILEGED, 16, others=0, held=held) == 0
    # The others' growth counts too: what they took is not there to share.
    assert size(UNPRIVILEGED, 3, others=0, held=12_100) == 0
    assert size(UNPRIVILEGED, 3, others=0, held=11_000) == MiB


def test_one_stage_jobs_have_no_inter_stage_pipe_to_grow() -> None:
    grant = job_pipe_grant(
        MiB, stages=1, held_pages=0, others=0, max_stages=16, budget=UNPRIVILEGED
    )
    # Charged a whole slot: a 16-stage job may take its place.
    assert grant == PipeGrant(size=0, pages=3 * 16 * DEFAULT_PIPE_PAGES)


def test_the_lower_of_the_two_limits_counts() -> None:
    hard = PipeBudget(16384, 4096, MiB, PAGE, exempt=False)
    assert size(hard, 3, others=12, max_stages=4) == 512 * KiB
    assert size(UNPRIVILEGED, 3, others=12, max_stages=4) == MiB


def test_the_deploy_sysctl_gives_every_job_a_mebibyte() -> None:
    """deploy/cuprumd.sysctl promises root's pipe size for a daemon full of
    the largest jobs at the defaults, and for the benchmarks' 64 three-stage
    jobs under max_concurrent_jobs = 128."""
    drop_in = Path(__file__).parents[2] / "deploy" / "cuprumd.sysctl"
    settings = dict(
        line.replace(" ", "").split("=")
        for line in drop_in.read_text().splitlines()
        if line and not line.startswith("#")
    )
    pages = int(settings["fs.pipe-user-pages-soft"])
    raised = PipeBudget(pages, 0, MiB, PAGE, exempt=False)
    for max_jobs, jobs, stages in ((16, 16, 16), (16, 16, 3), (128, 64, 3)):
        ledger = PipeLedger(wanted=MiB, max_jobs=max_jobs, max_stages=16, budget=raised)
        grants = [ledger.acquire(stages) for _ in range(jobs)]
        assert {grant.size for grant in grants} == {MiB}
    # At the kernel's default the same 64 jobs grow nothing.
    ledger = PipeLedger(wanted=MiB, max_jobs=128, max_stages=16, budget=UNPRIVILEGED)
    assert {ledger.acquire(3).size for _ in range(64)} == {0}


def test_large_pages_make_the_default_pipe_already_a_mebibyte() -> None:
    arm = PipeBudget(16384, 0, MiB, 65536, exempt=False)
    assert size(arm, 3) == 0


def test_a_grant_counts_every_pipe_of_the_job() -> None:
    grant = job_pipe_grant(
        MiB, stages=3, held_pages=0, others=0, max_stages=16, budget=UNPRIVILEGED
    )
    page_count = MiB // PAGE
    assert grant.size == MiB
    assert grant.pages == 9 * DEFAULT_PIPE_PAGES + 4 * (page_count - 16)


@pytest.mark.parametrize(
    "budget_pages", [1024, 16384, 65536, 1 << 20], ids=lambda p: f"{p}pages"
)
@pytest.mark.parametrize("max_jobs", [1, 2, 5, 16, 128])
@pytest.mark.parametrize("max_stages", [2, 3, 7, 16])
def test_any_arrival_order_stays_within_three_quarters_of_the_budget(
    budget_pages: int, max_jobs: int, max_stages: int
) -> None:
    """Jobs of any size come and go; whatever was granted, every job that
    may still start would find room for its default pipes."""
    budget = PipeBudget(budget_pages, 0, 16 * MiB, PAGE, exempt=False)
    ledger = PipeLedger(
        wanted=16 * MiB, max_jobs=max_jobs, max_stages=max_stages, budget=budget
    )
    usable = budget_pages - budget_pages // 4
    worst = max_jobs * 3 * max_stages * DEFAULT_PIPE_PAGES
    running: list[PipeGrant] = []
    sizes = itertools.cycle(range(1, max_stages + 1))
    for step in range(4 * max_jobs):
        if len(running) == max_jobs or (step % 3 == 2 and running):
            ledger.release(running.pop(step % len(running)))
            continue
        grant = ledger.acquire(next(sizes))
        running.append(grant)
        pages = grant.size // PAGE
        assert grant.size == 0 or (
            pages > DEFAULT_PIPE_PAGES and pages & (pages - 1) == 0
        )
        free = max_jobs - len(running)
        kept = free * 3 * max_stages * DEFAULT_PIPE_PAGES
        assert ledger.held_pages == sum(g.pages for g in running)
        if worst <= usable:  # a budget the settings can live within at all
            assert ledger.held_pages + kept <= usable, (step, running)
    for grant in running:
        ledger.release(grant)
    assert ledger.held_pages == 0


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


def test_options_carry_the_ledger_they_are_given() -> None:
    ledger = PipeLedger(wanted=MiB, max_jobs=4, max_stages=3, budget=UNPRIVILEGED)
    options = RunOptions.from_settings(
        Settings(max_concurrent_jobs=4, max_stages=3), pipes=ledger
    )
    assert options.pipes is ledger
    assert RunOptions().pipes is None


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
