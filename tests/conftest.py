"""Shared fixtures: backend cache hygiene and the two-pump ``stream_backend``.

With ``CUPRUM_REQUIRE_RUST=1`` (set by CI) a missing native extension fails
the run instead of skipping the Rust half of the suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cuprumd import backend
from cuprumd.backend import StreamBackend

REQUIRE_RUST = os.environ.get("CUPRUM_REQUIRE_RUST", "") == "1"


def _native_importable() -> bool:
    try:
        import cuprumd._native  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


NATIVE = _native_importable()


def require_native() -> None:
    """Skip (or, in CI, fail) a test that needs the built extension."""
    if NATIVE:
        return
    if REQUIRE_RUST:
        pytest.fail("cuprumd._native is not built but CUPRUM_REQUIRE_RUST=1")
    pytest.skip("cuprumd._native is not built")


@pytest.fixture(autouse=True)
def _clear_backend_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    monkeypatch.delenv("CUPRUM_CONFIG", raising=False)
    backend._check_rust_available.cache_clear()
    yield
    backend._check_rust_available.cache_clear()


@pytest.fixture
def native() -> object:
    """The native module, or a skip/failure when it is not built."""
    require_native()
    import cuprumd._native as mod

    return mod


@pytest.fixture(params=[StreamBackend.PYTHON, StreamBackend.RUST], ids=str)
def stream_backend(request: pytest.FixtureRequest) -> StreamBackend:
    """Run a test once per pump; both must behave identically."""
    value: StreamBackend = request.param
    if value is StreamBackend.RUST:
        require_native()
    return value
