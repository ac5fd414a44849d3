"""Request parsing and reply encoding, without a socket."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from cuprumd.errors import (
    PROTOCOL_ERRORS,
    BadRequest,
    Busy,
    FrameTooLarge,
    Internal,
    ProtocolError,
)
from cuprumd.frames import FREE_BYTES, MAX_PENDING_FDS, FrameBudget, FrameReader
from cuprumd.protocol import (
    MAX_REQUEST_VALUES,
    REQUEST_TYPES,
    ErrorBody,
    JobRef,
    PingRequest,
    RequestError,
    RunRequest,
    WaitRequest,
    encode_request,
    error_from_reply,
    error_reply,
    ok_reply,
    parse_reply,
    parse_request,
    too_many_values,
)


def parse(doc: object, max_stages: int = 4):
    return parse_request(json.dumps(doc).encode(), max_stages=max_stages)


def rejected(line: bytes, max_stages: int = 4) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(line, max_stages=max_stages)
    return info.value


def test_every_op_of_the_contract_has_a_model() -> None:
    assert set(REQUEST_TYPES) == {
        "ping",
        "run",
        "submit",
        "status",
        "wait",
        "cancel",
        "list",
        "follow",
        "stdin",
        "stats",
    }


def test_valid_requests_parse_into_typed_models() -> None:
    assert isinstance(parse({"op": "ping"}), PingRequest)
    run = parse({"op": "run", "id": [1], "job": {"stages": [{"argv": ["cat"]}]}})
    assert isinstance(run, RunRequest)
    assert run.id == [1]
    wait = parse({"op": "wait", "job_id": "j", "timeout": 2})
    assert isinstance(wait, WaitRequest)
    assert wait.timeout == 2.0


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b"{", None),
        (b"\xc3\x28", None),
        (b"42", None),
        (b'{"id": 3}', 3),
        (b'{"id": 3, "op": null}', 3),
        (b'{"id": "x", "op": "ping", "job_id": "y"}', "x"),
        (b'{"id": 1, "op": "wait", "job_id": "j", "timeout": -1}', 1),
        (b'{"id": 1, "op": "wait", "job_id": "j", "timeout": true}', 1),
        (b'{"id": 1, "op": "run", "job": {"stages": [{"argv": ["a\\u0000"]}]}}', 1),
        (b'{"op": "run", "job": {"stages": [{"argv": ["a"]}], "stdin": 5}}', None),
        (b'{"op": "ping", "x": Infinity}', None),
        (b'{"id": 1e400, "op": "ping"}', None),
        (b'{"op": "ping", "op": "stats"}', None),
        (
            b'{"op": "run", "job": {"stages": [{"argv": ["rm"], "argv": ["true"]}]}}',
            None,
        ),
        (b"[" * 100_000 + b"]" * 100_000, None),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_bad_requests(line: bytes, request_id: object) -> None:
    error = rejected(line)
    assert isinstance(error.error, BadRequest)
    assert error.request_id == request_id


def test_unknown_op_is_its_own_code() -> None:
    error = rejected(b'{"id": 1, "op": "shell"}')
    assert error.error.code == "unknown_op"
    assert "ping" in str(error.error)


def test_too_many_stages() -> None:
    stages = [{"argv": ["cat"]}] * 3
    assert parse({"op": "run", "job": {"stages": stages}}, max_stages=3)
    error = rejected(
        json.dumps({"op": "submit", "job": {"stages": stages}}).encode(), max_stages=2
    )
    assert "max_stages" in str(error.error)


def test_error_messages_never_echo_input_values() -> None:
    line = json.dumps(
        {"op": "run", "job": {"stages": [{"argv": ["cat"]}], "stdin": ["hunter2"]}}
    )
    assert "hunter2" not in str(rejected(line.encode()).error)


def test_ok_reply_is_one_compact_line() -> None:
    line = ok_reply({"a": 1}, JobRef(job_id="j"))
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {"id": {"a": 1}, "ok": True, "result": {"job_id": "j"}}


def test_replies_survive_lone_surrogates() -> None:
    line = ok_reply("\ud800", JobRef(job_id="\udc80"))
    line.decode("utf-8")
    assert json.loads(line)["result"]["job_id"] == "\udc80"
    err = error_reply("\ud800", Busy("x"))
    assert json.loads(err)["id"] == "\ud800"


def test_error_reply_round_trip_restores_the_class() -> None:
    for code, cls in PROTOCOL_ERRORS.items():
        reply = parse_reply(error_reply(5, cls("because")))
        assert reply.ok is False
        assert reply.error is not None
        assert reply.error.code == code
        error = error_from_reply(reply.error)
        assert type(error) is cls
        assert str(error) == "because"


def test_an_unknown_error_code_still_raises_a_protocol_error() -> None:
    error = error_from_reply(ErrorBody(code="new_code", message="m"))
    assert type(error) is ProtocolError
    assert "new_code" in str(error)


def test_internal_is_the_base_code() -> None:
    assert Internal.code == ProtocolError.code == "internal"


def test_encode_request_drops_none_fields() -> None:
    line = encode_request(1, "wait", job_id="j", timeout=None)
    assert json.loads(line) == {"id": 1, "op": "wait", "job_id": "j"}


class Chunks:
    """A connection's bytes as they arrive: pieces, some with descriptors."""

    def __init__(self, *pieces: bytes | tuple[bytes, list[int]]) -> None:
        self.pieces = [p if isinstance(p, tuple) else (p, []) for p in pieces]
        self.gate: asyncio.Event | None = None

    async def receive(self, size: int) -> tuple[bytes, list[int]]:
        if not self.pieces:
            return b"", []
        data, fds = self.pieces[0]
        if len(data) > size:
            self.pieces[0] = (data[size:], [])
            return data[:size], fds
        self.pieces.pop(0)
        return data, fds


