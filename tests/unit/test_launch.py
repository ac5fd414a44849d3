"""Both launchers (the native spawner and the ``os.fork`` fallback) run the
same pre-exec steps: one behaviour, tested once for each."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.engine.launch import Launcher, choose_launcher, launch_python
from cuprumd.engine.sandbox import build_policy, open_sandbox
from cuprumd.models import JobResult, JobState
from cuprumd.pipeline import RunOptions, execute
from tests.conftest import require_native
from tests.helpers import child_pids, job

SH = "/bin/sh"


@pytest.fixture(params=["native", "python"])
def launcher(request: pytest.FixtureRequest) -> Launcher:
    if request.param == "python":
        return launch_python
    require_native()
    name, chosen = choose_launcher()
    assert name == "native"
    return chosen


def run(launcher: Launcher, *stages: list[str], **options: Any) -> JobResult:
    fields = options.pop("job_fields", {})
    spec = job(*stages, **fields)
    opts = RunOptions(launcher=launcher, **options)
    return asyncio.run(execute(spec, opts, StreamBackend.PYTHON, job_id="t"))


def test_a_pipeline_runs_and_every_stage_is_reaped(launcher: Launcher) -> None:
    result = run(launcher, ["printf", "b\\na\\n"], ["tac"])
    assert (result.state, result.stdout) == (JobState.SUCCEEDED, "a\nb\n")
    assert child_pids() == []


def test_sigpipe_is_default_in_the_stage(launcher: Launcher) -> None:
    result = run(launcher, ["yes"], ["head", "-n", "1"])
    assert result.state is JobState.SUCCEEDED
    assert result.stages[0].signal == "SIGPIPE"


def test_a_missing_program_names_it_and_the_errno_once(launcher: Launcher) -> None:
    result = run(launcher, ["/nonexistent/prog"])
    assert result.state is JobState.ERROR
    assert result.error == (
        "cannot execute '/nonexistent/prog': No such file or directory (ENOENT)"
    )


def test_a_missing_cwd_is_named(launcher: Launcher) -> None:
    result = run(launcher, ["true"], job_fields={"cwd": "/nonexistent-dir"})
    assert result.error == (
        "cannot change directory to '/nonexistent-dir': "
        "No such file or directory (ENOENT)"
    )


def test_only_the_three_standard_descriptors_reach_the_stage(
    launcher: Launcher,
) -> None:
    # One descriptor low, one above the descriptor limit the stage gets (the
    # daemon's own is raised): neither may pass, inheritable or not.
    low = os.open(os.devnull, os.O_RDONLY)
    high = os.dup2(low, 1500)
    os.set_inheritable(low, True)
    probe = f"for fd in {low} 1500; do test -e /proc/self/fd/$fd && echo $fd; done; :"
    try:
        result = run(
            launcher,
            [SH, "-c", probe],
            rlimits=((resource.RLIMIT_NOFILE, 1024, 4096),),
        )
    finally:
        os.close(low)
        os.close(high)
    assert result.state is JobState.SUCCEEDED
    assert result.stdout == ""


def test_rlimits_apply_in_the_stage(launcher: Launcher) -> None:
    result = run(
        launcher,
        [SH, "-c", "ulimit -Sn; ulimit -t"],
        rlimits=((resource.RLIMIT_NOFILE, 77, 1024), (resource.RLIMIT_CPU, 9, 9)),
    )
    assert result.stdout.split() == ["77", "9"]


def test_later_stages_join_the_first_stages_group(launcher: Launcher) -> None:
    pgid = "cut -d' ' -f5 /proc/self/stat"
    result = run(launcher, [SH, "-c", pgid], [SH, "-c", f"cat; {pgid}"])
    assert result.stdout.split() == [str(result.stages[0].pid)] * 2


@pytest.fixture
def strict() -> Iterator[Any]:
    sandbox = open_sandbox(build_policy("strict", [SH, "/usr/bin/cat"]))
    assert sandbox is not None
    yield sandbox
    sandbox.close()


def test_the_sandbox_holds_in_the_stage(launcher: Launcher, strict: Any) -> None:
    result = run(
        launcher, [SH, "-c", "id; cat /etc/hostname >/dev/null"], sandbox=strict
    )
    assert "Permission denied" in result.stages[0].stderr
    assert "uid=" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_stages_run_as_the_job_user_without_capabilities(launcher: Launcher) -> None:
    result = run(
        launcher,
        [SH, "-c", "grep -E '^(Uid|Gid|Groups|CapEff):' /proc/self/status"],
        user=(65534, 65533),
    )
    fields = {
        line.split(":")[0]: line.split(":")[1].split()
        for line in result.stdout.splitlines()
    }
    assert fields["Uid"] == ["65534"] * 4
    assert fields["Gid"] == ["65533"] * 4
    assert fields["Groups"] == []
    assert fields["CapEff"] == ["0000000000000000"]


def test_a_stage_dies_with_the_spawning_thread(launcher: Launcher) -> None:
    import threading

    from cuprumd.engine.launch import StageLaunch

    spawned: list[tuple[int, int]] = []

    def spawn() -> None:
        spawned.append(
            launcher(StageLaunch("/bin/sleep", ["sleep", "60"], {}, (0, 1, 2), 0))
        )

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    [(_pid, pidfd)] = spawned
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    os.close(pidfd)
    assert info is not None
    assert (info.si_code, info.si_status) == (os.CLD_KILLED, signal.SIGKILL)
