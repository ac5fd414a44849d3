"""Process lifecycle: early exit, failures, timeouts, cancel, no leaks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.engine.limits import raise_fd_limit
from cuprumd.engine.pipesize import PipeBudget, PipeLedger
from cuprumd.engine.streams import Streams
from cuprumd.models import JobState
from cuprumd.pipeline import RunOptions, execute
from tests.daemon_harness import wait_for
from tests.helpers import (
    child_pids,
    job,
    open_fds,
    pid_alive,
    run,
    run_async,
    wait_until_gone,
)


def test_yes_head_ends_promptly_with_sigpipe(stream_backend: StreamBackend) -> None:
    started = time.monotonic()
    result = run(stream_backend, ["yes"], ["head", "-n", "1"])
    assert time.monotonic() - started < 10
    assert result.stdout == "y\n"
    assert result.stages[0].signal == "SIGPIPE"
    assert result.stages[0].exit_code is None
    assert result.state is JobState.SUCCEEDED  # SIGPIPE after downstream closed
    assert result.failed_stage is None


def test_pipefail_names_the_first_failing_stage(stream_backend: StreamBackend) -> None:
    result = run(stream_backend, ["printf", "x"], ["false"], ["sh", "-c", "exit 3"])
    assert result.state is JobState.FAILED
    assert result.failed_stage == 1
    assert [s.exit_code for s in result.stages] == [0, 1, 3]


def test_fail_fast_terminates_the_others(stream_backend: StreamBackend) -> None:
    started = time.monotonic()
    result = run(stream_backend, ["sleep", "30"], ["false"], fail_fast=True)
    assert time.monotonic() - started < 10
    assert result.state is JobState.FAILED
    assert result.failed_stage == 1
    assert result.stages[0].signal == "SIGTERM"


def test_missing_program_is_an_error_and_cleans_up(
    stream_backend: StreamBackend,
) -> None:
    before = open_fds()
    result = run(stream_backend, ["sleep", "30"], ["no-such-program-xyz"])
    assert result.state is JobState.ERROR
    assert result.error is not None
    assert "no-such-program-xyz" in result.error
    assert "ENOENT" in result.error
    first = result.stages[0].pid
    assert first is not None
    assert not pid_alive(first)
    assert result.stages[1].pid is None
    assert open_fds() == before
    assert child_pids() == []


def test_bad_cwd_is_an_error(stream_backend: StreamBackend, tmp_path: Path) -> None:
    result = run(stream_backend, ["true"], cwd=str(tmp_path / "missing"))
    assert result.state is JobState.ERROR
    assert "cannot change directory" in (result.error or "")


def test_env_overlay_on_minimal_base(
    stream_backend: StreamBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUPRUM_SECRET", "leak")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    result = run(
        stream_backend, ["sh", "-c", "env; pwd"], env={"FOO": "bar"}, cwd=str(tmp_path)
    )
    lines = result.stdout.splitlines()
    assert "FOO=bar" in lines
    assert str(tmp_path) in lines
    assert not any(line.startswith(("CUPRUM_", "NOTIFY_SOCKET")) for line in lines)


def test_stdin_defaults_to_dev_null(stream_backend: StreamBackend) -> None:
    result = run(stream_backend, ["sh", "-c", "readlink /proc/self/fd/0"], ["cat"])
    assert result.stdout.strip() == "/dev/null"


def test_stages_share_one_new_process_group(stream_backend: StreamBackend) -> None:
    result = run(stream_backend, ["sh", "-c", "ps -o pgid= -p $$"], ["cat"])
    pgid = int(result.stdout)
    assert pgid == result.stages[0].pid
    assert pgid != __import__("os").getpgrp()


def test_timeout_kills_the_whole_group(stream_backend: StreamBackend) -> None:
    started = time.monotonic()
    result = run(
        stream_backend,
        ["sh", "-c", "echo partial; sleep 30 & sleep 30"],
        ["cat"],
        timeout=0.5,
    )
    assert time.monotonic() - started < 10
    assert result.state is JobState.TIMED_OUT
    assert result.stdout == "partial\n"
    assert all(not pid_alive(s.pid) for s in result.stages if s.pid)
    group = result.stages[0].pid
    assert group is not None
    assert wait_until_gone(group) == []


def test_sigterm_ignored_then_sigkill_after_grace(
    stream_backend: StreamBackend,
) -> None:
    spec = job(["sh", "-c", "trap '' TERM; sleep 30"], timeout=0.3)
    options = RunOptions(kill_grace_seconds=0.3)
    started = time.monotonic()
    result = asyncio.run(execute(spec, options, stream_backend))
    assert time.monotonic() - started < 10
    assert result.state is JobState.TIMED_OUT
    assert result.stages[0].signal == "SIGKILL"


def test_cancel_mid_transfer(stream_backend: StreamBackend) -> None:
    async def scenario() -> None:
        cancel = asyncio.Event()
        task = asyncio.create_task(
            run_async(
                stream_backend, job(["yes"], ["cat"], ["sleep", "30"]), cancel=cancel
            )
        )
        await asyncio.sleep(0.3)
        cancel.set()
        result = await asyncio.wait_for(task, 10)
        assert result.state is JobState.CANCELLED
        assert all(not pid_alive(s.pid) for s in result.stages if s.pid)

    asyncio.run(scenario())
    assert child_pids() == []


def test_cancelling_the_task_reaps_everything(stream_backend: StreamBackend) -> None:
    async def scenario() -> None:
        # An hour: if cancelling waited for the stages instead of killing
        # them, the test would run into pytest's timeout.
        task = asyncio.create_task(
            run_async(stream_backend, job(["yes"], ["sleep", "3600"]))
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = open_fds()
    asyncio.run(scenario())
    assert child_pids() == []
    # A rust pump's thread closes its own pipe ends once the killed stages
    # let go of them, a moment after the job: promptly, not synchronously.
    assert wait_for(lambda: open_fds() == before, timeout=5), open_fds() - before


def test_500_jobs_leak_no_fd_and_no_zombie(stream_backend: StreamBackend) -> None:
    async def burst() -> None:
        for i in range(500):
            spec = job(["printf", str(i)], ["cat"], ["cat"]) if i % 2 else job(["true"])
            result = await run_async(stream_backend, spec)
            assert result.state is JobState.SUCCEEDED

    asyncio.run(burst())  # warm-up: lazily opened fds (urandom, epoll) settle
    before = open_fds()
    asyncio.run(burst())
    assert open_fds() == before
    assert child_pids() == []


def test_every_job_gives_its_pipe_grant_back(stream_backend: StreamBackend) -> None:
    """Whatever way a job ends (success, a stage that cannot start, a
    timeout, a cancelled task), its share of the pipe budget returns."""
    budget = PipeBudget(16384, 0, 1 << 20, 4096, exempt=False)
    ledger = PipeLedger(wanted=1 << 20, max_jobs=4, max_stages=3, budget=budget)
    options = RunOptions(pipes=ledger, kill_grace_seconds=0.2)

    async def scenario() -> None:
        ok = await execute(job(["printf", "x"], ["cat"]), options, stream_backend)
        assert ok.state is JobState.SUCCEEDED
        missing = job(["true"], ["/nonexistent/program"])
        assert (await execute(missing, options, stream_backend)).state is (
            JobState.ERROR
        )
        slow = job(["sleep", "5"], ["cat"]).model_copy(update={"timeout": 0.2})
        timed = await execute(slow, options, stream_backend)
        assert timed.state is JobState.TIMED_OUT
        task = asyncio.create_task(
            execute(job(["sleep", "5"], ["cat"]), options, stream_backend)
        )
        await asyncio.sleep(0.2)
        assert ledger.held_pages > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert ledger.held_pages == 0


def test_a_fault_while_starting_streams_ends_the_job_and_frees_everything(
    stream_backend: StreamBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a failed spawn: anything that fails while the job starts
    (here: no thread left for a pump) is the job's error, and its stages,
    descriptors and pipe grant are released as on any other end."""

    def no_thread(self: Streams, stdin: object) -> None:
        raise RuntimeError("can't start new thread")

    budget = PipeBudget(16384, 0, 1 << 20, 4096, exempt=False)
    ledger = PipeLedger(wanted=1 << 20, max_jobs=4, max_stages=3, budget=budget)
    options = RunOptions(pipes=ledger, kill_grace_seconds=0.2)
    spec = job(["sleep", "30"], ["cat"], ["cat"])
    asyncio.run(run_async(stream_backend, job(["true"]), options))  # warm-up
    before = open_fds()
    monkeypatch.setattr(Streams, "start", no_thread)
    started = time.monotonic()
    result = asyncio.run(run_async(stream_backend, spec, options))
    assert result.state is JobState.ERROR
    assert result.error is not None
    assert "can't start new thread" in result.error
    assert time.monotonic() - started < 10  # the sleep was killed, not waited for
    assert child_pids() == []
    assert open_fds() == before
    assert ledger.held_pages == 0


