"""The pure rules that turn observed facts into a job state."""

from __future__ import annotations

import signal

import pytest

from cuprumd.models import JobState
from cuprumd.outcome import Facts, build_result, decide_state, signal_name

PIPE = -int(signal.SIGPIPE)


def state(**facts: object) -> tuple[JobState, int | None]:
    base: dict[str, object] = {
        "error": None,
        "end_state": None,
        "fail_fast_stage": None,
        "returncodes": [0, 0],
        "downstream_closed": [False],
    }
    base.update(facts)
    return decide_state(**base)  # type: ignore[arg-type]


def test_all_zero_succeeds() -> None:
    assert state() == (JobState.SUCCEEDED, None)


def test_first_non_zero_stage_is_named() -> None:
    assert state(returncodes=[0, 2, 1], downstream_closed=[False, False]) == (
        JobState.FAILED,
        1,
    )


def test_sigpipe_after_downstream_closed_is_not_a_failure() -> None:
    assert state(returncodes=[PIPE, 0], downstream_closed=[True]) == (
        JobState.SUCCEEDED,
        None,
    )


def test_sigpipe_without_downstream_close_fails() -> None:
    assert state(returncodes=[PIPE, 0], downstream_closed=[False]) == (
        JobState.FAILED,
        0,
    )


def test_sigpipe_of_the_last_stage_fails() -> None:
    assert state(returncodes=[0, PIPE], downstream_closed=[True]) == (
        JobState.FAILED,
        1,
    )


def test_sigpipe_after_the_daemon_cut_the_output_is_not_a_failure() -> None:
    # The job's output budget was spent and the daemon closed the last
    # stage's stdout: the stage died as it would behind `| head -c N`.
    assert state(
        returncodes=[0, PIPE], downstream_closed=[False], output_cut=[False, True]
    ) == (JobState.SUCCEEDED, None)
    assert state(
        returncodes=[PIPE, 0], downstream_closed=[False], output_cut=[False, True]
    ) == (JobState.FAILED, 0)


def test_fail_fast_names_the_trigger_not_the_victims() -> None:
    killed = -int(signal.SIGTERM)
    assert state(returncodes=[killed, 1], fail_fast_stage=1) == (JobState.FAILED, 1)


@pytest.mark.parametrize("end", [JobState.TIMED_OUT, JobState.CANCELLED])
def test_imposed_end_beats_stage_verdicts(end: JobState) -> None:
    assert state(returncodes=[-15, 1], end_state=end) == (end, None)


def test_error_beats_everything() -> None:
    assert state(error="boom", end_state=JobState.TIMED_OUT, returncodes=[1, 1]) == (
        JobState.ERROR,
        None,
    )


def test_signal_names() -> None:
    assert signal_name(0) is None
    assert signal_name(3) is None
    assert signal_name(None) is None
    assert signal_name(PIPE) == "SIGPIPE"
    assert signal_name(-9) == "SIGKILL"


def test_a_result_costs_the_bytes_the_job_wrote_not_their_encoding() -> None:
    facts = Facts(
        job_id="j",
        backend="python",
        argvs=[["a"], ["b"]],
        pids=[1, 2],
        returncodes=[0, 0],
        stderrs=[(b"\xff\xfe", False), (b"", False)],
        stdout=(b"abc", False),
        transfers=[],
        encoding="base64",
        started_at="t",
        duration_ms=1.0,
        error=None,
        end_state=None,
        fail_fast_stage=None,
    )
    result = build_result(facts)
    assert result.output_bytes == 5
    assert len(result.stdout) + len(result.stages[0].stderr) == 8
    assert result.model_copy(update={"error": "x"}).output_bytes == 5
    assert "output_bytes" not in result.model_dump()
