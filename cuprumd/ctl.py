"""``cuprumctl``: the daemon from a shell, behaving like the pipeline would.

``cuprumctl run -- sort -r '|' head -n 3`` hands its own stdin, stdout and
stderr to the daemon (``SCM_RIGHTS``), so the job's stages read and write
them directly, as if the shell had started the pipeline, and exits with the
status a shell would have given the pipeline (pipefail), so it can stand in
for the pipeline inside scripts. ``--capture`` (or a daemon that cannot
take descriptors) sends stdin inside the request and writes the output the
result carries instead.

``run`` and ``ping`` run often, so they import only what they use: their
command lines are parsed here (argparse only for help, mistakes and the
other commands), and they speak the protocol through ``cuprumd.wire``. The
other commands import the full client (and pydantic) when they run.
"""

from __future__ import annotations

import _signal
import os
import sys
import time
from types import SimpleNamespace

from cuprumd import wire
from cuprumd.errors import ClientError, FrameTooLarge, ProtocolError

#: ``typing.TYPE_CHECKING`` without importing typing (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TypeAlias

    from cuprumd.client import Client
    from cuprumd.models import JobResult

    #: A parsed command line: from argparse, or from ``_quick_args``.
    Args: TypeAlias = argparse.Namespace | SimpleNamespace
    Command: TypeAlias = Callable[[Args], int]
    ClientCommand: TypeAlias = Callable[[Client, Args], int]
    #: An option: its flags, ``dest``, kind (``flag``, ``append``, ``str``
    #: or ``float``), metavar and help.
    Option: TypeAlias = tuple[tuple[str, ...], str, str, str | None, str]

__all__ = ["exit_status", "main", "split_stages"]

EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_TIMED_OUT = 124
EX_CANCELLED = 130
EX_SIGPIPE = 128 + _signal.SIGPIPE
STAGE_SEPARATOR = "|"
#: Our descriptors a job may take over, by the names of the protocol.
STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}
#: Signals that make ``run`` hang up, which cancels the job.
INTERRUPTS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)

COMMON_OPTIONS: tuple[Option, ...] = (
    (("--socket",), "socket", "str", None,
     "daemon socket (default: $CUPRUM_SOCKET, then discovery)"),
    (("--daemon-user",), "daemon_user", "str", None,
     "a user the daemon may run as, besides root and you "
     "(default: $CUPRUM_DAEMON_USER)"),
    (("--json",), "json", "flag", None,
     "print JSON replies (run: the JobResult, which implies --capture)"),
)  # fmt: skip
JOB_OPTIONS: tuple[Option, ...] = (
    (("--timeout",), "timeout", "float", None, "job timeout in seconds"),
    (("--env",), "env", "append", "K=V", "a variable for the job (repeatable)"),
    (("--cwd",), "cwd", "str", None, "working directory of the job"),
    (("--fail-fast",), "fail_fast", "flag", None,
     "stop the other stages as soon as one fails"),
    (("-n", "--no-stdin"), "no_stdin", "flag", None,
     "do not give the job our stdin (it reads /dev/null)"),
    (("--separator",), "separator", "str", "SEP",
     f"the argument between stages (default {STAGE_SEPARATOR!r})"),
)  # fmt: skip
RUN_OPTIONS: tuple[Option, ...] = (
    (("--capture",), "capture", "flag", None,
     "send stdin inside the request and print the output the result "
     "carries, instead of handing the job our descriptors"),
)  # fmt: skip
DEFAULTS = {"separator": STAGE_SEPARATOR, "limit": "100", "encoding": "utf-8"}


def split_stages(
    words: Sequence[str], separator: str = STAGE_SEPARATOR
) -> list[list[str]]:
    """Cut a command line into stages at each lone separator argument.

    Raises
    ------
    ValueError
        For an empty stage (``a | | b``, a leading or trailing separator).
    """
    items = list(words)
    if items and items[0] == "--":
        items = items[1:]
    stages: list[list[str]] = [[]]
    for word in items:
        if word == separator:
            stages.append([])
        else:
            stages[-1].append(word)
    if any(not stage for stage in stages):
        msg = f"every stage needs a program (check the {separator!r} separators)"
        raise ValueError(msg)
    return stages


