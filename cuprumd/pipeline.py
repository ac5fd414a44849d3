"""Placeholder: the pipeline runner is being written (see execute's contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from cuprumd.backend import StreamBackend
from cuprumd.models import JobResult, JobSpec
from cuprumd.settings import Settings


@dataclass(frozen=True)
class RunOptions:
    """The settings a single job run needs."""

    max_output_bytes: int = 16 << 20
    default_timeout: float = 300.0
    kill_grace_seconds: float = 5.0
    pump_buffer_size: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> RunOptions:
        return cls(
            max_output_bytes=settings.max_output_bytes,
            default_timeout=settings.default_timeout,
            kill_grace_seconds=settings.kill_grace_seconds,
            pump_buffer_size=settings.pump_buffer_size,
        )


async def execute(
    job: JobSpec,
    options: RunOptions,
    backend: StreamBackend,
    *,
    job_id: str | None = None,
    cancel: asyncio.Event | None = None,
    executables: Sequence[str] | None = None,
    peer_uid: int | None = None,
) -> JobResult:
    raise NotImplementedError
