"""The stream-backend dispatcher (seed 000): parse, probe, resolve."""

from __future__ import annotations

import sys
import types

import pytest

import cuprumd
from cuprumd import backend
from cuprumd.backend import (
    StreamBackend,
    decide_stream_backend,
    get_stream_backend,
    parse_stream_backend,
    resolve_stream_backend,
)


class ProbeCounter:
    def __init__(self, result: bool) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.result


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> ProbeCounter:
    counter = ProbeCounter(result=True)
    monkeypatch.setattr(backend, "_probe_native", counter)
    return counter


def test_auto_returns_rust_when_available(probe: ProbeCounter) -> None:
    probe.result = True
    assert get_stream_backend() is StreamBackend.RUST


def test_auto_returns_python_when_unavailable(probe: ProbeCounter) -> None:
    probe.result = False
    assert get_stream_backend() is StreamBackend.PYTHON


def test_forced_rust_returns_rust_when_available(
    probe: ProbeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "rust")
    assert get_stream_backend() is StreamBackend.RUST


def test_forced_rust_raises_when_unavailable(
    probe: ProbeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe.result = False
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "rust")
    with pytest.raises(ImportError, match="CUPRUM_STREAM_BACKEND"):
        get_stream_backend()


def test_forced_python_returns_python_without_probing(
    probe: ProbeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "python")
    assert get_stream_backend() is StreamBackend.PYTHON
    probe.result = False
    assert get_stream_backend() is StreamBackend.PYTHON
    assert probe.calls == 0


def test_invalid_env_var_raises_value_error(
    probe: ProbeCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "turbo")
    with pytest.raises(ValueError, match="turbo") as info:
        get_stream_backend()
    for valid in ("'auto'", "'rust'", "'python'"):
        assert valid in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected", "available"),
    [
        ("AUTO", StreamBackend.RUST, True),
        ("Rust", StreamBackend.RUST, True),
        ("PYTHON", StreamBackend.PYTHON, True),
        ("  python\n", StreamBackend.PYTHON, True),
        ("", StreamBackend.PYTHON, False),
        ("   ", StreamBackend.RUST, True),
    ],
)
def test_env_var_case_and_whitespace_insensitive(
    probe: ProbeCounter,
    monkeypatch: pytest.MonkeyPatch,
    raw: str,
    expected: StreamBackend,
    available: bool,
) -> None:
    probe.result = available
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", raw)
    assert get_stream_backend() is expected


def test_availability_is_cached(probe: ProbeCounter) -> None:
    for _ in range(5):
        get_stream_backend()
    assert cuprumd.is_rust_available() is True
    assert probe.calls == 1


def test_cache_clear_allows_recheck(probe: ProbeCounter) -> None:
    assert get_stream_backend() is StreamBackend.RUST
    probe.result = False
    assert get_stream_backend() is StreamBackend.RUST  # still cached
    backend._check_rust_available.cache_clear()
    assert get_stream_backend() is StreamBackend.PYTHON
    assert probe.calls == 2


def test_stream_backend_enum_values() -> None:
    assert [m.value for m in StreamBackend] == ["auto", "rust", "python"]
    assert StreamBackend.AUTO == "auto"
    assert cuprumd.StreamBackend is StreamBackend


def test_parse_is_pure_and_maps_empty_to_auto() -> None:
    assert parse_stream_backend(None) is StreamBackend.AUTO
    assert parse_stream_backend("") is StreamBackend.AUTO
    assert parse_stream_backend(" RUST ") is StreamBackend.RUST


def test_resolve_uses_given_availability_without_probe(probe: ProbeCounter) -> None:
    assert (
        resolve_stream_backend(StreamBackend.AUTO, rust_available=False)
        is StreamBackend.PYTHON
    )
    assert (
        resolve_stream_backend(StreamBackend.AUTO, rust_available=True)
        is StreamBackend.RUST
    )
    assert probe.calls == 0


def test_missing_native_module_means_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, backend.NATIVE_MODULE, None)
    # A None entry in sys.modules makes import raise ModuleNotFoundError
    # naming the module, exactly as an unbuilt extension does.
    assert backend.is_rust_available() is False


def test_broken_native_module_is_reraised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_import(name: str) -> types.ModuleType:
        raise ImportError("undefined symbol: PyInit_bogus", name=name)

    monkeypatch.setattr(backend.importlib, "import_module", broken_import)
    with pytest.raises(ImportError, match="undefined symbol"):
        backend.is_rust_available()
    assert "failed to import" in caplog.text


def test_missing_dependency_of_native_module_is_reraised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing_dependency(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'helper'", name="helper")

    monkeypatch.setattr(backend.importlib, "import_module", missing_dependency)
    with pytest.raises(ModuleNotFoundError, match="helper"):
        backend.is_rust_available()


def test_decision_keeps_forced_rust_failure_as_data(probe: ProbeCounter) -> None:
    probe.result = False
    decision = decide_stream_backend(StreamBackend.RUST, "config:/x.toml")
    assert decision.resolved is None
    assert decision.error is not None
    assert "CUPRUM_STREAM_BACKEND" in decision.error
    assert decision.as_event() == {
        "requested": "rust",
        "resolved": None,
        "source": "config:/x.toml",
        "rust_available": False,
    }


def test_decision_for_python_does_not_probe(probe: ProbeCounter) -> None:
    decision = decide_stream_backend(StreamBackend.PYTHON, "env")
    assert decision.resolved is StreamBackend.PYTHON
    assert decision.rust_available is None
    assert probe.calls == 0
