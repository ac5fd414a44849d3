"""A streaming run: output arrives as the job writes it, input goes in as
the client sends it, and neither is held by the daemon beyond a chunk."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.client import AsyncClient
from cuprumd.models import JobResult, JobState
from cuprumd.protocol import OutputEvent
from tests.daemon_harness import Daemon, DaemonPool, daemon_uid, job, wait_for

BIG = 40 << 20


@pytest.fixture(scope="module")
def pool() -> Iterator[DaemonPool]:
    pool = DaemonPool(
        programs=["cat", "wc", "head", "yes", "sleep", "printf"],
        max_output_bytes=1 << 20,
    )
    yield pool
    pool.close()


@pytest.fixture
def daemon(pool: DaemonPool, stream_backend: StreamBackend) -> Daemon:
    return pool.get(stream_backend)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_output_beyond_max_output_bytes_streams_whole(daemon: Daemon) -> None:
    received = 0
    result: JobResult | None = None
    peak = 0
    with daemon.client() as client:
        for item in client.stream(
            job(["yes"], ["head", "-c", str(BIG)], output_encoding="base64")
        ):
            if isinstance(item, OutputEvent):
                assert (item.stream, item.stage) == ("stdout", 1)
                received += len(base64.b64decode(item.data))
                peak = max(peak, rss_kib(daemon.proc.pid))
            else:
                result = item
    assert received == BIG  # 40 times max_output_bytes, nothing cut
    assert result is not None
    assert result.state is JobState.SUCCEEDED
    assert result.streamed
    assert result.stdout == ""
    assert not result.stdout_truncated
    assert peak < 200 * 1024  # the daemon holds a chunk, not the stream


def test_input_streams_in_without_a_size_limit(daemon: Daemon) -> None:
    chunk = b"z" * (1 << 20)
    with daemon.client() as client:
        items = list(
            client.stream(job(["cat"], ["wc", "-c"]), stdin=(chunk for _ in range(24)))
        )
    *events, result = items
    assert isinstance(result, JobResult)
    assert result.state is JobState.SUCCEEDED
    text = "".join(e.data for e in events if isinstance(e, OutputEvent))
    assert text.strip() == str(24 << 20)


def test_stderr_events_name_their_stage(daemon: Daemon) -> None:
    with daemon.client() as client:
        items = list(client.stream(job(["cat", "/nonexistent"], ["cat"])))
    events = [i for i in items if isinstance(i, OutputEvent)]
    # cat's message leaves in several writes (glibc's error() prints the
    # program name, the file and the reason apart), so it may come as
    # more than one event; every one of them names stage 0's stderr.
    assert events
    assert {(e.stream, e.stage) for e in events} == {("stderr", 0)}
    text = "".join(e.data for e in events)
    assert "nonexistent" in text
    assert text.endswith("\n")
    assert isinstance(items[-1], JobResult)
    assert items[-1].state is JobState.FAILED


def test_leaving_the_stream_early_cancels_the_job(daemon: Daemon) -> None:
    with daemon.client() as client:
        for item in client.stream(job(["yes"])):
            assert isinstance(item, OutputEvent)
            break  # the generator closes the connection
    assert wait_for(lambda: not daemon.children(), timeout=10)
    assert daemon.request({"op": "ping"})["ok"] is True


def test_a_client_that_stops_reading_stalls_the_job_not_the_daemon(
    daemon: Daemon,
) -> None:
    pid = daemon.proc.pid
    before = rss_kib(pid)
    with daemon.connect() as conn:
        conn.send({"id": 1, "op": "run", "stream": True, "job": job(["yes"])})
        # Never read: the socket fills, then the job's pipe; nothing else.
        assert wait_for(lambda: bool(daemon.children()), timeout=5)
        for _ in range(10):
            assert daemon.request({"op": "ping"})["ok"] is True
            assert rss_kib(pid) < before + 64 * 1024
    assert wait_for(lambda: not daemon.children(), timeout=10)


def test_the_async_client_streams_both_ways(daemon: Daemon) -> None:
    async def go() -> tuple[str, JobResult]:
        text = ""
        async with AsyncClient(
            daemon.socket_path, daemon_user=str(daemon_uid())
        ) as client:
            async for item in client.stream(
                job(["cat"]), stdin=[b"one ", "twö\n".encode()]
            ):
                if isinstance(item, OutputEvent):
                    text += item.data
                else:
                    return text, item
        raise AssertionError("no result")

    text, result = asyncio.run(go())
    assert text == "one twö\n"
    assert result.streamed


def test_stdin_outside_a_streaming_run_is_a_bad_request(daemon: Daemon) -> None:
    reply = daemon.request({"id": 5, "op": "stdin", "data": "x"})
    assert reply["error"]["code"] == "bad_request"
    assert os.path.exists(daemon.socket_path)
