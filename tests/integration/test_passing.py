"""Descriptors passed with a request become the job's own streams: read and
written by the stages directly, any size, never captured; and on every path
that does not run the job, the daemon closes them."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.client import AsyncClient
from cuprumd.models import JobState
from tests.daemon_harness import Daemon, DaemonPool, daemon_uid, job, wait_for

SIZE = 24 << 20


@pytest.fixture(scope="module")
def pool() -> Iterator[DaemonPool]:
    pool = DaemonPool(
        programs=["cat", "wc", "head", "sleep", "true", "printf"],
        max_concurrent_jobs=2,
    )
    yield pool
    pool.close()


@pytest.fixture
def daemon(pool: DaemonPool, stream_backend: StreamBackend) -> Daemon:
    return pool.get(stream_backend)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cu-pass-") as name:
        path = Path(name)
        path.chmod(0o777)  # a daemon running as another user writes nothing here
        yield path


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_passed_stdin_and_stdout_carry_any_size(daemon: Daemon, workdir: Path) -> None:
    source, sink = workdir / "in", workdir / "out"
    source.write_bytes(b"x" * SIZE)
    with (
        source.open("rb") as stdin,
        sink.open("wb") as stdout,
        daemon.client() as client,
    ):
        result = client.run(job(["cat"], ["wc", "-c"]), stdin=stdin, stdout=stdout)
    assert result.state is JobState.SUCCEEDED
    assert sink.read_text().strip() == str(SIZE)
    assert result.passed == ["stdin", "stdout"]
    assert result.stdout == ""
    assert result.transfers[0].bytes == SIZE  # the pump between the stages


def test_passed_stderr_is_every_stages_stderr(daemon: Daemon, workdir: Path) -> None:
    errors = workdir / "err"
    with errors.open("wb") as stderr, daemon.client() as client:
        result = client.run(
            job(["cat", "/nonexistent-1"], ["cat", "/nonexistent-2"]), stderr=stderr
        )
    assert result.state is JobState.FAILED
    text = errors.read_text()
    assert "nonexistent-1" in text
    assert "nonexistent-2" in text
    assert all(stage.stderr == "" for stage in result.stages)
    assert result.passed == ["stderr"]


def test_a_pipe_as_stdout_streams_while_the_job_runs(daemon: Daemon) -> None:
    read_end, write_end = os.pipe()
    with daemon.client() as client, os.fdopen(read_end, "rb") as reader:
        job_id = client.submit(job(["printf", "first\\n"], ["cat"]), stdout=write_end)
        os.close(write_end)  # the job holds the only writer now
        assert reader.read() == b"first\n"  # EOF once the job's stage exits
        assert client.wait(job_id).passed == ["stdout"]


def test_the_async_client_passes_descriptors_too(daemon: Daemon, workdir: Path) -> None:
    sink = workdir / "out"

    async def go() -> str:
        with sink.open("wb") as stdout:
            async with AsyncClient(
                daemon.socket_path, daemon_user=str(daemon_uid())
            ) as client:
                result = await client.run(
                    job(["printf", "hello"]), stdout=stdout.fileno()
                )
                return str(result.state)

    assert asyncio.run(go()) == "succeeded"
    assert sink.read_bytes() == b"hello"


def send_with_fds(daemon: Daemon, line: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket_path))
        socket.send_fds(sock, [line], fds)
        return sock.makefile("rb").readline()


RUN_TRUE = b'"job":{"stages":[{"argv":["true"]}]}}\n'


@pytest.mark.parametrize(
    ("line", "count"),
    [
        (b'{"id":1,"op":"run","fds":["stdout"],' + RUN_TRUE, 2),
        (b'{"id":2,"op":"run","fds":["stdin","stdout"],' + RUN_TRUE, 1),
        (b'{"id":3,"op":"ping"}\n', 1),
        (b'{"id":4,"op":"run","fds":["stdin"],"job":{"stdin":"x",' + RUN_TRUE[7:], 1),
        (b'{"id":5,"op":"run","fds":["stdout","stdout"],' + RUN_TRUE, 2),
        (b'{"id":6,"op":"run","fds":["stdout"],' + RUN_TRUE.replace(b"true", b"rm"), 1),
        (b'{"id":7,"op":"run","fds":["stdout"],' + RUN_TRUE[:-2] + b"\n", 1),
    ],
    ids=["too-many", "too-few", "none-asked", "stdin-twice", "same-twice",
         "not-allowed", "not-json"],
)  # fmt: skip
def test_descriptors_of_a_refused_request_are_closed(
    daemon: Daemon, line: bytes, count: int
) -> None:
    pid = daemon.proc.pid
    daemon.request({"op": "ping"})
    before = open_fds(pid)
    read_end, write_end = os.pipe()
    try:
        reply = send_with_fds(daemon, line, [write_end] * count)
        assert b'"ok":false' in reply
        assert b'"bad_request"' in reply or b'"program_not_allowed"' in reply
        os.close(write_end)
        write_end = -1
        # Every copy the daemon got is closed: the pipe's reader sees EOF.
        os.set_blocking(read_end, False)
        assert wait_for(lambda: _eof(read_end), timeout=5)
        assert wait_for(lambda: open_fds(pid) <= before, timeout=5)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _eof(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False


def test_a_queued_job_cancelled_closes_what_it_was_passed(daemon: Daemon) -> None:
    read_end, write_end = os.pipe()
    with daemon.client() as client:
        blockers = [
            client.submit(job(["sleep", "30"]))
            for _ in range(client.stats().max_concurrent_jobs)
        ]
        queued = client.submit(job(["true"]), stdout=write_end)
        os.close(write_end)
        assert client.status(queued).state is JobState.QUEUED
        client.cancel(queued)
        os.set_blocking(read_end, False)
        assert wait_for(lambda: _eof(read_end), timeout=5)
        assert client.wait(queued).passed == ["stdout"]
        for job_id in blockers:
            client.cancel(job_id)
    os.close(read_end)


def test_ping_says_descriptors_may_be_passed(daemon: Daemon) -> None:
    with daemon.client() as client:
        assert "fds" in client.ping().features


def test_a_flood_of_descriptors_is_refused_and_closed(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    daemon.request({"op": "ping"})
    before = open_fds(pid)
    read_end, write_end = os.pipe()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket_path))
        for _ in range(4):  # no line ends: the descriptors pile up
            try:
                socket.send_fds(sock, [b'{"op":'], [write_end] * 3)
            except BrokenPipeError:
                break  # refused and closed already (after the third)
        reply = sock.makefile("rb").readline()
    os.close(write_end)
    assert b'"bad_request"' in reply
    assert b"too many descriptors" in reply
    os.set_blocking(read_end, False)
    assert wait_for(lambda: _eof(read_end), timeout=5)
    os.close(read_end)
    assert wait_for(lambda: open_fds(pid) <= before, timeout=5)
    assert "Traceback" not in daemon.log()
