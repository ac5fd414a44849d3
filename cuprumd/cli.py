"""``cuprumd`` command line: ``serve`` and ``check-config``.

This is the only place that exits the process: everything below raises
typed errors, mapped here to 0 (success), 1 (failure) and 78 (bad config).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cuprumd import __version__
from cuprumd.backend import BackendDecision, decide_stream_backend
from cuprumd.daemon import run_daemon
from cuprumd.engine import sandbox
from cuprumd.errors import EX_CONFIG, ConfigError, StartupError
from cuprumd.programs import load_allowlist
from cuprumd.settings import LoadedSettings, Settings, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cuprumd", description="Run argv pipelines for clients."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the daemon in the foreground"),
        ("check-config", "print the effective settings and exit"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", type=Path, help="TOML settings file")
        cmd.add_argument("--socket-path", type=Path, dest="socket_path")
        cmd.add_argument("--stream-backend", dest="stream_backend")
        cmd.add_argument("--log-format", dest="log_format")
        cmd.add_argument("--log-level", dest="log_level")
        if name == "check-config":
            cmd.add_argument("--json", action="store_true", help="machine output")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = ("socket_path", "stream_backend", "log_format", "log_level")
    return {name: getattr(args, name) for name in names}


def _render_value(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value, default=str)


def _sandbox_report(settings: Settings) -> dict[str, Any]:
    """Build the sandbox exactly as the daemon would, keeping failures as data.

    The ruleset is created and closed again so that a kernel that cannot
    enforce the mode, or a path that cannot carry a rule, fails here and
    not at the first job.
    """
    allowlist = load_allowlist(settings.programs)
    names = [*allowlist.by_name, *sorted(allowlist.paths)]
    executables = [*allowlist.by_name.values(), *sorted(allowlist.paths)]
    report: dict[str, Any] = {
        "mode": settings.sandbox,
        "landlock_abi": sandbox.landlock_abi(),
        "required_abi": sandbox.REQUIRED_ABI,
        "policy": None,
        "error": None,
        "warnings": [],
    }
    try:
        policy = sandbox.build_policy(
            settings.sandbox,
            executables,
            readable_paths=settings.readable_paths,
            writable_paths=settings.writable_paths,
            state_dir=settings.state_dir,
        )
        ruleset = sandbox.create_ruleset(policy)
        if ruleset is not None:
            ruleset.close()
        report["policy"] = policy.describe()
    except ConfigError as exc:
        report["error"] = str(exc)
    warnings: list[str] = report["warnings"]
    if settings.sandbox == "off":
        warnings.extend(
            f"programs allows {name!r}, which can run other programs or write "
            'files by name, and sandbox = "off" leaves nothing to contain it'
            for name in sandbox.risky_programs(names)
        )
        if allowlist.any_program:
            warnings.append(
                'programs includes "*" and sandbox = "off": a client may run '
                "any program on the daemon's PATH as the daemon's user"
            )
    elif allowlist.any_program:
        warnings.append(
            'programs includes "*", but the sandbox lets only the programs '
            "named in the allowlist (and their interpreters) be executed"
        )
    return report


def _render_sandbox_value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return "; ".join(
            f"{key} {_render_sandbox_value(item)}" for key, item in value.items()
        )
    return str(value)


def _print_sandbox(report: dict[str, Any]) -> None:
    abi = f"Landlock ABI {report['landlock_abi']}"
    if report["mode"] == "off":
        print(f"sandbox: off ({abi} available; jobs run without a sandbox)")
    else:
        needed = report["required_abi"]
        print(f"sandbox: {report['mode']} ({abi} found, {needed} needed)")
    policy: dict[str, object] | None = report["policy"]
    for key, value in (policy or {}).items():
        if key not in {"mode", "enforced"}:
            print(f"sandbox {key}: {_render_sandbox_value(value)}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")


def _check_config(
    loaded: LoadedSettings, decision: BackendDecision, *, as_json: bool
) -> int:
    settings = loaded.settings
    values = settings.model_dump(mode="json")
    report = _sandbox_report(settings)
    if as_json:
        doc = {
            "settings": {
                key: {"value": values[key], "source": loaded.sources[key]}
                for key in sorted(values)
            },
            "stream_backend": decision.as_event() | {"error": decision.error},
            "sandbox": report,
        }
        print(json.dumps(doc, indent=2))
    else:
        width = max(map(len, values))
        for key in sorted(values):
            if key == "socket_mode":
                shown = oct(settings.socket_mode).replace("0o", "0")
            else:
                shown = _render_value(values[key])
            print(f"{key:<{width}} = {shown}  # {loaded.sources[key]}")
        if decision.resolved is None:
            print(f"stream backend: unavailable: {decision.error}")
        else:
            print(
                f"stream backend: {decision.resolved} (requested "
                f"{decision.requested} from {decision.source}, rust available: "
                f"{_render_value(decision.rust_available)})"
            )
        _print_sandbox(report)
    if report["error"] is not None:
        print(f"cuprumd: configuration error: {report['error']}", file=sys.stderr)
        return EX_CONFIG
    return 0 if decision.resolved is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cuprumd`` script."""
    args = _parser().parse_args(argv)
    try:
        loaded = load_settings(_flags(args), config_path=args.config)
    except ConfigError as exc:
        print(f"cuprumd: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "check-config":
        decision = decide_stream_backend(
            loaded.settings.stream_backend, loaded.sources["stream_backend"]
        )
        return _check_config(loaded, decision, as_json=args.json)
    try:
        return run_daemon(
            loaded, lambda: load_settings(_flags(args), config_path=args.config)
        )
    except ConfigError as exc:
        print(f"cuprumd: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StartupError as exc:
        print(f"cuprumd: cannot start: {exc}", file=sys.stderr)
        return StartupError.exit_status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
