"""Daemon settings: flags, then ``CUPRUM_*`` environment, then TOML, then defaults.

Each layer is read on its own so that every effective value can be reported
with the place it came from (``check-config`` prints them, and errors name
them): a setting whose origin is a mystery is a setting nobody can fix.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from cuprumd.backend import StreamBackend, parse_stream_backend
from cuprumd.engine.launch import RLIMIT_RESOURCES
from cuprumd.engine.sandbox import SandboxMode
from cuprumd.errors import ConfigError
from cuprumd.paths import default_socket_path, default_state_dir
from cuprumd.pipeline import RunOptions

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_ENV_DENY",
    "DEFAULT_PROGRAMS",
    "LoadedSettings",
    "Settings",
    "default_socket_path",
    "find_config_path",
    "load_settings",
]

ENV_PREFIX = "CUPRUM_"
#: A job's limits as the engine defines them; the settings take them over.
_RUN = RunOptions()
CONFIG_ENV_VAR = "CUPRUM_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/cuprumd/cuprumd.toml")

#: Text tools that neither run other programs nor write files by name, so
#: the allowlist alone keeps its promise even with ``sandbox = "off"``. Not
#: here, for that reason: awk and sed (``system()``, ``w``, ``e``), sort
#: (``-o``, ``--compress-program``), uniq (an OUTPUT operand), tee, env,
#: xargs, find. An operator may add them; the sandbox then contains them.
DEFAULT_PROGRAMS: tuple[str, ...] = (
    "base64", "cat", "comm", "cut", "echo", "false", "fold", "grep", "head",
    "md5sum", "nl", "od", "paste", "printf", "rev", "seq", "sha256sum",
    "sleep", "tac", "tail", "tr", "true", "wc", "yes",
)  # fmt: skip

#: Environment names a job may not set (``fnmatch`` patterns, matched
#: case-sensitively): glibc's secure-mode list, which the loader itself
#: distrusts for setuid programs, plus the start-up hooks of shells and
#: interpreters. Any of them lets a job's client run its own code inside an
#: allowlisted program.
DEFAULT_ENV_DENY: tuple[str, ...] = (
    "LD_*", "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES",
    "LOCALDOMAIN", "LOCPATH", "MALLOC_*", "NIS_PATH", "NLSPATH",
    "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
    "BASH_ENV", "ENV", "BASH_FUNC_*", "IFS", "SHELLOPTS", "BASHOPTS", "PS4",
    "CDPATH", "GLOBIGNORE", "PYTHON*", "PERL5*", "PERLLIB", "PERL_*",
    "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "LUA_INIT*", "LUA_PATH*",
    "LUA_CPATH*", "TCLLIBPATH", "GIT_*", "EDITOR", "VISUAL", "PAGER",
    "AWKPATH", "AWKLIBPATH",
)  # fmt: skip


GiB = 1 << 30


def _split_list(value: object) -> object:
    """Accept ``"a, b"`` and JSON lists as well as lists: env vars are flat."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed: object = json.loads(text)
            except json.JSONDecodeError as exc:
                msg = f"not a JSON list: {exc}"
                raise ValueError(msg) from None
            return parsed
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can set; see ``config/cuprumd.toml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    stream_backend: StreamBackend = StreamBackend.AUTO
    socket_path: Path = Field(default_factory=default_socket_path)
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    socket_group: str | None = None
    allowed_uids: Annotated[list[int] | None, NoDecode] = None
    allowed_gids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    programs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROGRAMS), min_length=1
    )
    max_concurrent_jobs: int = Field(default=16, ge=1, le=4096)
    max_queued_jobs: int = Field(default=256, ge=0, le=1_000_000)
    max_stages: int = Field(default=16, ge=1, le=256)
    max_request_bytes: int = Field(default=8 << 20, ge=1024, le=GiB)
    max_output_bytes: int = Field(default=_RUN.max_output_bytes, ge=0, le=GiB)
    default_timeout: float = Field(default=_RUN.default_timeout, gt=0)
    max_timeout_seconds: float = Field(default=86400.0, gt=0, allow_inf_nan=False)
    kill_grace_seconds: float = Field(default=_RUN.kill_grace_seconds, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    result_retention_seconds: float = Field(default=600.0, ge=0)
    max_retained_bytes: int = Field(default=256 << 20, ge=0)
    max_retained_jobs: int = Field(default=10_000, ge=0, le=10_000_000)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_connections_per_uid: int = Field(default=128, ge=1, le=1_000_000)
    idle_timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    max_running_jobs_per_uid: int | None = Field(default=None, ge=1)
    max_queued_jobs_per_uid: int | None = Field(default=None, ge=0)
    pump_buffer_size: int = Field(default=_RUN.pump_buffer_size, ge=4096, le=GiB)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: Path | None = Field(default_factory=default_state_dir)
    journal_env: bool = False
    max_state_bytes: int = Field(default=1 << 30, ge=0)
    sandbox: SandboxMode = "strict"
    job_user: str | None = None
    readable_paths: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    writable_paths: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    job_env_deny: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ENV_DENY)
    )
    job_rlimits: dict[str, int] = Field(default_factory=dict)
    job_memory_max: int | None = Field(default=None, ge=1 << 20)
    job_pids_max: int | None = Field(default=None, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Take values only as given: ``load_settings`` layers the sources."""
        return (init_settings,)

    @field_validator("stream_backend", mode="before")
    @classmethod
    def _parse_backend(cls, value: object) -> object:
        return parse_stream_backend(value) if isinstance(value, str) else value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                msg = f"expected an octal mode such as '0660', got {value!r}"
                raise ValueError(msg) from None
        return value

    @field_validator(
        "allowed_uids",
        "allowed_gids",
        "programs",
        "readable_paths",
        "writable_paths",
        "job_env_deny",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: object) -> object:
        if value == "*":
            return ["*"]
        return _split_list(value)

    @field_validator("readable_paths", "writable_paths")
    @classmethod
    def _absolute(cls, paths: list[Path]) -> list[Path]:
        for path in paths:
            if not path.is_absolute():
                msg = f"expected absolute paths, got {str(path)!r}"
                raise ValueError(msg)
        return paths

    @field_validator("job_rlimits", mode="before")
    @classmethod
    def _parse_rlimits(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                msg = f"not a JSON object: {exc}"
                raise ValueError(msg) from None
        return value

    @field_validator("job_rlimits")
    @classmethod
    def _check_rlimits(cls, limits: dict[str, int]) -> dict[str, int]:
        for name, limit in limits.items():
            if name not in RLIMIT_RESOURCES:
                accepted = ", ".join(RLIMIT_RESOURCES)
                msg = f"unknown rlimit {name!r}; accepted: {accepted}"
                raise ValueError(msg)
            if limit < 0:
                msg = f"rlimit {name} must be >= 0, got {limit}"
                raise ValueError(msg)
        return limits

    @model_validator(mode="after")
    def _retention_fits_one_result(self) -> Settings:
        if 0 < self.max_retained_bytes < self.max_output_bytes:
            msg = (
                f"max_retained_bytes ({self.max_retained_bytes}) is below "
                f"max_output_bytes ({self.max_output_bytes}): a submitted job "
                "reserves max_output_bytes, so none could be admitted; raise "
                "it, or set it to 0 to refuse submit on purpose"
            )
            raise ValueError(msg)
        return self

    @property
    def any_program(self) -> bool:
        """Whether the allowlist was opened to every program with ``"*"``."""
        return "*" in self.programs


FIELD_NAMES: frozenset[str] = frozenset(Settings.model_fields)


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings plus where each value came from.

    ``sources`` maps every field to ``flag``, ``env``, ``config:<path>`` or
    ``default``.
    """

    settings: Settings
    sources: Mapping[str, str]
    config_path: Path | None


def find_config_path(
    flag: Path | None, environ: Mapping[str, str]
) -> tuple[Path | None, bool]:
    """Return the config file to read and whether it was named explicitly.

    An explicitly named file that is missing is an error (the operator
    meant something); the system default is optional.
    """
    if flag is not None:
        return flag, True
    named = environ.get(CONFIG_ENV_VAR, "").strip()
    if named:
        return Path(named), True
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH, False
    return None, False


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        msg = f"config file {path} does not exist (named by {source})"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"config file {path} cannot be read: {exc.strerror}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from None
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        msg = (
            f"unknown key {unknown[0]!r} in config:{path}; accepted keys: "
            f"{', '.join(sorted(FIELD_NAMES))}"
        )
        raise ConfigError(msg)
    return data


def _read_env() -> dict[str, Any]:
    try:
        return dict(EnvSettingsSource(Settings, env_prefix=ENV_PREFIX)())
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        source = sources.get(key, "default")
        where = f"{ENV_PREFIX}{key.upper()}" if source == "env" else source
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {message} (value {err['input']!r} from {where})")
    return "invalid settings: " + "; ".join(lines)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
) -> LoadedSettings:
    """Read every layer, merge by precedence and validate once.

    Raises
    ------
    ConfigError
        For a missing named file, bad TOML, an unknown key or an invalid
        value; the message names the key, where it came from and what is
        accepted.
    """
    path, explicit = find_config_path(config_path, os.environ)
    given_flags = {k: v for k, v in (flags or {}).items() if v is not None}
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        named_by = "--config" if config_path is not None else CONFIG_ENV_VAR
        layers.append(
            (f"config:{path}", _read_toml(path, named_by if explicit else "default"))
        )
    layers.append(("env", _read_env()))
    layers.append(("flag", given_flags))

    merged: dict[str, Any] = {}
    sources = dict.fromkeys(FIELD_NAMES, "default")
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = source
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    return LoadedSettings(settings=settings, sources=sources, config_path=path)
