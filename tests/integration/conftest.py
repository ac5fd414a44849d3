"""Fixtures for tests against a real daemon process.

A module may set ``DAEMON_SETTINGS`` (a dict of TOML keys) for the daemons
its ``daemon`` fixture shares; one daemon per backend serves the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cuprumd.backend import StreamBackend
from tests.daemon_harness import Daemon, DaemonPool


@pytest.fixture(scope="module")
def daemon_pool(request: pytest.FixtureRequest) -> Iterator[DaemonPool]:
    pool = DaemonPool(**getattr(request.module, "DAEMON_SETTINGS", {}))
    yield pool
    pool.close()


@pytest.fixture
def daemon(stream_backend: StreamBackend, daemon_pool: DaemonPool) -> Daemon:
    """The module's daemon running the pump under test."""
    return daemon_pool.get(stream_backend)


@pytest.fixture
def python_daemon(daemon_pool: DaemonPool) -> Daemon:
    """The module's daemon, for tests where no pump is involved."""
    return daemon_pool.get(StreamBackend.PYTHON)
