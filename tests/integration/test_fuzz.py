"""Hypothesis against one real daemon: whatever a client sends, the daemon
answers with one well-formed line (or closes after ``frame_too_large``),
echoes the id it could read, never faults, and leaks nothing.

The examples are derandomized so that a failure in CI reproduces locally;
the jobs are limited to harmless programs with short timeouts.
"""

from __future__ import annotations

import contextlib
import copy
import json
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuprumd.errors import PROTOCOL_ERRORS
from tests.daemon_harness import Daemon, RawConnection, start_daemon, wait_for
from tests.helpers import fd_count

MAX_REQUEST = 65536
DAEMON_SETTINGS = {
    "max_request_bytes": MAX_REQUEST,
    "max_stages": 4,
    "max_output_bytes": 65536,
    "default_timeout": 2.0,
    "max_timeout_seconds": 5.0,
    "max_concurrent_jobs": 8,
    "max_queued_jobs": 16,
    "result_retention_seconds": 30.0,
}
OPS = ("ping", "run", "submit", "status", "wait", "cancel", "list", "stats")
#: Programs and arguments that end at once, whatever stdin they are given.
SAFE_ARGVS = (
    ("true",),
    ("cat",),
    ("echo", "hi"),
    ("echo", "-n", "é\u2603"),
    ("head", "-c", "5"),
    ("head", "-n", "1"),
)
#: Parses deeper than this may or may not be refused ("deeper than the
#: parser's limit"); either way the reply must be well formed.
DEPTH_MARGIN = 900
#: Depths around the parser's limit, where parsing succeeds but encoding
#: the same value again might not.
LIMIT_DEPTHS = st.integers(960, 1010)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- observing the daemon ----------------------------------------------------


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise KeyError("Threads")


# -- building requests ----------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text put in verbatim: what ``json.dumps`` would never write."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object given as key/value pairs, so a key can repeat."""

    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class KnownJob:
    """The id of a job the daemon gave us earlier, picked when sent."""

    index: int


def nested(depth: int, kind: str = "[") -> Raw:
    if kind == "[":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "0" + "}" * depth)


WEIRD = st.one_of(
    st.sampled_from(
        [
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            Raw("1e400"),
            Raw("-1e400"),
            Raw("1e-400"),
            Raw("-0"),
            Raw("-0.0"),
            Raw("1e18"),
            Raw("1E+2"),
            Raw("9" * 5000),  # beyond the interpreter's int digits limit
            Raw("9" * 4000),
            Raw('"\\ud800"'),
            Raw('"\\udfff\\ud800x"'),
            Raw('"a\\u0000b"'),
            Raw('"\\u0000"'),
            Raw('"\\u2028\\ufeff\\uffff"'),
            Raw('"\\x"'),
            Raw("01"),
            Raw("[1,]"),
            Raw("{,}"),
            Raw("tru"),
            Raw(""),
        ]
    ),
    st.builds(nested, st.integers(0, 50) | LIMIT_DEPTHS, st.sampled_from("[{")),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e300, max_value=1e308),
    st.floats(min_value=-1e300, max_value=-1e-300),
)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.text(
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
        min_size=1,
        max_size=3,
    ),
)
KEYS = st.sampled_from(["op", "id", "job", "job_id", "timeout", "stages", "argv"])
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS | st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
ANY_VALUE = st.one_of(JSON_VALUES, WEIRD)