_FIXED_STATUS = {"succeeded": 0, "timed_out": EX_TIMED_OUT, "cancelled": EX_CANCELLED}


def exit_status(result: JobResult) -> int:
    """The status a shell with ``pipefail`` would report for this job."""
    return _status(result.model_dump(mode="json"))


def _status(doc: Mapping[str, Any]) -> int:
    """``exit_status`` of a JobResult as JSON: 0, the failed stage's exit
    code or 128 + its signal number, 124 (timed out), 130 (cancelled), else
    1."""
    state = doc.get("state")
    fixed = _FIXED_STATUS.get(str(state))
    if fixed is not None:
        return fixed
    failed = doc.get("failed_stage")
    if state != "failed" or not isinstance(failed, int):
        return 1
    stage = doc["stages"][failed]
    if stage.get("exit_code"):
        return int(stage["exit_code"])
    return (
        1 if (signum := _signal_number(stage.get("signal"))) is None else 128 + signum
    )


def _signal_number(name: object) -> int | None:
    """``SIGKILL`` → 9; ``None`` for anything that is not a signal's name."""
    if not isinstance(name, str) or not name.startswith("SIG") or "_" in name:
        return None
    number = getattr(_signal, name, None)
    return number if isinstance(number, int) else None


def _decode(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        import binascii  # noqa: PLC0415 (only captured output needs it)

        return binascii.a2b_base64(text)
    return text.encode("utf-8")


def _read_stdin() -> tuple[str, str] | None:
    """Our stdin as the job's, unless it is a terminal (or empty)."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    if not data:
        return None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        import binascii  # noqa: PLC0415 (only captured input needs it)

        return binascii.b2a_base64(data, newline=False).decode("ascii"), "base64"


def _job(args: Args, *, read_stdin: bool = True) -> dict[str, Any]:
    """The job the command line asks for; with ``read_stdin``, our stdin
    (unless ``--no-stdin``) travels inside it."""
    try:
        stages = split_stages(args.command, args.separator)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    job: dict[str, Any] = {
        "stages": [{"argv": argv} for argv in stages],
        "output_encoding": "utf-8" if args.json else "base64",
        "fail_fast": args.fail_fast,
    }
    if env:
        job["env"] = env
    if args.cwd is not None:
        job["cwd"] = args.cwd
    if args.timeout is not None:
        job["timeout"] = args.timeout
    stdin = None if args.no_stdin or not read_stdin else _read_stdin()
    if stdin is not None:
        job["stdin"], job["stdin_encoding"] = stdin
    return job


class _UsageError(Exception):
    pass


class _Interrupted(BaseException):
    """A signal that ends ``run``: the hang-up that follows cancels the job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def _print_json(doc: object) -> None:
    import json  # noqa: PLC0415 (the quick path decodes with cuprumd.wire)

    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _report(result: Mapping[str, Any], *, as_json: bool = False) -> int:
    """Write the job's output as if it had run here (what the daemon did
    not write to our own descriptors already); return its status."""
    if as_json:
        _print_json(result)
        return _status(result)
    passed = result.get("passed") or ()
    encoding = result["output_encoding"]
    if "stdout" not in passed and sys.stdout is not None:
        sys.stdout.buffer.write(_decode(result["stdout"], encoding))
        sys.stdout.buffer.flush()
    if "stderr" not in passed and sys.stderr is not None:
        for stage in result["stages"]:
            sys.stderr.buffer.write(_decode(stage["stderr"], encoding))
        sys.stderr.buffer.flush()
    notes = {
        "timed_out": "job timed out",
        "cancelled": "job was cancelled",
        "error": f"job could not run: {result.get('error')}",
    }
    note = notes.get(result["state"])
    if note is not None:
        print(f"cuprumctl: {note}", file=sys.stderr)
    if result.get("stdout_truncated"):
        print("cuprumctl: stdout was truncated (max_output_bytes)", file=sys.stderr)
    return _status(result)


def _open_streams(args: Args) -> dict[str, int]:
    """Our descriptors the job takes over: all three that are open (stdin
    not with ``--no-stdin``), whatever they are (file, pipe, terminal)."""
    streams: dict[str, int] = {}
    for name, fd in STREAMS.items():
        if name == "stdin" and args.no_stdin:
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue  # closed: the job gets /dev/null, its output is dropped
        streams[name] = fd
    return streams


def _cmd_run(args: Args) -> int:
    """``run``: a pipe, unless ``--capture``/``--json`` or an old daemon."""
    if args.capture or args.json:
        return _client_command(_run_captured)(args)
    job = _job(args, read_stdin=False)
    streams = _open_streams(args)
    with wire.Connection(args.socket, daemon_user=args.daemon_user) as conn:
        features = conn.request("ping").get("features")
        if isinstance(features, list) and wire.FDS_FEATURE in features:
            for signum in INTERRUPTS:
                _signal.signal(signum, _interrupt)
            return _report(conn.request("run", fds=streams, job=job))
    print(
        "cuprumctl: this cuprumd cannot take descriptors; "
        "running with --capture (stdin and output held in memory)",
        file=sys.stderr,
    )
    return _client_command(_run_captured)(args)


def _run_captured(client: Client, args: Args) -> int:
    result = client.run(_job(args)).model_dump(mode="json")
    return _report(result, as_json=args.json)


def _cmd_submit(client: Client, args: Args) -> int:
    job_id = client.submit(_job(args))
    if args.json:
        _print_json({"job_id": job_id})
    else:
        print(job_id)
    return 0


def _cmd_wait(client: Client, args: Args) -> int:
    result = client.wait(args.job_id, args.timeout).model_dump(mode="json")
    return _report(result, as_json=args.json)


def _cmd_state(client: Client, args: Args) -> int:
    call = client.cancel if args.cmd == "cancel" else client.status
    status = call(args.job_id)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        print(f"{status.job_id} {status.state}")
    return 0


def _cmd_list(client: Client, args: Args) -> int:
    filters: dict[str, Any] = {"states": args.states or None, "limit": args.limit}
    if args.uid is not None:
        filters["uid"] = int(args.uid)
    if args.since is not None:
        filters["since"] = time.time() - args.since
    filters["limit"] = int(args.limit)
    page = client.list_page(**filters, cursor=args.cursor)
    if args.json:
        _print_json(page.model_dump(mode="json"))
        return 0
    for job in page.jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.accepted_at or 0))
        print(f"{job.job_id}  {when}  {job.state:<9}  {' | '.join(job.argv0s)}")
    if page.cursor is not None:
        print(f"cuprumctl: more with --cursor {page.cursor}", file=sys.stderr)
    return 0


