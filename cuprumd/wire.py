"""The protocol for ``cuprumctl``'s quick commands, with almost no imports.

``cuprumd.client`` reads replies into pydantic models; importing it costs
ten times what ``cuprumctl run -- true`` may take in all. This connection
speaks the same NDJSON with plain dicts: the socket and the trust check
come from ``cuprumd.discovery`` (nothing is sent before ``SO_PEERCRED``
says the daemon is trusted), a request is one line sent in one
``sendmsg`` with any descriptors attached as ``SCM_RIGHTS``, and an error
reply is raised as the ``ProtocolError`` subclass of its code.

It uses the C modules under ``json`` and ``socket`` directly: their Python
halves import ``re`` and ``enum``, which cost more than the whole command
may take. ``_json`` is the accelerator ``json`` itself calls, so lines are
encoded exactly as ``json.dumps`` writes them, and a UTF-8 line is read as
``json.loads`` reads it (the protocol is UTF-8: no BOM, no UTF-16).
"""

from __future__ import annotations

import _json
import os
import sys
from _socket import AF_UNIX, SCM_RIGHTS, SOCK_STREAM, SOL_SOCKET, socket

from cuprumd.discovery import (
    UntrustedDaemon,
    check_daemon,
    discover_socket,
    trusted_uids,
)
from cuprumd.errors import PROTOCOL_ERRORS, ClientError, ProtocolError

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "FDS_FEATURE",
    "Connection",
    "DaemonUnavailable",
    "decode_line",
    "encode_line",
]

#: The ``ping`` feature of a daemon that takes descriptors with a request.
FDS_FEATURE = "fds"
_RECV_SIZE = 1 << 16


class DaemonUnavailable(ClientError):
    """Nothing answers on the socket: not running, wrong path, no access."""


def _unencodable(value: object) -> object:
    msg = f"Object of type {type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


def _encoder(escape: Callable[[str], str]) -> Callable[[object], str]:
    sort_keys, skip_keys, allow_nan = False, False, True
    encode = _json.make_encoder(
        None, _unencodable, escape, None, ":", ",", sort_keys, skip_keys, allow_nan
    )
    return lambda doc: "".join(encode(doc, 0))


#: ``json.dumps(doc, separators=(",", ":"))``, without and with ``ensure_ascii``.
_dumps_utf8 = _encoder(_json.encode_basestring)
_dumps_ascii = _encoder(_json.encode_basestring_ascii)


class _Decoding:
    """The options ``_json.make_scanner`` reads: ``json.loads``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # duck-typed


def decode_line(line: bytes) -> object:
    """``json.loads`` of one UTF-8 line.

    Raises
    ------
    ValueError
        When the line is not one JSON value (or not UTF-8).
    """
    text = line.decode("utf-8", "surrogatepass").strip(" \t\r\n")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError("extra data after a JSON value")
    return value


def encode_line(doc: dict[str, object]) -> bytes:
    """One request line; lone surrogates (from undecodable arguments) are
    sent as JSON escapes, as ``cuprumd.protocol.encode_request`` does."""
    try:
        return (_dumps_utf8(doc) + "\n").encode()
    except UnicodeEncodeError:
        return (_dumps_ascii(doc) + "\n").encode("ascii")


def _error(body: object) -> ClientError | ProtocolError:
    if not isinstance(body, dict):
        return ClientError("error reply without an error")
    code, message = str(body.get("code")), str(body.get("message"))
    cls = PROTOCOL_ERRORS.get(code)
    return ProtocolError(f"{code}: {message}") if cls is None else cls(message)


class Connection:
    """One blocking connection; requests are answered in order."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        daemon_user: str | None = None,
    ) -> None:
        self.socket_path = discover_socket(socket_path)
        self._trusted = trusted_uids(daemon_user)
        self._sock: socket | None = None
        self._buffer = b""
        self._last_id = 0

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Hang up; a ``run`` still in progress is cancelled by the daemon."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self) -> socket:
        if self._sock is None:
            sock = socket(AF_UNIX, SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
                check_daemon(sock, self.socket_path, self._trusted)
            except OSError as exc:
                sock.close()
                reason = exc.strerror or type(exc).__name__
                msg = f"cannot connect to cuprumd at {self.socket_path}: {reason}"
                raise DaemonUnavailable(msg) from None
            except UntrustedDaemon:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def request(
        self, op: str, fds: dict[str, int] | None = None, **fields: object
    ) -> dict[str, object]:
        """Send one request and return its ``result``.

        ``fds`` maps stream names (``stdin``, ``stdout``, ``stderr``) to
        descriptors that travel with the request; they are listed in its
        ``fds`` field in the order they are attached.

        Raises
        ------
        ProtocolError
            The subclass for the reply's error code.
        ClientError
            When the connection fails or the reply is not understood.
        """
        sock = self._connect()
        self._last_id += 1
        doc: dict[str, object] = {"id": self._last_id, "op": op}
        if fds:
            doc["fds"] = list(fds)
        doc.update(fields)
        line = encode_line(doc)
        try:
            sent = 0
            if fds:
                rights = b"".join(
                    fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds.values()
                )
                sent = sock.sendmsg([line], [(SOL_SOCKET, SCM_RIGHTS, rights)])
            sock.sendall(line[sent:])
        except BrokenPipeError:
            pass  # the daemon may have answered (frame_too_large) and closed
        except OSError as exc:
            self.close()
            raise ClientError(f"sending to cuprumd failed: {exc}") from None
        return self._result(self._read_line())

    def _read_line(self) -> bytes:
        sock = self._sock
        assert sock is not None
        chunks = [self._buffer]
        chunk = self._buffer
        while b"\n" not in chunk:
            try:
                chunk = sock.recv(_RECV_SIZE)
            except OSError as exc:
                self.close()
                raise ClientError(f"reading from cuprumd failed: {exc}") from None
            if not chunk:
                self.close()
                self._buffer = b""
                return b"".join(chunks)
            chunks.append(chunk)
        line, _, self._buffer = b"".join(chunks).partition(b"\n")
        return line

    def _result(self, line: bytes) -> dict[str, object]:
        if not line:
            msg = "the daemon closed the connection before replying"
            raise ClientError(msg)
        try:
            reply = decode_line(line)
        except (ValueError, RecursionError):  # nested past any reply
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ClientError("the peer's reply is not a cuprumd reply")
        if not reply["ok"]:
            raise _error(reply.get("error"))
        if reply.get("id") != self._last_id:
            msg = f"reply id {reply.get('id')!r} does not match request id "
            raise ClientError(msg + str(self._last_id))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