def dump(value: Any, ascii_only: bool) -> str:
    """Serialize, with the Raw and Pairs escapes; ``KnownJob`` must be
    resolved first."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        value = Pairs(tuple(value.items()))
    if isinstance(value, Pairs):
        items = (
            json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(v, ascii_only)
            for k, v in value.pairs
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def resolve(value: Any, known: list[str]) -> Any:
    if isinstance(value, KnownJob):
        return known[value.index % len(known)] if known else "0123456789abcdef"
    if isinstance(value, dict):
        return {k: resolve(v, known) for k, v in value.items()}
    if isinstance(value, Pairs):
        return Pairs(tuple((k, resolve(v, known)) for k, v in value.pairs))
    if isinstance(value, list):
        return [resolve(v, known) for v in value]
    return value


@st.composite
def job_specs(draw: st.DrawFn) -> dict[str, Any]:
    stages = draw(st.lists(st.sampled_from(SAFE_ARGVS), min_size=1, max_size=3))
    spec: dict[str, Any] = {"stages": [{"argv": list(argv)} for argv in stages]}
    optional = {
        "stdin": st.text(max_size=40),
        "stdin_encoding": st.sampled_from(["utf-8", "base64"]),
        "timeout": st.floats(0.05, 2.0),
        "output_encoding": st.sampled_from(["utf-8", "base64"]),
        "env": st.dictionaries(
            st.sampled_from(["A", "LANG", "X_Y"]),
            st.text(st.characters(blacklist_characters="\0"), max_size=10),
            max_size=2,
        ),
        "fail_fast": st.booleans(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            spec[name] = draw(strategy)
    if spec.get("stdin_encoding") == "base64" and "stdin" in spec:
        spec["stdin"] = draw(st.sampled_from(["", "aGkK", "AAEC/w=="]))
    return spec


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPS))
    request: dict[str, Any] = {"op": op}
    if op in ("run", "submit"):
        request["job"] = draw(job_specs())
    elif op in ("status", "wait", "cancel"):
        request["job_id"] = draw(
            st.builds(KnownJob, st.integers(0, 1000)) | st.text(max_size=16)
        )
        if op == "wait" and draw(st.booleans()):
            request["timeout"] = draw(st.floats(0, 0.3))
    if draw(st.booleans()):
        request["id"] = draw(JSON_VALUES)
    return request


def containers(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every dict and list inside ``value``."""
    if isinstance(value, dict):
        yield path
        for key, child in value.items():
            yield from containers(child, (*path, key))
    elif isinstance(value, list):
        yield path
        for index, child in enumerate(value):
            yield from containers(child, (*path, index))


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def mutated(draw: st.DrawFn, request: dict[str, Any]) -> Any:
    """``request`` with one to three things wrong with it."""
    value: Any = copy.deepcopy(request)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(containers(value))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        target = at(value, path)
        action = draw(st.sampled_from(["set", "add", "delete", "duplicate", "op"]))
        if isinstance(target, list):
            if target and action in ("set", "delete"):
                index = draw(st.integers(0, len(target) - 1))
                if action == "set":
                    target[index] = draw(ANY_VALUE)
                else:
                    del target[index]
            else:
                target.append(draw(ANY_VALUE))
        elif action == "op" and isinstance(value, dict):
            value["op"] = draw(st.sampled_from(OPS) | st.text(max_size=8) | ANY_VALUE)
        elif action == "set" and target:
            key = draw(st.sampled_from(sorted(target)))
            target[key] = draw(ANY_VALUE)
        elif action == "delete" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        elif action == "duplicate" and target:
            key = draw(st.sampled_from(sorted(target)))
            pairs = Pairs((*target.items(), (key, draw(ANY_VALUE))))
            if path:  # frozen from now on: containers() does not enter Pairs
                at(value, path[:-1])[path[-1]] = pairs
            else:
                value = pairs
        else:
            target[draw(KEYS | st.text(max_size=8))] = draw(ANY_VALUE)
    return value


def encode(value: Any, known: list[str], *, ascii_only: bool) -> bytes:
    text = dump(resolve(value, known), ascii_only)
    return text.encode("utf-8", "surrogatepass")


# -- the oracle ------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(text)
    return number


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def strict_loads(text: str | bytes) -> Any:
    return json.loads(
        text,
        parse_constant=_reject_constant,
        parse_float=_finite,
        object_pairs_hook=_unique,
    )