def _cmd_follow(client: Client, args: Args) -> int:
    """``follow`` / ``logs``: a job's output to our stdout and stderr, as
    it was written; the exit status says how the job ended."""
    from cuprumd.protocol import OutputEvent  # noqa: PLC0415 (slow)

    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    status = None
    for item in client.follow(args.job_id, live=args.cmd == "follow"):
        if isinstance(item, OutputEvent):
            out = outs["stdout" if item.stream == "stdout" else "stderr"]
            out.write(_decode(item.data, args.encoding))
            out.flush()
        else:
            status = item
    if status is None or not status.state.finished:
        return 0  # logs of a job still running: what there is so far
    return _FIXED_STATUS.get(str(status.state), 1)


def _cmd_stats(client: Client, _args: Args) -> int:
    _print_json(client.stats().model_dump(mode="json"))
    return 0


def _cmd_ping(args: Args) -> int:
    with wire.Connection(args.socket, daemon_user=args.daemon_user) as conn:
        pong = conn.request("ping")
    if args.json:
        _print_json(pong)
    else:
        print(
            f"cuprumd {pong.get('version')} (protocol {pong.get('protocol')}, "
            f"stream backend {pong.get('stream_backend')}, pid {pong.get('pid')}) "
            f"at {conn.socket_path}"
        )
    return 0


