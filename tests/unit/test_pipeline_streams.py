"""Stream parity: both pumps carry every byte exactly, whatever the payload."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuprumd.backend import StreamBackend
from cuprumd.models import JobState
from cuprumd.pipeline import RunOptions, execute
from tests.helpers import job, run


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def roundtrip(backend: StreamBackend, data: bytes, stages: int = 2) -> bytes:
    result = run(
        backend,
        *[["cat"]] * stages,
        stdin=b64(data),
        stdin_encoding="base64",
        output_encoding="base64",
    )
    assert result.state is JobState.SUCCEEDED, result
    assert all(t.bytes == len(data) for t in result.transfers)
    return base64.b64decode(result.stdout)


def test_empty_stream(stream_backend: StreamBackend) -> None:
    result = run(stream_backend, ["true"], ["cat"], ["cat"])
    assert result.state is JobState.SUCCEEDED
    assert result.stdout == ""
    assert [t.bytes for t in result.transfers] == [0, 0]


def test_one_byte(stream_backend: StreamBackend) -> None:
    assert roundtrip(stream_backend, b"x") == b"x"


def test_transfers_name_the_pump(stream_backend: StreamBackend) -> None:
    result = run(stream_backend, ["printf", "abc"], ["cat"], ["cat"])
    expected = "python" if stream_backend is StreamBackend.PYTHON else "rust-splice"
    assert [t.pump for t in result.transfers] == [expected, expected]
    assert [(t.from_stage, t.to_stage) for t in result.transfers] == [(0, 1), (1, 2)]
    assert all(t.fallback_reason is None for t in result.transfers)
    assert result.stream_backend == str(stream_backend)


@pytest.mark.slow
def test_64_mib_random_bytes_sha256(stream_backend: StreamBackend, tmp_path) -> None:
    payload = os.urandom(64 << 20)
    source = tmp_path / "payload"
    source.write_bytes(payload)
    result = run(stream_backend, ["cat", str(source)], ["cat"], ["sha256sum"])
    assert result.state is JobState.SUCCEEDED
    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert [t.bytes for t in result.transfers] == [64 << 20, 64 << 20]


def test_multibyte_utf8_split_across_chunks(stream_backend: StreamBackend) -> None:
    text = "żółć — 日本語 — 🦀" * 50_000
    spec = job(["cat"], ["cat"], stdin=text)
    # A 4097-byte pump buffer splits multi-byte characters between chunks.
    options = RunOptions(pump_buffer_size=4097)
    result = asyncio.run(execute(spec, options, stream_backend))
    assert result.stdout == text


def test_invalid_utf8_becomes_replacement_char(stream_backend: StreamBackend) -> None:
    raw = b"ok \xff\xfe end \xe2\x82"
    result = run(
        stream_backend, ["cat"], ["cat"], stdin=b64(raw), stdin_encoding="base64"
    )
    assert result.stdout == raw.decode("utf-8", "replace")
    assert "\ufffd" in result.stdout


def test_base64_output_is_byte_exact(stream_backend: StreamBackend) -> None:
    raw = bytes(range(256)) * 1000
    assert roundtrip(stream_backend, raw, stages=3) == raw


def test_stderr_is_captured_per_stage(stream_backend: StreamBackend) -> None:
    result = run(
        stream_backend, ["sed", "-n", "w /dev/stderr"], ["cat", "/nonexistent"],
        stdin="to-stderr\n",
    )  # fmt: skip
    assert result.stages[0].stderr == "to-stderr\n"
    assert "/nonexistent" in result.stages[1].stderr
    assert result.state is JobState.FAILED
    assert result.failed_stage == 1


def test_output_past_the_budget_is_cut_like_head_c(
    stream_backend: StreamBackend,
) -> None:
    spec = job(["head", "-c", "10000000", "/dev/zero"], ["cat"])
    result = asyncio.run(
        execute(spec, RunOptions(max_output_bytes=1000), stream_backend)
    )
    assert result.state is JobState.SUCCEEDED  # a SIGPIPE we caused is earned
    assert result.stdout == "\0" * 1000
    assert result.stdout_truncated
    assert result.stages[1].signal == "SIGPIPE"


def test_an_endless_producer_stops_once_its_output_cannot_be_kept(
    stream_backend: StreamBackend,
) -> None:
    # Before the budget, `yes` was drained and discarded until the timeout.
    options = RunOptions(max_output_bytes=4096, default_timeout=60)
    result = asyncio.run(execute(job(["yes"]), options, stream_backend))
    assert result.state is JobState.SUCCEEDED
    assert result.stdout == "y\n" * 2048
    assert result.stages[0].signal == "SIGPIPE"


def test_stdout_and_every_stderr_share_one_budget(
    stream_backend: StreamBackend,
) -> None:
    noisy = ["sh", "-c", "head -c 700 /dev/zero >&2; head -c 700 /dev/zero"]
    spec = job(noisy, ["sh", "-c", "cat; head -c 700 /dev/zero >&2"])
    result = asyncio.run(
        execute(spec, RunOptions(max_output_bytes=1000), stream_backend)
    )
    kept = len(result.stdout) + sum(len(s.stderr) for s in result.stages)
    assert kept == 1000
    assert result.stdout_truncated or any(s.stderr_truncated for s in result.stages)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.binary(max_size=40_000),
    buffer_size=st.integers(min_value=1, max_value=70_000),
    stages=st.integers(min_value=1, max_value=4),
)
def test_random_payloads_survive(
    stream_backend: StreamBackend, payload: bytes, buffer_size: int, stages: int
) -> None:
    spec = job(
        *[["cat"]] * stages,
        stdin=b64(payload),
        stdin_encoding="base64",
        output_encoding="base64",
    )
    options = RunOptions(pump_buffer_size=buffer_size)
    result = asyncio.run(execute(spec, options, stream_backend))
    assert result.state is JobState.SUCCEEDED
    assert base64.b64decode(result.stdout) == payload
    assert [t.bytes for t in result.transfers] == [len(payload)] * (stages - 1)
