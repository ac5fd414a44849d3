"""Jobs and their results, as they travel over the wire and through the runner.

Requests are validated strictly (no coercion of ``"1"`` into ``1``, no
unknown fields) because a client's typo should be an error it sees, not a
job that silently does something else.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

__all__ = [
    "Encoding",
    "JobResult",
    "JobSpec",
    "JobState",
    "PumpName",
    "StageResult",
    "StageSpec",
    "TransferResult",
]

Encoding = Literal["utf-8", "base64"]
PumpName = Literal["python", "rust-splice", "rust-copy"]


class JobState(enum.StrEnum):
    """Where a job is in its life; all but the first two are end states.
    ``lost``: the daemon stopped (crashed, was killed) while the job was
    queued or running; its processes died with the daemon's cgroup."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """Whether the job has ended and its result is final."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _exec_safe(value: str, what: str) -> str:
    """A string that can reach ``execve`` as it is: no NUL, valid UTF-8.

    A lone surrogate (JSON ``"\\ud800"``) has no UTF-8 form; refusing it here
    keeps it from failing half-way through starting a pipeline.
    """
    if "\0" in value:
        msg = f"{what} must not contain NUL bytes"
        raise ValueError(msg)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"{what} must be valid Unicode text: {exc.reason} at index {exc.start}"
        raise ValueError(msg) from None
    return value


class StageSpec(_Strict):
    """One program of the pipeline, as an argv list (never a shell string)."""

    argv: list[str] = Field(min_length=1)

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            msg = "argv[0] must name a program"
            raise ValueError(msg)
        for arg in argv:
            _exec_safe(arg, "argv")
        return argv


class JobSpec(_Strict):
    """A pipeline job: 1..N stages plus its input, environment and limits."""

    stages: list[StageSpec] = Field(min_length=1)
    stdin: str | None = None
    stdin_encoding: Encoding = "utf-8"
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    output_encoding: Encoding = "utf-8"
    fail_fast: bool = False

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not key or "=" in key:
                msg = f"env key {key!r} must be non-empty and contain no '='"
                raise ValueError(msg)
            _exec_safe(key, "env keys")
            _exec_safe(value, "env values")
        return env

    @field_validator("cwd")
    @classmethod
    def _check_cwd(cls, cwd: str | None) -> str | None:
        return None if cwd is None else _exec_safe(cwd, "cwd")

    @model_validator(mode="after")
    def _check_stdin(self) -> JobSpec:
        if self.stdin is not None and self.stdin_encoding == "base64":
            try:
                base64.b64decode(self.stdin, validate=True)
            except binascii.Error as exc:
                msg = f"stdin is not valid base64: {exc}"
                raise ValueError(msg) from None
        elif self.stdin is not None:
            try:
                self.stdin.encode("utf-8")
            except UnicodeEncodeError as exc:
                msg = (
                    f"stdin is not valid Unicode text ({exc.reason} at index "
                    f"{exc.start}); send arbitrary bytes with stdin_encoding "
                    "'base64'"
                )
                raise ValueError(msg) from None
        return self

    def stdin_bytes(self) -> bytes | None:
        """The job's input as bytes, or ``None`` for ``/dev/null``."""
        if self.stdin is None:
            return None
        if self.stdin_encoding == "base64":
            return base64.b64decode(self.stdin, validate=True)
        return self.stdin.encode("utf-8")

    @property
    def argv0s(self) -> list[str]:
        """The program of each stage, for listings and logs."""
        return [stage.argv[0] for stage in self.stages]


class StageResult(BaseModel):
    """How one stage ended. ``signal`` is a name such as ``"SIGPIPE"``."""

    argv: list[str]
    pid: int | None
    exit_code: int | None
    signal: str | None
    stderr: str
    stderr_truncated: bool


class TransferResult(BaseModel):
    """What one pump moved from stage ``from_stage`` to ``to_stage``."""

    from_stage: int
    to_stage: int
    pump: PumpName
    bytes: int
    fallback_reason: str | None = None


class JobResult(BaseModel):
    """The outcome of a job; ``stdout`` and each ``stderr`` use
    ``output_encoding``."""

    job_id: str | None
    state: JobState
    stream_backend: str
    stages: list[StageResult]
    stdout: str
    stdout_truncated: bool
    output_encoding: Encoding
    failed_stage: int | None
    transfers: list[TransferResult]
    started_at: str
    finished_at: str
    duration_ms: float
    error: str | None = None
    #: Streams the client passed as descriptors: not captured, so their
    #: fields above are empty.
    passed: list[str] = Field(default_factory=list)
    #: The output went to the client as ``output`` events while the job ran
    #: (``"stream": true``), so none is in the result.
    streamed: bool = False
    #: The bytes of output the job wrote and the result keeps (stdout and
    #: every stderr, before encoding): what a retained result costs.
    _output_bytes: int = PrivateAttr(default=0)

    @property
    def output_bytes(self) -> int:
        """Captured output in bytes as the job wrote them (not on the wire)."""
        return self._output_bytes
