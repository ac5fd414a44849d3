"""The job registry with a fake runner: admission, queue, retention,
cancellation and shutdown, without spawning anything."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cuprumd.errors import Busy, NotFound, WaitTimeout
from cuprumd.jobs import Job, JobRegistry, Limits, unstarted_result
from cuprumd.models import JobResult, JobSpec, JobState, TransferResult
from cuprumd.peers import Peer
from cuprumd.protocol import ListRequest

ALICE = Peer(10, 1000, 1000)
BOB = Peer(11, 1001, 1001)
ROOT = Peer(12, 0, 0)
SPEC = JobSpec.model_validate({"stages": [{"argv": ["cat"]}, {"argv": ["wc"]}]})


class FakeRunner:
    """Jobs end when released (or cancelled); ``crash`` makes one raise."""

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.crash = False
        self.ignore_cancel = False
        self.stdout = ""

    async def __call__(self, job: Job) -> JobResult:
        self.started.append(job.job_id)
        if self.crash:
            raise RuntimeError("boom")
        release = self.release.setdefault(job.job_id, asyncio.Event())
        waiters = {asyncio.ensure_future(release.wait())}
        if not self.ignore_cancel:
            waiters.add(asyncio.ensure_future(job.cancel.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        state = JobState.SUCCEEDED if release.is_set() else JobState.CANCELLED
        result = unstarted_result(job, state, "", "python")
        result = result.model_copy(
            update={
                "error": None,
                "stdout": self.stdout,
                "transfers": [
                    TransferResult(from_stage=0, to_stage=1, pump="python", bytes=5)
                ],
            }
        )
        result._output_bytes = len(self.stdout)
        return result

    def finish(self, job: Job) -> None:
        self.release.setdefault(job.job_id, asyncio.Event()).set()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scenario(
    body: Callable[[JobRegistry, FakeRunner, Clock], Awaitable[Any]],
    *,
    running: int = 1,
    queued: int = 1,
    retention: float = 60.0,
    retained_bytes: int = 256 << 20,
    retained_jobs: int = 10_000,
    output_bytes: int = 100,
    running_per_uid: int | None = None,
    queued_per_uid: int | None = None,
) -> Any:
    async def go() -> Any:
        runner, clock = FakeRunner(), Clock()
        limits = Limits(
            max_concurrent_jobs=running,
            max_queued_jobs=queued,
            result_retention_seconds=retention,
            max_retained_bytes=retained_bytes,
            max_retained_jobs=retained_jobs,
            max_output_bytes=output_bytes,
            max_running_jobs_per_uid=running_per_uid,
            max_queued_jobs_per_uid=queued_per_uid,
        )
        registry = JobRegistry(
            limits,
            runner,
            backend="python",
            daemon_uid=999,
            clock=clock,
        )
        return await body(registry, runner, clock)

    return asyncio.run(go())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_admission_fills_slots_then_queue_then_refuses() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        first = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        second = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        assert (first.state, second.state) == (JobState.RUNNING, JobState.QUEUED)
        with pytest.raises(Busy):
            registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        await settle()
        runner.finish(first)
        await settle()
        assert second.state is JobState.RUNNING
        runner.finish(second)
        assert (await registry.wait(second, 1)).state is JobState.SUCCEEDED
        counters = registry.counters()
        assert counters["jobs"]["succeeded"] == 2
        assert counters["bytes"]["python"] == 10
        assert counters["accepted"] == 2

    scenario(body)


def test_results_are_kept_until_fetched_or_expired() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, clock: Clock) -> None:
        kept = registry.admit(SPEC, (), ALICE, detached=True)
        runner.finish(kept)
        await settle()
        assert registry.get(kept.job_id, ALICE).state is JobState.SUCCEEDED
        await registry.wait(kept, None)
        with pytest.raises(NotFound):
            registry.get(kept.job_id, ALICE)
        expiring = registry.admit(SPEC, (), ALICE, detached=True)
        runner.finish(expiring)
        await settle()
        clock.now += 59
        assert registry.get(expiring.job_id, ALICE)
        clock.now += 2
        with pytest.raises(NotFound):
            registry.get(expiring.job_id, ALICE)
        assert registry.counters()["retained"] == 0

    scenario(body)


def test_run_jobs_are_not_retained() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        job = registry.admit(SPEC, (), ALICE, detached=False)
        runner.finish(job)
        await registry.wait(job, None)
        registry.forget(job)
        assert registry.listing(ROOT, ListRequest(op="list")) == ([], None)
        assert registry.counters()["retained"] == 0

    scenario(body)


def test_other_users_jobs_are_invisible_except_to_root_and_the_daemon() -> None:
    async def body(registry: JobRegistry, _runner: FakeRunner, _clock: Clock) -> None:
        job = registry.admit(SPEC, (), ALICE, detached=True)
        with pytest.raises(NotFound):
            registry.get(job.job_id, BOB)
        assert registry.listing(BOB, ListRequest(op="list")) == ([], None)
        mine, _ = registry.listing(ALICE, ListRequest(op="list", uid=BOB.uid))
        assert mine == []  # asking for another uid's jobs shows none
        seen, _ = registry.listing(ROOT, ListRequest(op="list"))
        assert [row.job_id for row in seen] == [job.job_id]
        assert registry.get(job.job_id, ROOT) is job
        assert registry.get(job.job_id, Peer(1, 999, 999)) is job
        registry.cancel(job)
        await registry.wait(job, 1)

    scenario(body)


def test_wait_timeout_leaves_the_job_running() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        job = registry.admit(SPEC, (), ALICE, detached=True)
        with pytest.raises(WaitTimeout):
            await registry.wait(job, 0.01)
        assert job.state is JobState.RUNNING
        runner.finish(job)
        assert (await registry.wait(job, 1)).state is JobState.SUCCEEDED

    scenario(body)


def test_cancel_queued_and_running() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        running = registry.admit(SPEC, (), ALICE, detached=True)
        queued = registry.admit(SPEC, (), ALICE, detached=True)
        registry.cancel(queued)
        assert queued.state is JobState.CANCELLED  # at once, never started
        assert queued.job_id not in runner.started
        registry.cancel(running)
        result = await registry.wait(running, 1)
        assert result.state is JobState.CANCELLED
        registry.cancel(running)  # cancelling an ended job changes nothing
        assert registry.counters()["jobs"]["cancelled"] == 2

    scenario(body)


def test_a_runner_fault_costs_one_job_not_the_registry() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        runner.crash = True
        job = registry.admit(SPEC, (), ALICE, detached=True)
        result = await registry.wait(job, 1)
        assert result.state is JobState.ERROR
        assert "internal error" in (result.error or "")
        assert len(result.stages) == 2
        runner.crash = False
        again = registry.admit(SPEC, (), ALICE, detached=True)
        runner.finish(again)
        assert (await registry.wait(again, 1)).state is JobState.SUCCEEDED

    scenario(body)


def test_shutdown_lets_short_jobs_finish_and_cancels_the_rest() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        short = registry.admit(SPEC, (), ALICE, detached=True)
        long = registry.admit(SPEC, (), ALICE, detached=True)
        queued = registry.admit(SPEC, (), ALICE, detached=True)
        asyncio.get_running_loop().call_later(0.05, runner.finish, short)
        registry._clock = asyncio.get_running_loop().time  # real time for grace
        await registry.shutdown(0.3, 0.1, asyncio.Event())
        assert short.state is JobState.SUCCEEDED
        assert long.state is JobState.CANCELLED
        assert queued.state is JobState.CANCELLED
        with pytest.raises(Busy, match="shutting down"):
            registry.admit(SPEC, (), ALICE, detached=True)

    scenario(body, running=2, queued=2)


def test_shutdown_hurried_by_a_second_signal() -> None:
    async def body(registry: JobRegistry, _runner: FakeRunner, _clock: Clock) -> None:
        job = registry.admit(SPEC, (), ALICE, detached=True)
        hurry = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, hurry.set)
        registry._clock = asyncio.get_running_loop().time
        started = asyncio.get_running_loop().time()
        await registry.shutdown(30.0, 0.1, hurry)
        assert asyncio.get_running_loop().time() - started < 5
        assert job.state is JobState.CANCELLED

    scenario(body)


def test_shutdown_cancels_a_runner_that_ignores_its_cancel_event() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        runner.ignore_cancel = True
        job = registry.admit(SPEC, (), ALICE, detached=True)
        registry._clock = asyncio.get_running_loop().time
        await registry.shutdown(0.0, -4.9, asyncio.Event())
        assert job.state is JobState.CANCELLED
        assert job.result is not None
        assert job.result.error == "the daemon stopped"

    scenario(body)


def test_submits_reserve_their_output_cap_until_they_end() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        runner.stdout = "x" * 30
        first = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        # Unfinished, it holds the full cap: a second would not fit in 150.
        with pytest.raises(Busy, match="max_retained_bytes"):
            registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        attached = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=False)
        runner.finish(first)
        runner.finish(attached)
        await settle()
        assert registry.counters()["retained_bytes"] == 30
        second = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        with pytest.raises(Busy, match="max_retained_bytes"):
            registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        runner.finish(second)
        await settle()
        assert registry.counters()["retained_bytes"] == 60
        assert (await registry.wait(first, None)).stdout == "x" * 30
        assert registry.counters()["retained_bytes"] == 30
        third = registry.admit(SPEC, ("/c", "/w"), ALICE, detached=True)
        assert third.state is JobState.RUNNING

    scenario(body, running=4, queued=0, retained_bytes=150, output_bytes=100)


def test_a_submit_that_captures_nothing_reserves_nothing() -> None:
    async def body(registry: JobRegistry, _runner: FakeRunner, _clock: Clock) -> None:
        registry.admit(SPEC, (), ALICE, detached=True)
        with pytest.raises(Busy, match="max_retained_bytes"):
            registry.admit(SPEC, (), ALICE, detached=True)
        passing = registry.admit(SPEC, (), ALICE, detached=True, captures=False)
        assert passing.reserved == 0

    scenario(body, running=4, queued=0, retained_bytes=150, output_bytes=100)


def test_unfetched_and_unfinished_submits_are_bounded_in_number() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        done = registry.admit(SPEC, (), ALICE, detached=True)
        runner.finish(done)
        await settle()
        registry.admit(SPEC, (), BOB, detached=True)
        with pytest.raises(Busy, match="max_retained_jobs"):
            registry.admit(SPEC, (), ALICE, detached=True)
        registry.admit(SPEC, (), ALICE, detached=False)  # run is not retained
        await registry.wait(done, None)
        registry.admit(SPEC, (), ALICE, detached=True)

    scenario(body, running=4, queued=0, retained_jobs=2)


def test_one_uid_runs_its_share_and_the_rest_of_its_jobs_wait() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        first = registry.admit(SPEC, (), ALICE, detached=False)
        second = registry.admit(SPEC, (), ALICE, detached=False)
        assert (first.state, second.state) == (JobState.RUNNING, JobState.QUEUED)
        with pytest.raises(Busy, match="max_queued_jobs_per_uid"):
            registry.admit(SPEC, (), ALICE, detached=False)
        # Another user is not held up behind Alice's queued job.
        bobs = registry.admit(SPEC, (), BOB, detached=False)
        assert bobs.state is JobState.RUNNING
        await settle()
        runner.finish(first)
        await settle()
        assert second.state is JobState.RUNNING
        counters = registry.counters()
        assert (counters["running"], counters["queue_depth"]) == (2, 0)

    scenario(body, running=4, queued=8, running_per_uid=1, queued_per_uid=1)


def test_a_job_waiting_on_its_uid_share_does_not_block_the_next_one() -> None:
    async def body(registry: JobRegistry, runner: FakeRunner, _clock: Clock) -> None:
        alices = [registry.admit(SPEC, (), ALICE, detached=False) for _ in range(2)]
        bobs = [registry.admit(SPEC, (), BOB, detached=False) for _ in range(2)]
        assert [j.state for j in alices + bobs] == [
            JobState.RUNNING, JobState.QUEUED, JobState.RUNNING, JobState.QUEUED
        ]  # fmt: skip
        runner.finish(bobs[0])
        await settle()
        assert (alices[1].state, bobs[1].state) == (JobState.QUEUED, JobState.RUNNING)

    scenario(body, running=4, queued=8, running_per_uid=1)
