"""Pathway selection at the pipeline level (seed 002)."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
from typing import Any

import pytest
from structlog.testing import capture_logs

from cuprumd import backend, pipeline, pump
from cuprumd.backend import StreamBackend
from cuprumd.models import JobState
from cuprumd.pipeline import RunOptions, execute, run_pipeline
from cuprumd.pump import rust_unsupported_reason
from tests.helpers import SocketPlumbing, job


class IdleProgress:
    """A native progress record that never moved a byte."""

    bytes = 0
    method = None


@pytest.fixture
def socket_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "open_plumbing", SocketPlumbing)


def test_env_override_python_routes_every_transfer_through_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: True)
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "python")
    result = run_pipeline(job(["printf", "a\nb\n"], ["cat"], ["sort", "-r"]))
    assert result.stdout == "b\na\n"
    assert result.stream_backend == "python"
    assert [t.pump for t in result.transfers] == ["python", "python"]


def test_settings_choose_the_backend_when_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cuprumd.settings import Settings

    # The environment asks for rust, which is missing: only if the settings
    # are honoured (they outrank the environment) does the job run at all.
    monkeypatch.setattr(backend, "_probe_native", lambda: False)
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "rust")
    result = run_pipeline(job(["true"]), Settings(stream_backend="python"))
    assert result.stream_backend == "python"
    with pytest.raises(ImportError, match="CUPRUM_STREAM_BACKEND"):
        run_pipeline(job(["true"]), Settings(stream_backend="rust"))


def test_forced_rust_unavailable_raises_at_execution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: False)
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "rust")
    spec = job(["true"])  # building the job is fine; running it is not
    with pytest.raises(ImportError, match="CUPRUM_STREAM_BACKEND"):
        run_pipeline(spec)


def test_rust_with_unusable_descriptors_falls_back_per_transfer(
    socket_links: None,
) -> None:
    with capture_logs() as logs:
        result = asyncio.run(
            execute(job(["printf", "hello"], ["cat"]), RunOptions(), StreamBackend.RUST)
        )
    assert result.state is JobState.SUCCEEDED
    assert result.stdout == "hello"
    (transfer,) = result.transfers
    assert transfer.pump == "python"
    assert transfer.bytes == 5
    assert re.fullmatch(
        r"reader fd \d+ is a socket, not a pipe", str(transfer.fallback_reason)
    )
    fallbacks = [e for e in logs if e["event"] == "pump.fallback"]
    assert len(fallbacks) == 1
    assert fallbacks[0]["from_stage"] == 0
    assert "socket" in fallbacks[0]["reason"]


def test_native_reporting_unsupported_falls_back_without_losing_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class RefusingNative:
        calls = 0
        TransferProgress = IdleProgress

        def rust_pump_transfer(
            self, *args: Any, **kwargs: Any
        ) -> tuple[int, str, bool]:
            RefusingNative.calls += 1
            raise OSError(errno.EOPNOTSUPP, "descriptor flags not supported")

    monkeypatch.setattr(pump, "_load_native", RefusingNative)
    data = "x" * 300_000
    result = asyncio.run(
        execute(job(["cat"], ["cat"], stdin=data), RunOptions(), StreamBackend.RUST)
    )
    assert RefusingNative.calls == 1
    assert result.stdout == data
    (transfer,) = result.transfers
    assert transfer.pump == "python"
    assert transfer.bytes == len(data)
    assert transfer.fallback_reason == "native pump: descriptor flags not supported"


def test_python_backend_never_loads_the_native_pump(
    monkeypatch: pytest.MonkeyPatch, socket_links: None
) -> None:
    def forbidden() -> None:
        raise AssertionError("python backend must not touch the native pump")

    monkeypatch.setattr(pump, "_load_native", forbidden)
    result = asyncio.run(
        execute(job(["printf", "z"], ["cat"]), RunOptions(), StreamBackend.PYTHON)
    )
    assert result.transfers[0].pump == "python"
    assert result.transfers[0].fallback_reason is None


def test_unsupported_reason_is_none_for_two_pipes() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    a, b = socket.socketpair()
    try:
        assert rust_unsupported_reason(r1, w2) is None
        assert rust_unsupported_reason(a.fileno(), w2) == (
            f"reader fd {a.fileno()} is a socket, not a pipe"
        )
        assert rust_unsupported_reason(r1, b.fileno()) == (
            f"writer fd {b.fileno()} is a socket, not a pipe"
        )
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
        a.close()
        b.close()


def test_pump_io_error_makes_the_job_an_error_not_a_short_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class FailingNative:
        TransferProgress = IdleProgress

        def rust_pump_transfer(
            self, *args: Any, **kwargs: Any
        ) -> tuple[int, str, bool]:
            raise OSError(errno.EIO, "splice: Input/output error")

    monkeypatch.setattr(pump, "_load_native", FailingNative)
    result = asyncio.run(
        execute(job(["printf", "data"], ["cat"]), RunOptions(), StreamBackend.RUST)
    )
    assert result.state is JobState.ERROR
    assert result.error is not None
    assert result.error.startswith("pump 0->1 failed:")
    assert "Input/output error" in result.error