def frames(data: bytes, limit: int) -> list[object]:
    async def go() -> list[object]:
        framer = FrameReader(Chunks(data), limit, FrameBudget(limit))
        out: list[object] = []
        while True:
            try:
                frame = await framer.next()
            except FrameTooLarge:
                out.append("too large")
                return out
            out.append(None if frame is None else frame.data)
            if frame is None:
                return out

    return asyncio.run(go())


def test_frames_skip_blank_lines_and_take_a_last_unterminated_line() -> None:
    assert frames(b"a\n\n  \nb", 100) == [b"a\n", b"b", None]


def test_the_frame_limit_is_the_line_length_without_newline() -> None:
    assert frames(b"x" * 64 + b"\n", 64) == [b"x" * 64 + b"\n", None]
    assert frames(b"x" * 65 + b"\n", 64) == ["too large"]
    assert frames(b"x" * 500, 64) == ["too large"]


def test_a_large_line_waits_for_the_budget_and_gives_it_back() -> None:
    big = b"y" * (FREE_BYTES * 3) + b"\n"

    async def go() -> None:
        budget = FrameBudget(len(big))
        readers = [FrameReader(Chunks(big), len(big), budget) for _ in range(2)]
        first = await readers[0].next()
        assert first is not None
        assert first.data == big
        assert budget.available == 0
        second = asyncio.ensure_future(readers[1].next())
        await asyncio.sleep(0.01)
        assert not second.done()  # the budget is spent: it stops reading
        first.lease.hand_over().release()
        frame = await asyncio.wait_for(second, 1)
        assert frame is not None
        assert frame.data == big
        frame.lease.release()
        frame.lease.release()  # once only
        assert budget.available == budget.total

    asyncio.run(go())


def test_small_lines_never_touch_the_budget() -> None:
    async def go() -> None:
        budget = FrameBudget(1)
        framer = FrameReader(Chunks(b'{"op":"ping"}\n' * 1000), 1 << 20, budget)
        count = 0
        while (frame := await framer.next()) is not None:
            assert frame.lease.size == 0
            count += 1
        assert count == 1000
        assert budget.available == 1

    asyncio.run(go())


def test_a_frame_of_too_many_values_is_refused_before_it_is_decoded() -> None:
    stages = ",".join(['{"argv":["true"]}'] * (MAX_REQUEST_VALUES // 2))
    line = ('{"id":7,"op":"run","job":{"stages":[' + stages + "]}}\n").encode()
    assert too_many_values(line)
    with pytest.raises(RequestError, match="JSON values") as caught:
        parse_request(line, max_stages=16)
    assert caught.value.request_id is None  # not decoded far enough to know


def test_commas_and_braces_inside_strings_are_not_values() -> None:
    text = 'x{,[\\"' * MAX_REQUEST_VALUES
    line = '{"op":"run","job":{"stages":[{"argv":["cat"]}],"stdin":"' + text + '"}}'
    assert not too_many_values(line.encode())
    request = parse_request(line.encode(), max_stages=16)
    assert isinstance(request, RunRequest)
    assert request.job.stdin == text.replace('\\"', '"')
    many = '{"op":"ping","id":[' + ",".join(["1"] * (MAX_REQUEST_VALUES + 1)) + "]}"
    assert too_many_values(many.encode())


def open_fds(count: int) -> list[int]:
    return [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_descriptors_travel_with_the_line_their_message_began() -> None:
    async def go() -> None:
        a, b, c = open_fds(3)
        source = Chunks(
            b'{"n":1}\n{"n"',  # the first message carries no descriptor
            (b":2}\n", [a]),  # begins inside line 2: its descriptor is line 2's
            (b'{"n":3}\n{"n":4}\n', [b, c]),  # begins line 3
        )
        framer = FrameReader(source, 1 << 20, FrameBudget(1 << 20))
        got = []
        while (frame := await framer.next()) is not None:
            got.append((frame.data, frame.take_fds()))
        assert got == [
            (b'{"n":1}\n', []),
            (b'{"n":2}\n', [a]),
            (b'{"n":3}\n', [b, c]),
            (b'{"n":4}\n', []),
        ]
        for fd in (a, b, c):
            os.close(fd)

    asyncio.run(go())


def test_descriptors_nobody_takes_are_closed() -> None:
    async def go() -> None:
        blank, unread, dropped = open_fds(3)
        source = Chunks((b"\n", [blank]), (b'{"x"', [unread]))
        framer = FrameReader(source, 1 << 20, FrameBudget(1 << 20))
        frame = await framer.next()  # the blank line's descriptor is closed
        assert frame is not None
        assert frame.fds == [unread]
        frame.close()
        assert not is_open(blank)
        assert not is_open(unread)
        too_many = open_fds(MAX_PENDING_FDS + 1)
        framer = FrameReader(
            Chunks((b'{"a"', too_many[:4]), (b":", too_many[4:])),
            1 << 20,
            FrameBudget(1 << 20),
        )
        with pytest.raises(BadRequest, match="too many descriptors"):
            await framer.next()
        assert not any(is_open(fd) for fd in too_many)
        pending = FrameReader(Chunks((b'{"a"' * 4, [dropped])), 8, FrameBudget(8))
        with pytest.raises(FrameTooLarge):
            await pending.next()
        assert not is_open(dropped)

    asyncio.run(go())
