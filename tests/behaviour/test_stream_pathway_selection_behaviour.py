"""Pathway selection end to end (seed 002, three scenarios)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when
from structlog.testing import capture_logs

from cuprumd import backend, pipeline
from cuprumd.backend import StreamBackend
from cuprumd.models import JobResult, JobSpec, JobState
from cuprumd.pipeline import RunOptions, execute, run_pipeline
from tests.helpers import SocketPlumbing

scenarios("stream_pathway_selection.feature")


@dataclass
class World:
    result: JobResult | None = None
    error: BaseException | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def world() -> World:
    backend._check_rust_available.cache_clear()
    return World()


def parse_pipeline(text: str) -> JobSpec:
    stages = []
    for part in text.split(" | "):
        program, _, rest = part.partition(" ")
        argv = [program]
        if program == "printf":
            argv.append(rest.encode().decode("unicode_escape"))
        elif rest:
            argv.extend(rest.split())
        stages.append({"argv": argv})
    return JobSpec.model_validate({"stages": stages})


@given("the Rust extension reports itself available")
def rust_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: True)


@given("the Rust extension is not available")
def rust_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: False)


@given(parsers.parse("the stream backend environment variable is set to {value}"))
def env_set(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", value)


@given("the inter-stage links are sockets instead of pipes")
def socket_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "open_plumbing", SocketPlumbing)


@when(parsers.parse('I run the pipeline "{text}"'))
def run_default(world: World, text: str) -> None:
    world.result = run_pipeline(parse_pipeline(text))


@when(parsers.parse('I run the pipeline "{text}" with the rust backend'))
def run_rust(world: World, text: str) -> None:
    with capture_logs() as logs:
        world.result = asyncio.run(
            execute(parse_pipeline(text), RunOptions(), StreamBackend.RUST)
        )
    world.logs = logs


@when(parsers.parse('I attempt to run the pipeline "{text}"'))
def attempt(world: World, text: str) -> None:
    try:
        world.result = run_pipeline(parse_pipeline(text))
    except ImportError as exc:
        world.error = exc


@then(parsers.parse('the job succeeds with output "{expected}"'))
def succeeds(world: World, expected: str) -> None:
    assert world.result is not None
    assert world.result.state is JobState.SUCCEEDED
    assert world.result.stdout == expected.encode().decode("unicode_escape")


@then("every transfer used the python pump")
def all_python(world: World) -> None:
    assert world.result is not None
    assert world.result.transfers
    assert {t.pump for t in world.result.transfers} == {"python"}
    assert world.result.stream_backend == "python"


@then("the transfer used the python pump with a fallback reason naming a socket")
def fell_back(world: World) -> None:
    assert world.result is not None
    (transfer,) = world.result.transfers
    assert transfer.pump == "python"
    assert "socket" in (transfer.fallback_reason or "")
    assert world.result.stream_backend == "rust"


@then("a pump.fallback event was logged")
def fallback_logged(world: World) -> None:
    assert [e["event"] for e in world.logs].count("pump.fallback") == 1


@then("an ImportError naming CUPRUM_STREAM_BACKEND is raised")
def import_error(world: World) -> None:
    assert isinstance(world.error, ImportError)
    assert "CUPRUM_STREAM_BACKEND" in str(world.error)
    assert world.result is None
