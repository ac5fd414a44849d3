"""cuprumctl's pure rules: stage splitting and exit statuses."""

from __future__ import annotations

import pytest

from cuprumd.ctl import exit_status, split_stages
from cuprumd.models import JobResult, JobState, StageResult


def test_split_on_lone_separator_only() -> None:
    assert split_stages(["--", "sort", "-r", "|", "head", "-n", "3"]) == [
        ["sort", "-r"],
        ["head", "-n", "3"],
    ]
    assert split_stages(["grep", "a|b"]) == [["grep", "a|b"]]
    assert split_stages(["tr", "|", "-", "::", "cat"], "::") == [
        ["tr", "|", "-"],
        ["cat"],
    ]


@pytest.mark.parametrize(
    "words", [[], ["|", "cat"], ["cat", "|"], ["a", "|", "|", "b"]]
)
def test_empty_stages_are_refused(words: list[str]) -> None:
    with pytest.raises(ValueError, match="stage"):
        split_stages(words)


def result(state: JobState, *stages: tuple[int | None, str | None]) -> JobResult:
    failed = next((i for i, (code, sig) in enumerate(stages) if code or sig), None)
    return JobResult(
        job_id="j",
        state=state,
        stream_backend="python",
        stages=[
            StageResult(
                argv=["x"],
                pid=1,
                exit_code=code,
                signal=sig,
                stderr="",
                stderr_truncated=False,
            )
            for code, sig in stages
        ],
        stdout="",
        stdout_truncated=False,
        output_encoding="utf-8",
        failed_stage=failed if state is JobState.FAILED else None,
        transfers=[],
        started_at="",
        finished_at="",
        duration_ms=0,
    )


@pytest.mark.parametrize(
    ("job", "status"),
    [
        (result(JobState.SUCCEEDED, (0, None)), 0),
        (result(JobState.FAILED, (0, None), (3, None)), 3),
        (result(JobState.FAILED, (None, "SIGKILL"), (0, None)), 137),
        (result(JobState.FAILED, (None, "SIGWHAT")), 1),
        (result(JobState.TIMED_OUT, (None, "SIGTERM")), 124),
        (result(JobState.CANCELLED, (None, "SIGTERM")), 130),
        (result(JobState.ERROR, (None, None)), 1),
    ],
)
def test_exit_status_is_pipefail(job: JobResult, status: int) -> None:
    assert exit_status(job) == status