def _client_command(func: ClientCommand) -> Command:
    """A command that needs the full client, imported only when it runs."""

    def command(args: Args) -> int:
        from cuprumd.client import Client, DaemonUnavailable  # noqa: PLC0415 (slow)

        try:
            with Client(args.socket, daemon_user=args.daemon_user) as client:
                return func(client, args)
        except DaemonUnavailable as exc:
            raise wire.DaemonUnavailable(str(exc)) from None

    return command


LIST_OPTIONS: tuple[Option, ...] = (
    (("--state",), "states", "append", "STATE", "only jobs in STATE (repeatable)"),
    (("--uid",), "uid", "str", "UID", "only jobs of UID (root and the daemon user)"),
    (("--since",), "since", "float", "SECONDS", "only jobs of the last SECONDS"),
    (("--limit",), "limit", "str", "N", "at most N jobs (default 100)"),
    (("--cursor",), "cursor", "str", "CURSOR", "the next page, as printed"),
)
FOLLOW_OPTIONS: tuple[Option, ...] = (
    (("--encoding",), "encoding", "str", "ENC", "the job's output_encoding"),
)

#: Subcommand: help, options beyond the common ones, the command, and
#: whether it takes a job id (``True``) or a pipeline (``None``) or nothing.
_COMMANDS: dict[str, tuple[str, tuple[Option, ...], Command, bool | None]] = {
    "run": ("run a pipeline on our stdin, stdout and stderr; exit with its "
            "status", JOB_OPTIONS + RUN_OPTIONS,
            _cmd_run, None),
    "submit": ("start a pipeline, print its job id", JOB_OPTIONS,
               _client_command(_cmd_submit), None),
    "status": ("show a job's state", (), _client_command(_cmd_state), True),
    "wait": ("wait for a submitted job and print its output",
             ((("--timeout",), "timeout", "float", None, "give up after seconds"),),
             _client_command(_cmd_wait), True),
    "cancel": ("cancel a job", (), _client_command(_cmd_state), True),
    "list": ("list jobs: current ones, and the history kept in state_dir",
             LIST_OPTIONS, _client_command(_cmd_list), False),
    "follow": ("print a job's output as it is written, until it ends",
               FOLLOW_OPTIONS, _client_command(_cmd_follow), True),
    "logs": ("print the output a job has written so far", FOLLOW_OPTIONS,
             _client_command(_cmd_follow), True),
    "stats": ("print the daemon's counters", (), _client_command(_cmd_stats), False),
    "ping": ("check that the daemon answers", (), _cmd_ping, False),
}  # fmt: skip
#: What ``_quick_args`` parses; the rest goes through argparse.
_QUICK = ("run", "ping")


def _initial(kind: str, dest: str) -> object:
    return {"flag": False, "append": []}.get(kind, DEFAULTS.get(dest))


