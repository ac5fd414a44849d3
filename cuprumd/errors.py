"""The error hierarchy: one class per protocol error code, plus config errors.

Everything below the CLI raises these; the server turns a ``ProtocolError``
into an error reply carrying its ``code``, and the CLI turns a
``ConfigError`` into exit status 78, so neither needs a lookup table.
"""

from __future__ import annotations

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name):
#: clients import this module on their quick paths.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

EX_CONFIG = 78


class CuprumError(Exception):
    """Base of every error cuprumd raises on purpose."""


class ConfigError(CuprumError):
    """The settings cannot be used; the message names key, source and fix."""

    exit_status: ClassVar[int] = EX_CONFIG


class StartupError(CuprumError):
    """The daemon cannot start (socket in use, backend missing); exit 1."""

    exit_status: ClassVar[int] = 1


class ClientError(CuprumError):
    """The conversation failed on the client side (not an error reply)."""


class ProtocolError(CuprumError):
    """An error that reaches a client as ``{"code": ..., "message": ...}``."""

    code: ClassVar[str] = "internal"


class BadRequest(ProtocolError):
    """The request is not JSON, not an object, or has a bad or unknown field."""

    code = "bad_request"


class FrameTooLarge(ProtocolError):
    """A request line exceeded ``max_request_bytes``; the connection closes."""

    code = "frame_too_large"


class UnknownOp(ProtocolError):
    """The ``op`` names no operation of this protocol version."""

    code = "unknown_op"


class ProgramNotAllowed(ProtocolError):
    """A stage names a program outside the ``programs`` allowlist."""

    code = "program_not_allowed"


class Forbidden(ProtocolError):
    """The peer's uid and gid are both outside the allowed sets."""

    code = "forbidden"


class Busy(ProtocolError):
    """The job queue is full; the client may retry later."""

    code = "busy"


class NotFound(ProtocolError):
    """No job with that id is known (never existed, or already fetched)."""

    code = "not_found"


class WaitTimeout(ProtocolError):
    """``wait`` gave up before the job ended; the job keeps running."""

    code = "timeout"


class Internal(ProtocolError):
    """A fault inside the daemon; the request, not the daemon, failed."""

    code = "internal"


PROTOCOL_ERRORS: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        FrameTooLarge,
        UnknownOp,
        ProgramNotAllowed,
        Forbidden,
        Busy,
        NotFound,
        WaitTimeout,
        Internal,
    )
}
