"""``cuprumd.wire`` codes lines with ``_json`` directly; it must agree with
``json`` (and so with the daemon) on every value the protocol carries."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuprumd import wire
from cuprumd.client import Client
from cuprumd.errors import ClientError
from cuprumd.wire import decode_line, encode_line

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()  # lone surrogates included
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), VALUES, max_size=5))
def test_lines_are_what_json_writes(doc: dict[str, Any]) -> None:
    line = encode_line(doc)
    assert line.endswith(b"\n")
    try:
        expected = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        assert line == (expected + "\n").encode()
    except UnicodeEncodeError:
        assert line == (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    assert json.loads(line) == doc


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_lines_read_as_json_reads_them(value: Any) -> None:
    text = json.dumps(value)
    assert decode_line(text.encode()) == json.loads(text)
    assert decode_line(f" {text} \r\n".encode()) == json.loads(text)
    raw = json.dumps(value, ensure_ascii=False)
    try:
        line = raw.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate travels escaped only
    assert decode_line(line) == json.loads(line)


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b'{"a": 1} x', b'{"a": 1}{}', b"{", b'"\xff"', b"[1,]", b"nul"],
)
def test_what_is_not_one_json_value_is_a_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(line)
    with pytest.raises(ValueError):
        decode_line(line)


def test_unencodable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_line({"x": object()})


def test_the_quick_path_imports_neither_json_nor_enum() -> None:
    """What keeps ``cuprumctl run`` within twice the interpreter's start."""
    probe = (
        "import sys; import cuprumd.ctl; "
        "print(sorted({'json', 're', 'enum', 'pathlib', 'socket', 'signal', "
        "'pydantic', 'asyncio'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "reply",
    [b"[" * 100_000 + b"\n", b"\xef\xbb\xbf{}\n", b"not json\n", b'{"id": 1}\n'],
    ids=["nested", "bom", "text", "no-ok"],
)
def test_a_peer_that_is_not_cuprumd_is_named_as_such(
    tmp_path: Path, reply: bytes
) -> None:
    """Both clients say "not a cuprumd reply", whatever the peer sends:
    no traceback, not even for nesting deeper than the interpreter's."""
    path = tmp_path / "peer.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        for _ in range(2):
            conn, _addr = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    peer = threading.Thread(target=answer, daemon=True)
    peer.start()
    try:
        with (
            wire.Connection(path) as conn,
            pytest.raises(ClientError, match="not a cuprumd reply"),
        ):
            conn.request("ping")
        with (
            Client(path, timeout=5) as client,
            pytest.raises(ClientError, match="not a cuprumd reply"),
        ):
            client.ping()
    finally:
        peer.join(5)
        server.close()
