"""structlog set-up: JSON lines on stderr for journald, or a console renderer.

Events are named ``noun.verb`` (``job.finished``) and carry fields, never
free text, so they can be filtered by key. Nothing here ever logs stdin,
output or environment values: callers pass only metadata.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, cast

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: Bumped by every ``configure_logging``: a module's cached logger binds
#: again, so a reload's new level and format reach loggers made before it.
_generation = 0


def configure_logging(
    log_format: Literal["auto", "json", "console"] = "auto",
    log_level: Literal["debug", "info", "warning", "error"] = "info",
    stream: TextIO | None = None,
) -> None:
    """Route structlog events (and stdlib warnings) to ``stream``: for a
    person at a terminal readable lines (``auto``), for journald and log
    collectors one JSON object per line."""
    global _generation  # noqa: PLW0603 - one process-wide configuration
    _generation += 1
    out = sys.stderr if stream is None else stream
    level = _LEVELS[log_level]
    renderer: structlog.types.Processor
    if log_format == "console" or (log_format == "auto" and out.isatty()):
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # stdlib records (the backend probe's, a library's) become the same
    # one-line events, a traceback included as a field.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _ModuleLogger:
    """A module's logger, bound once per configuration.

    structlog's lazy proxy binds a new logger on every event unless it
    caches the first one for good, which would keep a reloaded daemon on
    its old level and format; binding anew cost every job two binds, even
    with both of its events filtered out.
    """

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._generation = -1

    def __getattr__(self, attr: str) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger(logger_name=self._name).bind()
            self._generation = _generation
        return getattr(self._bound, attr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a logger bound to the module that logs."""
    return cast("structlog.typing.FilteringBoundLogger", _ModuleLogger(name))
