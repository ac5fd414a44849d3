"""What a SIGHUP may change in a running daemon, decided without touching it.

A reload reads the same sources as start-up (flags, environment, TOML) and
applies only the keys a serving daemon can take over between two jobs: the
allowlist, the limits, the sandbox paths, who may connect, and the log
level. Keys that shape what was set up once (the socket, the stream
backend, the event loop, the sandbox mode, the job user, cgroup and stage
rlimits, frame size) keep their running value, and the daemon says which
ones wait for a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from cuprumd.settings import FIELD_NAMES, Settings

__all__ = ["RELOADABLE", "ReloadPlan", "plan_reload"]

RELOADABLE = frozenset(
    {
        "programs",
        "readable_paths",
        "writable_paths",
        "allowed_uids",
        "allowed_gids",
        "job_env_deny",
        "log_level",
        "max_concurrent_jobs",
        "max_queued_jobs",
        "max_running_jobs_per_uid",
        "max_queued_jobs_per_uid",
        "max_stages",
        "max_output_bytes",
        "default_timeout",
        "max_timeout_seconds",
        "kill_grace_seconds",
        "shutdown_grace_seconds",
        "result_retention_seconds",
        "max_retained_bytes",
        "max_retained_jobs",
        "max_state_bytes",
        "journal_env",
        "max_connections",
        "max_connections_per_uid",
        "idle_timeout_seconds",
    }
)

#: Changing these rebuilds the sandbox (its rules name the programs).
SANDBOX_KEYS = frozenset({"programs", "readable_paths", "writable_paths"})


@dataclass(frozen=True)
class ReloadPlan:
    """The settings to run with from now on, and what differs."""

    settings: Settings
    applied: tuple[str, ...]
    restart_needed: tuple[str, ...]

    @property
    def rebuilds_sandbox(self) -> bool:
        return any(key in SANDBOX_KEYS for key in self.applied)


def plan_reload(running: Settings, loaded: Settings) -> ReloadPlan:
    """Take the reloadable keys of ``loaded`` over ``running``.

    The result is validated as a whole again, so a combination that is only
    invalid together (a new ``max_output_bytes`` above the running
    ``max_retained_bytes``) is refused like a bad file.

    Raises
    ------
    pydantic.ValidationError
        When the merged settings are not valid.
    """
    changed = [
        name for name in FIELD_NAMES if getattr(running, name) != getattr(loaded, name)
    ]
    applied = tuple(name for name in changed if name in RELOADABLE)
    waiting = tuple(name for name in changed if name not in RELOADABLE)
    merged = running.model_dump()
    merged.update({name: getattr(loaded, name) for name in applied})
    settings = Settings.model_validate(merged)
    return ReloadPlan(settings, applied, waiting)
