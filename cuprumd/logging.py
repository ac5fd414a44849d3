"""structlog set-up: JSON lines on stderr for journald, or a console renderer.

Events are named ``noun.verb`` (``job.finished``) and carry fields, never
free text, so they can be filtered by key. Nothing here ever logs stdin,
output or environment values: callers pass only metadata.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    log_format: Literal["auto", "json", "console"] = "auto",
    log_level: Literal["debug", "info", "warning", "error"] = "info",
    stream: TextIO | None = None,
) -> None:
    """Route structlog events (and stdlib warnings) to ``stream``: for a
    person at a terminal readable lines (``auto``), for journald and log
    collectors one JSON object per line."""
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


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a logger bound to the module that logs."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(
        logger_name=name
    )
    return logger
