"""How a job ended, decided from facts gathered by the runner.

Kept apart from the runner so the rules (pipefail, the SIGPIPE exception,
which end state wins) are plain functions of plain data, tested without
spawning anything.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cuprumd.models import (
    Encoding,
    JobResult,
    JobState,
    PumpName,
    StageResult,
    TransferResult,
)

__all__ = [
    "Facts",
    "TransferOutcome",
    "build_result",
    "decide_state",
    "now_iso",
    "signal_name",
]

_SIGPIPE = -int(signal.SIGPIPE)


def now_iso() -> str:
    """A UTC timestamp with milliseconds, as results carry them."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def signal_name(returncode: int | None) -> str | None:
    """``"SIGPIPE"`` for a stage killed by signal 13, ``None`` for an exit."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"SIG{-returncode}"


def encode(data: bytes, encoding: Encoding) -> str:
    """Output as the job asked for it: exact base64, or UTF-8 with U+FFFD."""
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", "replace")


def decide_state(
    *,
    error: str | None,
    end_state: JobState | None,
    fail_fast_stage: int | None,
    returncodes: Sequence[int | None],
    downstream_closed: Sequence[bool],
    output_cut: Sequence[bool] = (),
) -> tuple[JobState, int | None]:
    """The job's state and failed stage.

    An error (the job could not run as asked) beats an end the daemon
    imposed (timeout, cancel), which beats the stages' own verdict. A stage
    killed by SIGPIPE after its downstream closed the pipe did what any
    producer does when its consumer is done, so it is not a failure.
    """
    if error is not None:
        return JobState.ERROR, None
    if end_state is not None:
        return end_state, None
    if fail_fast_stage is not None:
        return JobState.FAILED, fail_fast_stage
    for index, code in enumerate(returncodes):
        if code in (None, 0):
            continue
        closed_on_it = (
            index < len(downstream_closed) and downstream_closed[index]
        ) or (index < len(output_cut) and output_cut[index])
        earned_sigpipe = code == _SIGPIPE and closed_on_it
        if not earned_sigpipe:
            return JobState.FAILED, index
    return JobState.SUCCEEDED, None


@dataclass(frozen=True)
class TransferOutcome:
    """What one transfer did: the pump that ran, bytes moved, and why the
    Rust pump was bypassed (``None`` when it was not)."""

    pump: PumpName
    bytes: int
    fallback_reason: str | None = None
    downstream_closed: bool = False


@dataclass(frozen=True)
class Facts:
    """What the runner observed about one job."""

    job_id: str | None
    backend: str
    argvs: Sequence[Sequence[str]]
    pids: Sequence[int | None]
    returncodes: Sequence[int | None]
    stderrs: Sequence[tuple[bytes, bool]]
    stdout: tuple[bytes, bool]
    transfers: Sequence[TransferOutcome]
    encoding: Encoding
    started_at: str
    duration_ms: float
    error: str | None
    end_state: JobState | None
    fail_fast_stage: int | None
    output_cut: Sequence[bool] = ()
    passed: Sequence[str] = ()
    streamed: bool = False
    #: Output kept in spool files rather than in ``stdout``/``stderrs``.
    spooled_bytes: int | None = None


def build_result(facts: Facts) -> JobResult:
    """Assemble the JobResult the client receives."""
    state, failed_stage = decide_state(
        error=facts.error,
        end_state=facts.end_state,
        fail_fast_stage=facts.fail_fast_stage,
        returncodes=facts.returncodes,
        downstream_closed=[t.downstream_closed for t in facts.transfers],
        output_cut=facts.output_cut,
    )
    # model_construct: every value comes from the runner, already of its
    # type, and validating them again would cost each job's round trip.
    stages = [
        StageResult.model_construct(
            argv=list(argv),
            pid=pid,
            exit_code=code if code is not None and code >= 0 else None,
            signal=signal_name(code),
            stderr=encode(err, facts.encoding),
            stderr_truncated=truncated,
        )
        for argv, pid, code, (err, truncated) in zip(
            facts.argvs, facts.pids, facts.returncodes, facts.stderrs, strict=True
        )
    ]
    transfers = [
        TransferResult.model_construct(
            from_stage=i,
            to_stage=i + 1,
            pump=t.pump,
            bytes=t.bytes,
            fallback_reason=t.fallback_reason,
        )
        for i, t in enumerate(facts.transfers)
    ]
    result = JobResult.model_construct(
        job_id=facts.job_id,
        state=state,
        stream_backend=facts.backend,
        stages=stages,
        stdout=encode(facts.stdout[0], facts.encoding),
        stdout_truncated=facts.stdout[1],
        output_encoding=facts.encoding,
        failed_stage=failed_stage,
        transfers=transfers,
        started_at=facts.started_at,
        finished_at=now_iso(),
        duration_ms=facts.duration_ms,
        error=facts.error,
        passed=list(facts.passed),
        streamed=facts.streamed,
    )
    if facts.spooled_bytes is not None:
        result._output_bytes = facts.spooled_bytes
    else:
        kept = len(facts.stdout[0]) + sum(len(e) for e, _ in facts.stderrs)
        result._output_bytes = kept
    return result


def with_output(
    result: JobResult, stdout: bytes, stderrs: Sequence[bytes]
) -> JobResult:
    """A result whose output was spooled, with that output put back in (as
    the job asked for it encoded)."""
    encoding = result.output_encoding
    stages = [
        stage.model_copy(update={"stderr": encode(err, encoding)})
        for stage, err in zip(result.stages, stderrs, strict=False)
    ]
    full = result.model_copy(
        update={"stdout": encode(stdout, encoding), "stages": stages}
    )
    full._output_bytes = len(stdout) + sum(len(e) for e in stderrs)
    return full
