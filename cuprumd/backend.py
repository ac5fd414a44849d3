"""Stream-backend selection: which pump moves bytes between pipeline stages.

The decision is split into pure steps (``parse_stream_backend`` and
``resolve_stream_backend``) and one side-effecting probe
(``_check_rust_available``), so the rules can be tested without touching the
import system, and the probe can be cached for the life of the process.
"""

from __future__ import annotations

import enum
import functools
import importlib
import logging
import os
from dataclasses import dataclass

__all__ = [
    "BACKEND_ENV_VAR",
    "NATIVE_MODULE",
    "BackendDecision",
    "StreamBackend",
    "decide_stream_backend",
    "get_stream_backend",
    "is_rust_available",
    "parse_stream_backend",
    "resolve_stream_backend",
]

BACKEND_ENV_VAR = "CUPRUM_STREAM_BACKEND"
NATIVE_MODULE = "cuprumd._native"

_log = logging.getLogger(__name__)


class StreamBackend(enum.StrEnum):
    """The pump a pipeline uses; ``AUTO`` defers to extension availability."""

    AUTO = "auto"
    RUST = "rust"
    PYTHON = "python"


def _valid_values() -> str:
    return ", ".join(repr(member.value) for member in StreamBackend)


def parse_stream_backend(raw: str | None) -> StreamBackend:
    """Turn a user-supplied value into a ``StreamBackend``.

    Values come from environment variables and config files, where stray
    whitespace and capitals are common and harmless, so both are forgiven;
    an empty value means the user expressed no preference.

    Raises
    ------
    ValueError
        If the value names no backend; the message lists the valid ones.
    """
    value = (raw or "").strip().lower()
    if not value:
        return StreamBackend.AUTO
    try:
        return StreamBackend(value)
    except ValueError:
        msg = f"unknown stream backend {raw!r}: expected one of {_valid_values()}"
        raise ValueError(msg) from None


def _probe_native() -> bool:
    """Import the extension; absence is an answer, a broken build is not.

    A ``ModuleNotFoundError`` for exactly the native module means it was not
    built. Any other failure (a missing symbol, a wrong ABI, an error raised
    while the module initialises) would otherwise masquerade as "not
    installed" and silently cost the user the fast path, so it is logged and
    re-raised.

    An imported module is available. Its ``is_available()`` only says
    whether ``splice(2)`` works here, which the native pump does not need
    (it copies through a buffer when splice refuses), so a ``False`` is
    logged, not turned into "unavailable".
    """
    try:
        native = importlib.import_module(NATIVE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == NATIVE_MODULE:
            return False
        _log.exception("native stream extension failed to import")
        raise
    except ImportError:
        _log.exception("native stream extension failed to import")
        raise
    if not native.is_available():
        _log.warning(
            "splice(2) does not work here; the native pump will copy through "
            "a buffer where splice refuses"
        )
    return True


@functools.lru_cache(maxsize=1)
def _check_rust_available() -> bool:
    """Return whether the Rust extension is available, probing at most once."""
    return _probe_native()


def is_rust_available() -> bool:
    """Report whether the Rust pump can be used in this process."""
    return _check_rust_available()


def resolve_stream_backend(
    requested: StreamBackend,
    *,
    rust_available: bool | None = None,
) -> StreamBackend:
    """Map a requested backend onto the one that will actually run.

    ``rust_available`` lets callers that already probed pass the answer in;
    when omitted the cached probe is consulted, and never for ``python``.

    Raises
    ------
    ImportError
        If ``rust`` is forced but the extension is unavailable: a user who
        pinned the fast path must hear that it is missing, never get a silent
        fallback.
    """
    if requested is StreamBackend.PYTHON:
        return StreamBackend.PYTHON
    available = _check_rust_available() if rust_available is None else rust_available
    if available:
        return StreamBackend.RUST
    if requested is StreamBackend.RUST:
        msg = (
            f"{BACKEND_ENV_VAR}=rust (stream_backend = 'rust') requires the "
            f"native extension {NATIVE_MODULE}, which is not installed; build "
            "it with maturin or choose 'auto' or 'python'"
        )
        raise ImportError(msg, name=NATIVE_MODULE)
    return StreamBackend.PYTHON


def get_stream_backend() -> StreamBackend:
    """Resolve the backend requested through ``CUPRUM_STREAM_BACKEND``.

    This is the library entry point: the daemon resolves from its settings
    instead, which include this variable at the same precedence.
    """
    return resolve_stream_backend(parse_stream_backend(os.environ.get(BACKEND_ENV_VAR)))


@dataclass(frozen=True)
class BackendDecision:
    """The daemon's one backend decision, with what it was made from.

    ``rust_available`` is ``None`` when ``python`` was pinned: the extension
    is then never probed, so nothing is known about it.
    """

    requested: StreamBackend
    source: str
    rust_available: bool | None
    resolved: StreamBackend | None
    error: str | None = None

    def as_event(self) -> dict[str, object]:
        """Fields of the ``stream_backend.resolved`` log event."""
        return {
            "requested": str(self.requested),
            "resolved": None if self.resolved is None else str(self.resolved),
            "source": self.source,
            "rust_available": self.rust_available,
        }


def decide_stream_backend(requested: StreamBackend, source: str) -> BackendDecision:
    """Resolve once for the daemon, keeping a forced-rust failure as data.

    The daemon must report the failure (and exit before binding) rather than
    crash with a traceback, so the ``ImportError`` becomes ``error``.
    """
    if requested is StreamBackend.PYTHON:
        return BackendDecision(requested, source, None, StreamBackend.PYTHON)
    available = _check_rust_available()
    try:
        resolved = resolve_stream_backend(requested, rust_available=available)
    except ImportError as exc:
        return BackendDecision(requested, source, available, None, str(exc))
    return BackendDecision(requested, source, available, resolved)
