"""Request parsing and reply encoding, without a socket."""

from __future__ import annotations

import asyncio
import json

import pytest

from cuprumd.errors import (
    PROTOCOL_ERRORS,
    BadRequest,
    Busy,
    FrameTooLarge,
    Internal,
    ProtocolError,
)
from cuprumd.frames import FREE_BYTES, FrameBudget, FrameReader
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


def frames(data: bytes, limit: int) -> list[object]:
    async def go() -> list[object]:
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(data)
        reader.feed_eof()
        framer = FrameReader(reader, limit, FrameBudget(limit))
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
        readers = []
        for _ in range(2):
            reader = asyncio.StreamReader()
            reader.feed_data(big)
            reader.feed_eof()
            readers.append(FrameReader(reader, len(big), budget))
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
        reader = asyncio.StreamReader()
        reader.feed_data(b'{"op":"ping"}\n' * 1000)
        reader.feed_eof()
        framer = FrameReader(reader, 1 << 20, budget)
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