def max_depth(text: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def request_id(line: bytes) -> Any:
    """The id the daemon must echo: the request's, if it is a JSON object."""
    try:
        doc = strict_loads(line.decode("utf-8").strip())
    except (ValueError, RecursionError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types (``1``, ``1.0`` and ``true`` differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """Room to parse and compare values as deep as the daemon accepts."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def check_reply(line: bytes, raw: bytes) -> dict[str, Any]:
    """Assert ``raw`` is one well-formed reply to ``line``; return it."""
    assert raw.endswith(b"\n"), f"no complete reply to {line[:200]!r}: {raw[:200]!r}"
    assert raw.count(b"\n") == 1
    with deep_recursion():
        reply = strict_loads(raw.decode("utf-8"))
        assert isinstance(reply, dict), raw[:200]
        assert reply.get("ok") in (True, False), raw[:200]
        if reply["ok"]:
            assert set(reply) == {"id", "ok", "result"}, raw[:200]
            assert isinstance(reply["result"], dict)
        else:
            assert set(reply) == {"id", "ok", "error"}, raw[:200]
            error = reply["error"]
            assert isinstance(error, dict)
            assert set(error) == {"code", "message"}, raw[:200]
            assert error["code"] in PROTOCOL_ERRORS, raw[:200]
            assert error["code"] != "internal", (line[:300], raw[:300])
            assert isinstance(error["message"], str)
            assert error["message"]
        expected = request_id(line)
        if len(line) > MAX_REQUEST:
            assert reply["id"] is None
            assert reply["error"]["code"] == "frame_too_large", raw[:200]
        elif max_depth(line) >= DEPTH_MARGIN:
            assert reply["id"] is None or reply["id"] == expected, raw[:200]
        else:
            assert same(reply["id"], expected), (line[:300], raw[:300])
    return reply


# -- the session -----------------------------------------------------------------


@dataclass
class Session:
    """One daemon and one connection, reopened when the daemon closes it."""

    daemon: Daemon
    conn: RawConnection | None = None
    known: list[str] = field(default_factory=list)
    sent: int = 0

    def connection(self) -> RawConnection:
        if self.conn is None:
            self.conn = RawConnection.open(self.daemon.socket_path, timeout=20.0)
        return self.conn

    def reconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def exchange(self, line: bytes) -> dict[str, Any] | None:
        """Send one line; check and return the reply (None for a blank line)."""
        try:
            return self._exchange(line)
        except BaseException:
            self.reconnect()  # the next example starts on a clean connection
            raise

    def _exchange(self, line: bytes) -> dict[str, Any] | None:
        assert b"\n" not in line
        self.sent += 1
        conn = self.connection()
        try:
            conn.sock.sendall(line + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            assert len(line) > MAX_REQUEST, "the daemon hung up on us"
        if not line.strip() and len(line) <= MAX_REQUEST:  # skipped, not answered
            sentinel = f"sentinel-{self.sent}"
            pong = conn.request({"op": "ping", "id": sentinel})
            assert pong["id"] == sentinel
            return None
        try:
            raw = conn.read_line()
        except ConnectionResetError:
            raw = b""
        reply = check_reply(line, raw)
        if reply["ok"] is False and reply["error"]["code"] == "frame_too_large":
            assert self.closed(), "the connection stayed open after frame_too_large"
            self.reconnect()
        elif reply["ok"] and "job_id" in reply["result"]:
            self.known.append(reply["result"]["job_id"])
            del self.known[:-50]
        return reply

    def closed(self) -> bool:
        conn = self.connection()
        ready, _, _ = select.select([conn.sock], [], [], 5.0)
        if not ready:
            return False
        try:
            return conn.sock.recv(1) == b""
        except ConnectionResetError:
            return True


@dataclass
class Baseline:
    fds: int
    threads: int


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[Daemon]:
    daemon = start_daemon(DAEMON_SETTINGS)
    try:
        yield daemon
        assert daemon.terminate() == 0, daemon.log()[-4000:]
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def baseline(fuzz_daemon: Daemon) -> Baseline:
    """Warmed up: every program has run, a frame as large as allowed was
    decoded (off the event loop, by a pooled thread), then the daemon is
    left idle."""
    with fuzz_daemon.connect() as conn:
        for argv in SAFE_ARGVS:
            stages = [{"argv": list(argv)}, {"argv": ["cat"]}]
            reply = conn.request({"op": "run", "job": {"stages": stages}})
            assert reply["result"]["state"] == "succeeded", reply
        largest = near_the_limit(MAX_REQUEST, b"ping")
        assert conn.request_line(largest)["ok"] is True
    assert wait_for(lambda: not fuzz_daemon.children())
    assert wait_for(lambda: idle(fuzz_daemon), timeout=10)
    time.sleep(0.2)
    pid = fuzz_daemon.proc.pid
    return Baseline(fd_count(pid), thread_count(pid))


def idle(daemon: Daemon) -> bool:
    stats = daemon.request({"op": "stats"})["result"]
    return bool(stats["connections"] == 1 and stats["running"] == 0)


@pytest.fixture(scope="module")
def session(fuzz_daemon: Daemon, baseline: Baseline) -> Iterator[Session]:
    assert baseline.fds > 0
    session = Session(fuzz_daemon)
    yield session
    session.reconnect()


# -- the fuzzers -----------------------------------------------------------------


def near_the_limit(size: int, filler: bytes) -> bytes:
    """A line of exactly ``size`` bytes: a ping, or one unterminated string."""
    if filler == b"ping":
        head = b'{"op":"ping","id":"'
        return head + b"p" * (size - len(head) - 2) + b'"}'
    return filler * (size // len(filler)) + b"z" * (size % len(filler))


LINES = st.one_of(
    st.binary(max_size=200),
    st.builds(
        near_the_limit,
        st.integers(MAX_REQUEST - 4, MAX_REQUEST + 4),
        st.sampled_from([b"ping", b"x", b" ", b"{", b"\xff"]),
    ),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b" ", b"\t\r", b"\x0c", b"{", b"}", b"[]", b"null", b"{}"]),
).map(lambda b: b.replace(b"\n", b""))


@fuzz_settings(500)
@given(line=LINES)
def test_arbitrary_bytes(session: Session, line: bytes) -> None:
    session.exchange(line)


@fuzz_settings(400)
@given(value=ANY_VALUE, ascii_only=st.booleans())
def test_arbitrary_json_values(session: Session, value: Any, ascii_only: bool) -> None:
    session.exchange(encode(value, session.known, ascii_only=ascii_only))


@fuzz_settings(250)
@given(request=valid_requests(), ascii_only=st.booleans())
def test_valid_requests(session: Session, request: Any, ascii_only: bool) -> None:
    line = encode(request, session.known, ascii_only=ascii_only)
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:  # a lone surrogate is only valid escaped
        line = encode(request, session.known, ascii_only=True)
    reply = session.exchange(line)
    assert reply is not None
    if reply["ok"] is False:
        code = reply["error"]["code"]
        if request["op"] in ("run", "submit"):
            assert code == "busy", reply
        else:
            assert request["op"] in ("status", "wait", "cancel"), reply
            assert code in ("not_found", "timeout"), reply
    elif request["op"] == "run":
        assert reply["result"]["state"] != "error", reply


@fuzz_settings(850)
@given(data=st.data(), ascii_only=st.booleans())
def test_near_valid_requests(
    session: Session, data: st.DataObject, ascii_only: bool
) -> None:
    request = data.draw(valid_requests())
    broken = data.draw(mutated(request))
    session.exchange(encode(broken, session.known, ascii_only=ascii_only))


@pytest.mark.parametrize("depth", range(960, 1011))
def test_ids_nested_near_the_parser_limit(session: Session, depth: int) -> None:
    """Parsed at one depth, echoed at a deeper one: must still be answered."""
    for op in ("ping", "nope"):
        session.exchange(f'{{"op":"{op}","id":{nested(depth).text}}}'.encode())


def test_the_daemon_is_as_it_was(
    fuzz_daemon: Daemon, baseline: Baseline, session: Session
) -> None:
    """Run last: after every fuzzer, nothing faulted and nothing leaked."""
    session.reconnect()
    assert fuzz_daemon.proc.poll() is None
    assert fuzz_daemon.request({"op": "ping", "id": "end"})["id"] == "end"
    pid = fuzz_daemon.proc.pid
    assert wait_for(lambda: not fuzz_daemon.children(), timeout=15)
    assert wait_for(lambda: idle(fuzz_daemon), timeout=15)
    assert wait_for(lambda: fd_count(pid) <= baseline.fds, timeout=10), (
        fd_count(pid),
        baseline.fds,
    )
    assert wait_for(lambda: thread_count(pid) <= baseline.threads, timeout=10), (
        thread_count(pid),
        baseline.threads,
    )
    faults = [
        (event["event"], str(event.get("exception", "")).splitlines()[-1:])
        for event in fuzz_daemon.events()
        if event.get("level") in ("error", "critical")
    ]
    assert faults == []
    assert "Traceback" not in fuzz_daemon.log()
    assert session.sent >= 2000
    stats = fuzz_daemon.request({"op": "stats"})["result"]
    assert stats["accepted"] >= 50  # the fuzzers did run jobs
    assert stats["errors"].get("internal", 0) == 0
