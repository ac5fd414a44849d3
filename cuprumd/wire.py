"""The protocol for ``cuprumctl``'s quick commands, with almost no imports.

``cuprumd.client`` reads replies into pydantic models; importing it costs
ten times what ``cuprumctl run -- true`` may take in all. This connection
speaks the same NDJSON with plain dicts: the socket and the trust check
come from ``cuprumd.discovery`` (nothing is sent before ``SO_PEERCRED``
says the daemon is trusted), a request is one line sent in one
``sendmsg`` with any descriptors attached as ``SCM_RIGHTS``, and an error
reply is raised as the ``ProtocolError`` subclass of its code.
"""

from __future__ import annotations

import json
import os
import socket

from cuprumd.discovery import (
    UntrustedDaemon,
    check_daemon,
    discover_socket,
    trusted_uids,
)
from cuprumd.errors import PROTOCOL_ERRORS, ClientError, ProtocolError

__all__ = ["FDS_FEATURE", "Connection", "DaemonUnavailable", "encode_line"]

#: The ``ping`` feature of a daemon that takes descriptors with a request.
FDS_FEATURE = "fds"
_RECV_SIZE = 1 << 16


class DaemonUnavailable(ClientError):
    """Nothing answers on the socket: not running, wrong path, no access."""


def encode_line(doc: dict[str, object]) -> bytes:
    """One request line; lone surrogates (from undecodable arguments) are
    sent as JSON escapes, as ``cuprumd.protocol.encode_request`` does."""
    try:
        return (
            json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
        ).encode()
    except UnicodeEncodeError:
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


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
        self._sock: socket.socket | None = None
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

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
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
            sent = socket.send_fds(sock, [line], list(fds.values())) if fds else 0
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
            reply = json.loads(line)
        except ValueError:
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
