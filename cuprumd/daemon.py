"""Daemon start-up: logging, the one backend decision, then the server."""

from __future__ import annotations

import os

from cuprumd import __version__
from cuprumd.backend import decide_stream_backend
from cuprumd.logging import configure_logging, get_logger
from cuprumd.settings import LoadedSettings

__all__ = ["run_daemon"]


def run_daemon(loaded: LoadedSettings) -> int:
    """Start the daemon; return the process exit status."""
    settings = loaded.settings
    configure_logging(settings.log_format, settings.log_level)
    log = get_logger("cuprumd.daemon")
    log.info("daemon.starting", version=__version__, pid=os.getpid())
    decision = decide_stream_backend(
        settings.stream_backend, loaded.sources["stream_backend"]
    )
    if decision.resolved is None:
        log.error(
            "stream_backend.unavailable", **decision.as_event(), error=decision.error
        )
        return 1
    log.info("stream_backend.resolved", **decision.as_event())
    return 0