@pytest.mark.slow
def test_64_concurrent_pipelines_all_finish(stream_backend: StreamBackend) -> None:
    raise_fd_limit()

    async def many() -> list[JobState]:
        spec = job(["head", "-c", str(16 << 20), "/dev/zero"], ["cat"], ["wc", "-c"])
        results = await asyncio.wait_for(
            asyncio.gather(*(run_async(stream_backend, spec) for _ in range(64))), 120
        )
        for result in results:
            assert result.stdout.strip() == str(16 << 20)
        return [r.state for r in results]

    assert asyncio.run(many()) == [JobState.SUCCEEDED] * 64


SLOW_CONSUMER = """
import sys, time
total = 0
while chunk := sys.stdin.buffer.read(1 << 20):
    total += len(chunk)
    time.sleep(0.01)
print(total)
"""

MEASURE = """
import sys
from cuprumd.pipeline import run_pipeline
result = run_pipeline({"stages": [
    {"argv": ["head", "-c", str(256 << 20), "/dev/zero"]},
    {"argv": ["cat"]},
    {"argv": [sys.executable, "-c", sys.argv[2]]},
]}, backend=sys.argv[1])
assert result.stdout.strip() == str(256 << 20), result
# ru_maxrss would include the pytest parent's size (it survives fork+exec);
# VmHWM is this process's own peak.
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(status.split()[0])
"""


@pytest.mark.slow
def test_slow_consumer_does_not_buffer_the_stream(
    stream_backend: StreamBackend,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(stream_backend), SLOW_CONSUMER],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    peak_kib = int(proc.stdout.split()[-1])
    assert peak_kib < 128 * 1024, f"runner peaked at {peak_kib} KiB"
