"""Wire protocol v1: NDJSON frames, request and result models, replies.

Both ends use this module, so the server and the clients cannot drift apart.
Requests are checked strictly (unknown fields and wrong types are errors a
client sees); result models are read leniently by clients, so a newer
daemon that adds a field does not break an older client.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cuprumd.engine.passed import StreamName
from cuprumd.errors import (
    PROTOCOL_ERRORS,
    BadRequest,
    ProtocolError,
    UnknownOp,
)
from cuprumd.models import JobSpec, JobState

__all__ = [
    "FEATURES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "CancelRequest",
    "FollowRequest",
    "JobList",
    "JobRef",
    "JobStatus",
    "JobSummary",
    "ListRequest",
    "OutputEvent",
    "PingRequest",
    "PingResult",
    "Reply",
    "Request",
    "RequestError",
    "RunRequest",
    "StatsRequest",
    "StatsResult",
    "StatusRequest",
    "StdinRequest",
    "SubmitRequest",
    "WaitRequest",
    "encode_request",
    "error_from_reply",
    "error_reply",
    "ok_reply",
    "output_event",
    "parse_reply",
    "parse_request",
    "too_many_values",
]

PROTOCOL_VERSION = 1
#: What ``ping`` promises a client may rely on: ``fds``, descriptors passed
#: with ``run`` and ``submit``.
FEATURES = ("fds",)
#: JSON values (objects, arrays and their members) one request may hold. A
#: job of ``max_stages`` stages needs a few per argument; decoding millions
#: of them would hold the interpreter for a second, so a frame with more is
#: refused before it is decoded.
MAX_REQUEST_VALUES = 100_000
_STRUCTURE = re.compile(rb'["{\[,]')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Any = None


class PingRequest(_Request):
    """Liveness and identity: version, protocol, backend, pid."""

    op: Literal["ping"]


class _JobRequest(_Request):
    """A job, and which of its streams the client passed as descriptors
    (sent with the request line, in this order)."""

    job: JobSpec
    fds: list[StreamName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_fds(self) -> _JobRequest:
        if len(set(self.fds)) != len(self.fds):
            msg = f"fds: each stream may be passed once, got {self.fds}"
            raise ValueError(msg)
        if "stdin" in self.fds and self.job.stdin is not None:
            msg = "job.stdin: the client passed stdin as a descriptor"
            raise ValueError(msg)
        return self


class RunRequest(_JobRequest):
    """Run a job and reply with its result when it ends.

    ``stream``: send the output as ``output`` events while the job runs,
    instead of in the result. ``stdin_stream``: the job's input follows as
    ``stdin`` requests on this connection, up to one with ``eof``.
    """

    op: Literal["run"]
    stream: bool = False
    stdin_stream: bool = False

    @model_validator(mode="after")
    def _check_stdin_stream(self) -> RunRequest:
        if self.stdin_stream and (self.job.stdin is not None or "stdin" in self.fds):
            msg = "stdin_stream: the job's stdin is already given"
            raise ValueError(msg)
        return self


class SubmitRequest(_JobRequest):
    """Start a job and reply with its id at once."""

    op: Literal["submit"]


class StdinRequest(_Request):
    """A chunk of a streaming run's input (``stdin_stream``), in the job's
    ``stdin_encoding``; ``eof`` ends the input. Accepted only while such a
    run reads its input on this connection."""

    op: Literal["stdin"]
    data: str = ""
    eof: bool = False


class StatusRequest(_Request):
    """Where a job is now."""

    op: Literal["status"]
    job_id: str


class WaitRequest(_Request):
    """The result of a submitted job, once it ends (at most ``timeout`` s)."""

    op: Literal["wait"]
    job_id: str
    timeout: float | None = Field(default=None, ge=0)


class CancelRequest(_Request):
    """Stop a queued or running job."""

    op: Literal["cancel"]
    job_id: str


class ListRequest(_Request):
    """Jobs the asker may see, oldest first: current ones and, with a
    ``state_dir``, the history since the journal began. ``uid`` filters by
    owner (others' jobs are visible only to root and the daemon's user);
    ``since``/``until`` by admission time (Unix seconds); ``cursor`` is the
    ``cursor`` of the previous page."""

    op: Literal["list"]
    states: list[JobState] | None = None
    uid: int | None = None
    since: float | None = None
    until: float | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, pattern=r"^[0-9]{1,18}$")

    @field_validator("states", mode="before")
    @classmethod
    def _state_names(cls, value: object) -> object:
        """States by name: strict mode takes no string for an enum."""
        if isinstance(value, list):
            known = {str(state): state for state in JobState}
            names = ", ".join(known)
            try:
                return [known[v] if isinstance(v, str) else v for v in value]
            except KeyError as exc:
                msg = f"unknown state {exc.args[0]!r}; known: {names}"
                raise ValueError(msg) from None
        return value


class FollowRequest(_Request):
    """A job's output as it is written, from the spool (``state_dir``):
    ``output`` events, then the job's status once it has ended. ``live``
    false: only what is stored now (``cuprumctl logs``)."""

    op: Literal["follow"]
    job_id: str
    live: bool = True


class StatsRequest(_Request):
    """Counters since start-up."""

    op: Literal["stats"]


Request = (
    PingRequest
    | RunRequest
    | SubmitRequest
    | StatusRequest
    | WaitRequest
    | CancelRequest
    | ListRequest
    | StatsRequest
    | StdinRequest
    | FollowRequest
)

#: Each op's name comes from its model's ``op`` literal, so the union, this
#: map and the server's ``match`` cannot disagree.
REQUEST_TYPES: dict[str, type[Request]] = {
    get_args(model.model_fields["op"].annotation)[0]: model
    for model in get_args(Request)
}


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PingResult(_Result):
    """``ping``: who answers."""

    version: str
    protocol: int
    stream_backend: str
    pid: int
    features: list[str] = Field(default_factory=list)


class OutputEvent(_Result):
    """A piece of a streaming run's output: ``data`` is what ``stage``
    wrote to ``stream`` (``stdout`` or ``stderr``), in the job's
    ``output_encoding``."""

    kind: Literal["output"] = "output"
    stream: str
    stage: int
    data: str


class JobRef(_Result):
    """``submit``: the id to ask about later."""

    job_id: str


class JobStatus(_Result):
    """``status`` and ``cancel``: a job's current state."""

    job_id: str
    state: JobState


