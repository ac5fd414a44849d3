"""docs/protocol.md stays true: every example request is replayed against a
real daemon, in order, on one connection, and the reply must have the
documented shape (same keys, ``ok``, error code and job states; volatile
values such as pids, times and job ids are ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from cuprumd.errors import PROTOCOL_ERRORS
from tests.daemon_harness import REPO, Daemon, short_tmpdir, start_daemon

DOC = REPO / "docs" / "protocol.md"
#: The settings docs/protocol.md says its examples were taken with.
DOC_SETTINGS = {
    "stream_backend": "python",
    "max_concurrent_jobs": 1,
    "max_queued_jobs": 0,
}
OPS = {"ping", "run", "submit", "status", "wait", "cancel", "list", "stats", "stdin"}


#: The fence of the examples taken with a ``state_dir`` (a second daemon).
DURABLE_FENCE = "```text durable"


def exchanges(*, durable: bool = False) -> list[tuple[str, list[str]]]:
    """Each example request and its replies: none for a ``stdin`` chunk,
    one for most, events then a result for a stream (a reply belongs to the
    latest request with its ``id`` that is not a ``stdin`` chunk). Only the
    ``durable`` blocks, or only the others."""
    found: list[tuple[str, list[str]]] = []
    fence = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            fence = line if not fence else ""
            continue
        if (fence == DURABLE_FENCE) != durable:
            continue
        if line.startswith("> "):
            found.append((line[2:], []))
        elif line.startswith("< "):
            reply_id = json.loads(line[2:]).get("id")
            owner = next(
                (
                    replies
                    for request, replies in reversed(found)
                    if '"op":"stdin"' not in request
                    and _request_id(request) == reply_id
                ),
                found[-1][1],  # an id the daemon could not read: the last one
            )
            owner.append(line[2:])
    for request, replies in found:
        assert replies or '"op":"stdin"' in request, f"no reply: {request}"
    return found


def _request_id(request: str) -> Any:
    try:
        return json.loads(request).get("id")
    except (json.JSONDecodeError, AttributeError):
        return None


@contextlib.contextmanager
def passed_streams(request: str, expected: dict[str, Any]) -> Iterator[list[int]]:
    """Descriptors for a request that names ``fds``: as many as named, or
    as many as the documented error says came."""
    count = len(json.loads(request).get("fds", [])) if '"fds"' in request else 0
    message = (expected.get("error") or {}).get("message", "")
    if match := re.match(r"(\d+) descriptors came", message):
        count = int(match.group(1))
    fds = [os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(count)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def shape(value: Any, key: str = "") -> Any:
    """Structure plus the values that are not volatile."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if key in ("ok", "code", "state", "id", "pump", "stream_backend", "protocol"):
        return value
    return "*"


@pytest.fixture(scope="module")
def doc_daemon() -> Iterator[Daemon]:
    daemon = start_daemon(DOC_SETTINGS)
    yield daemon
    daemon.terminate()
    daemon.close()


def test_every_op_has_an_example() -> None:
    documented = set()
    for request, _replies in exchanges() + exchanges(durable=True):
        match = re.search(r'"op":"(\w+)"', request)
        if match:
            documented.add(match.group(1))
    assert documented >= OPS


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text()
    for code in PROTOCOL_ERRORS:
        assert f"`{code}`" in text


def test_examples_replay_against_a_real_daemon(doc_daemon: Daemon) -> None:
    replay(doc_daemon, exchanges())


def test_durable_examples_replay_against_a_daemon_with_a_state_dir() -> None:
    workdir = short_tmpdir()
    daemon = start_daemon(
        {**DOC_SETTINGS, "max_concurrent_jobs": 4, "state_dir": str(workdir / "s")},
        workdir=workdir,
    )
    try:
        replay(daemon, exchanges(durable=True))
    finally:
        daemon.terminate()
        daemon.close()


def replay(daemon: Daemon, examples: list[tuple[str, list[str]]]) -> None:
    ids: dict[str, str] = {}  # job id in the doc -> job id in this run
    with daemon.connect() as conn:
        streaming: list[str] = []  # the replies a stdin_stream run awaits
        for documented_request, documented in examples:
            request = documented_request
            for doc_id, live_id in ids.items():
                request = request.replace(doc_id, live_id)
            if '"stdin_stream":true' in request:
                conn.send_line(request.encode())
                streaming = documented
                continue
            if '"op":"stdin"' in request and not documented:
                conn.send_line(request.encode())
                if '"eof":true' in request:
                    for want in streaming:
                        assert shape(conn.read()) == shape(json.loads(want)), request
                continue
            expected = json.loads(documented[0])
            with passed_streams(request, expected) as fds:
                reply = conn.request_line(request.encode(), fds)
            replies = [reply] + [conn.read() for _ in documented[1:]]
            for got, want in zip(replies, documented, strict=True):
                assert shape(got) == shape(json.loads(want)), request
            expected, reply = json.loads(documented[-1]), replies[-1]
            result = expected.get("result") or {}
            if '"op":"submit"' in request and "job_id" in result:
                ids[result["job_id"]] = reply["result"]["job_id"]
