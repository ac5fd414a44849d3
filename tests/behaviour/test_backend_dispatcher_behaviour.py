"""Behaviour of the backend dispatcher (seed 000, three scenarios)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from cuprumd import backend
from cuprumd.backend import StreamBackend, get_stream_backend

scenarios("backend_dispatcher.feature")


@dataclass
class World:
    available: bool = True
    probes: int = 0
    result: StreamBackend | None = None
    error: BaseException | None = None
    events: list[str] = field(default_factory=list)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    state = World()

    def probe() -> bool:
        state.probes += 1
        return state.available

    monkeypatch.setattr(backend, "_probe_native", probe)
    backend._check_rust_available.cache_clear()
    return state


@given("the Rust extension is not available")
def rust_unavailable(world: World) -> None:
    world.available = False


@given("the Rust extension is available")
def rust_available(world: World) -> None:
    world.available = True


@given("the stream backend environment variable is unset")
def env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUPRUM_STREAM_BACKEND", raising=False)


@given(parsers.parse("the stream backend is forced to {value}"))
def env_forced(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", value)


@when("I resolve the stream backend")
def resolve(world: World) -> None:
    world.result = get_stream_backend()


@when("I attempt to resolve the stream backend")
def attempt(world: World) -> None:
    try:
        world.result = get_stream_backend()
    except ImportError as exc:
        world.error = exc


@then(parsers.parse("the resolved backend is {value}"))
def resolved_is(world: World, value: str) -> None:
    assert world.result is StreamBackend(value)


@then("an ImportError naming CUPRUM_STREAM_BACKEND is raised")
def import_error(world: World) -> None:
    assert isinstance(world.error, ImportError)
    assert "CUPRUM_STREAM_BACKEND" in str(world.error)
    assert world.result is None


@then("the availability of the extension was never probed")
def never_probed(world: World) -> None:
    assert world.probes == 0
