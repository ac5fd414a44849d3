"""The server in-process, with a fake runner: the paths a real daemon
cannot honestly be driven into (a handler fault), and the async client."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cuprumd.client import AsyncClient, ClientError, DaemonUnavailable
from cuprumd.containment import Guard
from cuprumd.engine.launch import launch_python
from cuprumd.engine.sandbox import build_policy
from cuprumd.errors import Busy, Internal, NotFound, ProgramNotAllowed, WaitTimeout
from cuprumd.jobs import Job, JobRegistry, Limits, unstarted_result
from cuprumd.listener import open_listener
from cuprumd.models import JobResult, JobState
from cuprumd.programs import build_allowlist
from cuprumd.server import Server
from cuprumd.settings import Settings

PATHS = {"cat": "/bin/cat", "sleep": "/bin/sleep"}


async def fake_run(job: Job) -> JobResult:
    if job.spec.argv0s == ["sleep"]:
        await job.cancel.wait()
        return unstarted_result(job, JobState.CANCELLED, "", "python")
    return unstarted_result(job, JobState.SUCCEEDED, "", "python").model_copy(
        update={"stdout": "".join(s.argv[-1] for s in job.spec.stages), "error": None}
    )


def serve(body: Callable[[Server, Path], Awaitable[Any]], **settings: Any) -> Any:
    async def go() -> Any:
        path = Path(tempfile.mkdtemp(prefix="cus-", dir="/tmp")) / "s.sock"
        config = Settings(socket_path=path, **settings)
        registry = JobRegistry(
            Limits.from_settings(config),
            fake_run,
            backend="python",
            daemon_uid=0,
        )
        allowlist = build_allowlist(["cat", "sleep"], PATHS.get, lambda _p: False)
        guard = Guard(build_policy("off", []), None, None, "python", launch_python, ())
        server = Server(config, "python", allowlist, registry, guard)
        listener = open_listener(path, 0o600, None)
        await server.start(listener)
        try:
            return await body(server, path)
        finally:
            server.stop_accepting()
            await registry.shutdown(0, 0, asyncio.Event())
            await server.close_connections(1.0)
            listener.close()

    return asyncio.run(go())


def test_a_handler_fault_becomes_an_internal_reply_and_nothing_else() -> None:
    async def body(server: Server, path: Path) -> None:
        def broken() -> None:
            raise RuntimeError("bug")

        server._ping = broken  # type: ignore[assignment,method-assign]
        async with AsyncClient(path) as client:
            with pytest.raises(Internal, match="internal error"):
                await client.ping()
            assert (await client.stats()).errors == {"internal": 1}
            listed = await client.list_jobs()  # same connection, still served
            assert listed == []

    serve(body)


def test_async_client_typed_results_and_errors() -> None:
    async def body(_server: Server, path: Path) -> None:
        async with AsyncClient(path) as client:
            pong = await client.ping()
            assert pong.protocol == 1
            assert pong.stream_backend == "python"
            result = await client.run({"stages": [{"argv": ["cat", "x"]}]})
            assert result.state is JobState.SUCCEEDED
            assert result.stdout == "x"
            job_id = await client.submit({"stages": [{"argv": ["sleep", "9"]}]})
            assert (await client.status(job_id)).state is JobState.RUNNING
            assert [j.job_id for j in await client.list_jobs()] == [job_id]
            with pytest.raises(WaitTimeout):
                await client.wait(job_id, timeout=0.01)
            with pytest.raises(Busy):
                await client.submit({"stages": [{"argv": ["cat", "y"]}]})
            assert (await client.cancel(job_id)).state is JobState.CANCELLED
            assert (await client.wait(job_id)).state is JobState.CANCELLED
            with pytest.raises(NotFound):
                await client.status(job_id)
            with pytest.raises(ProgramNotAllowed):
                await client.run({"stages": [{"argv": ["rm", "-rf", "/"]}]})
            stats = await client.stats()
            assert stats.jobs["cancelled"] == 1
            assert stats.errors["busy"] == 1

    serve(body, max_concurrent_jobs=1, max_queued_jobs=0)


def test_concurrent_requests_on_one_async_client_take_turns() -> None:
    async def body(_server: Server, path: Path) -> None:
        async with AsyncClient(path) as client:
            results = await asyncio.gather(
                *(client.run({"stages": [{"argv": ["cat", str(n)]}]}) for n in range(8))
            )
            assert [r.stdout for r in results] == [str(n) for n in range(8)]

    serve(body)


def test_async_client_reports_a_missing_daemon() -> None:
    async def go() -> None:
        async with AsyncClient("/nonexistent/cuprumd.sock") as client:
            with pytest.raises(DaemonUnavailable, match="/nonexistent"):
                await client.ping()

    asyncio.run(go())
    assert issubclass(DaemonUnavailable, ClientError)