class JobSummary(JobStatus):
    """One line of ``list``."""

    argv0s: list[str]
    uid: int | None = None
    accepted_at: float | None = None
    finished_at: float | None = None


class JobList(_Result):
    """``list``: one page of jobs; ``cursor`` fetches the next, if any."""

    jobs: list[JobSummary]
    cursor: str | None = None


class StatsResult(_Result):
    """``stats``: jobs by state (current for queued/running, totals for end
    states), bytes moved by each pump, the queue, and error replies by code;
    ``scope`` says whose: the whole daemon's, or the asking uid's own."""

    scope: Literal["daemon", "uid"] = "daemon"
    jobs: dict[str, int]
    bytes: dict[str, int]
    queue_depth: int
    running: int
    accepted: int
    errors: dict[str, int]
    retained: int
    retained_bytes: int
    connections: int
    max_concurrent_jobs: int
    max_queued_jobs: int
    stream_backend: str
    uptime_seconds: float


class RequestError(Exception):
    """A request that cannot be served, with the ``id`` to echo."""

    def __init__(self, request_id: Any, error: ProtocolError) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        msg = f"number {text[:32]} is out of range"
        raise ValueError(msg)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique: with ``"argv"`` given twice, which
    one ran would otherwise be the parser's secret."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            msg = f"duplicate key {key!r}"
            raise ValueError(msg)
        obj[key] = value
    return obj