def _parser() -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 (its import and set-up cost more than a run)

    def add(cmd: argparse.ArgumentParser, options: Sequence[Option]) -> None:
        for flags, dest, kind, metavar, text in options:
            if kind == "flag":
                cmd.add_argument(*flags, dest=dest, action="store_true", help=text)
                continue
            cmd.add_argument(
                *flags,
                dest=dest,
                action="append" if kind == "append" else "store",
                default=_initial(kind, dest),
                metavar=metavar,
                help=text,
                type=float if kind == "float" else str,
            )

    common = argparse.ArgumentParser(add_help=False)
    add(common, COMMON_OPTIONS)
    parser = argparse.ArgumentParser(
        prog="cuprumctl", description="Talk to the cuprumd daemon."
    )
    parser.add_argument("--socket", dest="global_socket", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (text, options, func, operand) in _COMMANDS.items():
        cmd = sub.add_parser(name, parents=[common], help=text)
        add(cmd, options)
        if operand is None:
            cmd.add_argument("command", nargs=argparse.REMAINDER, metavar="-- ARGV")
        elif operand:
            cmd.add_argument("job_id")
        cmd.set_defaults(func=func)
    return parser


def _quick_option(
    words: list[str], kinds: Mapping[str, tuple[str, str]]
) -> tuple[str, object, list[str]] | None:
    """The option at the head of ``words``: its ``dest``, value and the
    words after it; ``None`` where argparse should decide."""
    flag, eq, text = words[0].partition("=")
    dest, kind = kinds.get(flag, ("", ""))
    if not kind or (kind == "flag" and eq):
        return None
    if kind == "flag":
        return dest, True, words[1:]
    if not eq:
        if len(words) < 2:
            return None
        text, words = words[1], words[1:]
    if text.startswith("-"):
        return None
    try:
        value = float(text) if kind == "float" else text
    except ValueError:
        return None
    return dest, value, words[1:]


def _quick_args(words: Sequence[str]) -> SimpleNamespace | None:
    """``run`` and ``ping`` command lines parsed without argparse, as
    argparse would; ``None`` for anything else or unusual (help, an
    abbreviation, a bad value), which argparse then parses or explains."""
    words = list(words)
    global_socket = None
    if words[:1] == ["--socket"] and len(words) > 1 and words[1][:1] != "-":
        global_socket, words = words[1], words[2:]
    if not words or words[0] not in _QUICK:
        return None
    name, words = words[0], words[1:]
    options = COMMON_OPTIONS + _COMMANDS[name][1]
    kinds = {flag: (dest, kind) for flags, dest, kind, *_ in options for flag in flags}
    values = {dest: _initial(kind, dest) for _flags, dest, kind, *_ in options}
    while words and words[0].startswith("-") and words[0] != "--":
        option = _quick_option(words, kinds)
        if option is None:
            return None
        dest, value, words = option
        current = values[dest]
        values[dest] = [*current, value] if isinstance(current, list) else value
    if (name == "run") != bool(words):
        return None  # a pipeline is missing (or ping got one): argparse says so
    args = SimpleNamespace(cmd=name, global_socket=global_socket, **values)
    if name == "run":
        args.command = words
    args.func = _COMMANDS[name][2]
    return args


def _parse(words: Sequence[str]) -> Args:
    args: Args | None = _quick_args(words)
    if args is None:
        parser = _parser()
        args = parser.parse_args(words)
        if args.cmd in ("run", "submit") and not args.command:
            parser.error(f"{args.cmd}: give the pipeline after '--'")
    args.socket = args.socket or args.global_socket
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cuprumctl`` script; returns the exit status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        status: int = args.func(args)
        return status
    except _UsageError as exc:
        _parser().error(str(exc))
    except _Interrupted as exc:
        return 128 + exc.signum  # the connection is closed: the job is cancelled
    except wire.DaemonUnavailable as exc:
        print(f"cuprumctl: {exc} (is cuprumd running?)", file=sys.stderr)
        return EX_UNAVAILABLE
    except FrameTooLarge as exc:
        print(f"cuprumctl: {exc.code}: {exc} (stdin too large?)", file=sys.stderr)
    except ProtocolError as exc:
        print(f"cuprumctl: {exc.code}: {exc}", file=sys.stderr)
    except ClientError as exc:
        print(f"cuprumctl: {exc}", file=sys.stderr)
    except BrokenPipeError:
        return EX_SIGPIPE
    except KeyboardInterrupt:
        return EX_CANCELLED
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
