"""``cuprumctl``: the daemon from a shell, behaving like the pipeline would.

``cuprumctl run -- sort -r '|' head -n 3`` feeds its own stdin to the job,
writes the job's output to its own stdout/stderr byte for byte, and exits
with the status a shell would have given the pipeline (pipefail), so it can
stand in for the pipeline inside scripts.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cuprumd.client import Client, ClientError, DaemonUnavailable, UntrustedDaemon
from cuprumd.errors import FrameTooLarge, ProtocolError
from cuprumd.models import JobResult, JobState

__all__ = ["exit_status", "main", "split_stages"]

EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_TIMED_OUT = 124
EX_CANCELLED = 130
EX_SIGPIPE = 128 + signal.SIGPIPE
STAGE_SEPARATOR = "|"


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


_FIXED_STATUS = {
    JobState.SUCCEEDED: 0,
    JobState.TIMED_OUT: EX_TIMED_OUT,
    JobState.CANCELLED: EX_CANCELLED,
}


def exit_status(result: JobResult) -> int:
    """The status a shell with ``pipefail`` would report for this job."""
    fixed = _FIXED_STATUS.get(result.state)
    if fixed is not None:
        return fixed
    if result.state is not JobState.FAILED or result.failed_stage is None:
        return 1
    stage = result.stages[result.failed_stage]
    if stage.exit_code:
        return stage.exit_code
    signum = signal.Signals.__members__.get(stage.signal or "")
    return 1 if signum is None else 128 + signum.value


def _decode(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text)
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
        return base64.b64encode(data).decode("ascii"), "base64"


def _job(args: argparse.Namespace) -> dict[str, Any]:
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
    stdin = None if args.no_stdin else _read_stdin()
    if stdin is not None:
        job["stdin"], job["stdin_encoding"] = stdin
    return job


class _UsageError(Exception):
    pass


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _report(result: JobResult, *, as_json: bool) -> int:
    """Write the job's output as if it had run here; return its status."""
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return exit_status(result)
    sys.stdout.buffer.write(_decode(result.stdout, result.output_encoding))
    sys.stdout.buffer.flush()
    for stage in result.stages:
        sys.stderr.buffer.write(_decode(stage.stderr, result.output_encoding))
    sys.stderr.buffer.flush()
    notes = {
        JobState.TIMED_OUT: "job timed out",
        JobState.CANCELLED: "job was cancelled",
        JobState.ERROR: f"job could not run: {result.error}",
    }
    if result.state in notes:
        print(f"cuprumctl: {notes[result.state]}", file=sys.stderr)
    if result.stdout_truncated:
        print("cuprumctl: stdout was truncated (max_output_bytes)", file=sys.stderr)
    return exit_status(result)


def _cmd_run(client: Client, args: argparse.Namespace) -> int:
    return _report(client.run(_job(args)), as_json=args.json)


def _cmd_submit(client: Client, args: argparse.Namespace) -> int:
    job_id = client.submit(_job(args))
    if args.json:
        _print_json({"job_id": job_id})
    else:
        print(job_id)
    return 0


def _cmd_wait(client: Client, args: argparse.Namespace) -> int:
    return _report(client.wait(args.job_id, args.timeout), as_json=args.json)


def _cmd_state(client: Client, args: argparse.Namespace) -> int:
    call = client.cancel if args.cmd == "cancel" else client.status
    status = call(args.job_id)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        print(f"{status.job_id} {status.state}")
    return 0


def _cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list_jobs()
    if args.json:
        _print_json([job.model_dump(mode="json") for job in jobs])
    else:
        for job in jobs:
            print(f"{job.job_id}  {job.state:<9}  {' | '.join(job.argv0s)}")
    return 0


def _cmd_stats(client: Client, _args: argparse.Namespace) -> int:
    _print_json(client.stats().model_dump(mode="json"))
    return 0


def _cmd_ping(client: Client, args: argparse.Namespace) -> int:
    pong = client.ping()
    if args.json:
        _print_json(pong.model_dump(mode="json"))
    else:
        print(
            f"cuprumd {pong.version} (protocol {pong.protocol}, stream backend "
            f"{pong.stream_backend}, pid {pong.pid}) at {client.socket_path}"
        )
    return 0


Command = Callable[[Client, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", help="daemon socket (default: $CUPRUM_SOCKET, then discovery)"
    )
    common.add_argument(
        "--daemon-user",
        dest="daemon_user",
        help="a user the daemon may run as, besides root and you "
        "(default: $CUPRUM_DAEMON_USER)",
    )
    common.add_argument("--json", action="store_true", help="print JSON replies")
    parser = argparse.ArgumentParser(
        prog="cuprumctl", description="Talk to the cuprumd daemon."
    )
    parser.add_argument("--socket", dest="global_socket", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="cmd", required=True)
    jobs: dict[str, tuple[str, Command]] = {
        "run": ("run a pipeline and wait for it", _cmd_run),
        "submit": ("start a pipeline, print its job id", _cmd_submit),
    }
    for name, (text, func) in jobs.items():
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("--timeout", type=float, help="job timeout in seconds")
        cmd.add_argument("--env", action="append", default=[], metavar="K=V")
        cmd.add_argument("--cwd", help="working directory of the job")
        cmd.add_argument("--fail-fast", action="store_true", dest="fail_fast")
        cmd.add_argument("-n", "--no-stdin", action="store_true", dest="no_stdin")
        cmd.add_argument("--separator", default=STAGE_SEPARATOR, metavar="SEP")
        cmd.add_argument("command", nargs=argparse.REMAINDER, metavar="-- ARGV")
        cmd.set_defaults(func=func)
    for name, text, func in (
        ("status", "show a job's state", _cmd_state),
        ("wait", "wait for a submitted job and print its output", _cmd_wait),
        ("cancel", "cancel a job", _cmd_state),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("job_id")
        if name == "wait":
            cmd.add_argument("--timeout", type=float, help="give up after seconds")
        cmd.set_defaults(func=func)
    for name, text, func in (
        ("list", "list known jobs", _cmd_list),
        ("stats", "print the daemon's counters", _cmd_stats),
        ("ping", "check that the daemon answers", _cmd_ping),
    ):
        sub.add_parser(name, parents=[common], help=text).set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cuprumctl`` script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd in ("run", "submit") and not args.command:
        parser.error(f"{args.cmd}: give the pipeline after '--'")
    try:
        client = Client(args.socket or args.global_socket, daemon_user=args.daemon_user)
    except UntrustedDaemon as exc:
        print(f"cuprumctl: {exc}", file=sys.stderr)
        return 1
    try:
        with client:
            status: int = args.func(client, args)
            return status
    except _UsageError as exc:
        parser.error(str(exc))
    except DaemonUnavailable as exc:
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