def _describe(exc: ValidationError) -> str:
    """Field locations and messages only: inputs may hold a job's stdin."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "request"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def too_many_values(line: bytes, limit: int = MAX_REQUEST_VALUES) -> bool:
    """Whether the frame holds more than ``limit`` JSON values, found by
    counting ``{``, ``[`` and ``,`` outside strings: no object is built, and
    the count stops as soon as it passes the limit."""
    if line.count(b",") + line.count(b"{") + line.count(b"[") <= limit:
        return False  # the common case: not even counting strings' insides
    seen, pos = 0, 0
    while (token := _STRUCTURE.search(line, pos)) is not None:
        if token.group() == b'"':
            rest = _STRING_REST.match(line, token.end())
            if rest is None:
                return False  # an unterminated string: the decoder says so
            pos = rest.end()
            continue
        seen += 1
        if seen > limit:
            return True
        pos = token.end()
    return False


def parse_request(line: bytes, *, max_stages: int) -> Request:
    """Decode one frame into a typed request.

    Raises
    ------
    RequestError
        Carrying ``bad_request`` or ``unknown_op`` and the request's ``id``
        (``None`` when the frame is not a JSON object).
    """
    if too_many_values(line):
        msg = f"request holds more than {MAX_REQUEST_VALUES} JSON values"
        raise RequestError(None, BadRequest(msg))
    try:
        text = line.decode("utf-8").strip()
        obj = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite,
            object_pairs_hook=_no_duplicates,
        )
    except UnicodeDecodeError as exc:
        raise RequestError(None, BadRequest(f"request is not UTF-8: {exc}")) from None
    except ValueError as exc:
        raise RequestError(None, BadRequest(f"request is not JSON: {exc}")) from None
    except RecursionError:
        msg = "request is nested too deeply"
        raise RequestError(None, BadRequest(msg)) from None
    if not isinstance(obj, dict):
        msg = f"request must be a JSON object, not {type(obj).__name__}"
        raise RequestError(None, BadRequest(msg))
    request_id = obj.get("id")
    op = obj.get("op")
    if op is None:
        raise RequestError(request_id, BadRequest("request has no 'op' field"))
    if not isinstance(op, str):
        raise RequestError(request_id, BadRequest("'op' must be a string"))
    model = REQUEST_TYPES.get(op)
    if model is None:
        known = ", ".join(REQUEST_TYPES)
        raise RequestError(request_id, UnknownOp(f"unknown op {op!r}; known: {known}"))
    if model is RunRequest or model is SubmitRequest:
        _check_stage_count(obj, request_id, max_stages)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise RequestError(request_id, BadRequest(_describe(exc))) from None


def _check_stage_count(obj: dict[str, Any], request_id: Any, max_stages: int) -> None:
    """Refuse too many stages before any is validated: counting is cheap,
    checking 400,000 stages is not."""
    job = obj.get("job")
    stages = job.get("stages") if isinstance(job, dict) else None
    if isinstance(stages, list) and len(stages) > max_stages:
        msg = f"job.stages: {len(stages)} stages, more than max_stages ({max_stages})"
        raise RequestError(request_id, BadRequest(msg))


def _dumps(value: Any, *, ascii_only: bool = False) -> str:
    return json.dumps(
        value, ensure_ascii=ascii_only, separators=(",", ":"), allow_nan=False
    )


def _echo(request_id: Any) -> str:
    """The ``id`` to echo, as JSON (ASCII). An id nested nearly as deep as
    the decoder allows cannot always be encoded again from where the reply
    is built; it is answered as ``null``, like a request that could not be
    read."""
    try:
        return _dumps(request_id, ascii_only=True)
    except RecursionError:
        return "null"


def ok_reply(request_id: Any, result: BaseModel) -> bytes:
    """``{"id", "ok": true, "result"}`` as one line.

    Strings holding lone surrogates (a client may send them as ``\\ud800``)
    cannot be UTF-8; they are sent as JSON escapes instead of failing.
    """
    head = _echo(request_id)
    try:
        body = result.model_dump_json()
        return f'{{"id":{head},"ok":true,"result":{body}}}\n'.encode()
    except (ValueError, UnicodeEncodeError):
        body = _dumps(result.model_dump(mode="json"), ascii_only=True)
        return f'{{"id":{head},"ok":true,"result":{body}}}\n'.encode("ascii")


def output_event(request_id: Any, stream: str, stage: int, data: str) -> bytes:
    """One ``output`` event of a streaming run: a piece of a stage's
    ``stream`` as it was written, in the job's ``output_encoding``."""
    event = {"kind": "output", "stream": stream, "stage": stage, "data": data}
    body = _dumps(event)
    return f'{{"id":{_echo(request_id)},"ok":true,"event":{body}}}\n'.encode()


def error_reply(request_id: Any, error: ProtocolError) -> bytes:
    """``{"id", "ok": false, "error": {"code", "message"}}`` as one line."""
    body = _dumps({"code": error.code, "message": str(error)}, ascii_only=True)
    return f'{{"id":{_echo(request_id)},"ok":false,"error":{body}}}\n'.encode("ascii")


def encode_request(request_id: Any, op: str, **fields: Any) -> bytes:
    """One request line, for clients; ``None`` fields are left out."""
    doc: dict[str, Any] = {"id": request_id, "op": op}
    doc.update({key: value for key, value in fields.items() if value is not None})
    try:
        return (_dumps(doc) + "\n").encode()
    except UnicodeEncodeError:
        return (_dumps(doc, ascii_only=True) + "\n").encode("ascii")


class ErrorBody(BaseModel):
    """The ``error`` member of a failed reply."""

    code: str
    message: str


class Reply(BaseModel):
    """Any reply, as a client reads it."""

    id: Any = None
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    event: dict[str, Any] | None = None


def parse_reply(line: bytes) -> Reply:
    """Decode a reply line (client side).

    Raises
    ------
    ValueError
        If the line is not a reply (the peer is not a cuprumd daemon).
    """
    return Reply.model_validate_json(line)


def error_from_reply(body: ErrorBody) -> ProtocolError:
    """The ``ProtocolError`` subclass for a reply's code; the base class
    (whose code is ``internal``) for a code this client does not know."""
    cls = PROTOCOL_ERRORS.get(body.code)
    if cls is None:
        return ProtocolError(f"{body.code}: {body.message}")
    return cls(body.message)
