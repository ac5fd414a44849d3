"""Settings layers, precedence, sources and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cuprumd.backend import StreamBackend
from cuprumd.errors import ConfigError
from cuprumd.settings import (
    DEFAULT_PROGRAMS,
    Settings,
    default_socket_path,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("CUPRUM_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cuprumd.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    loaded = load_settings(config_path=write(tmp_path, ""))
    assert loaded.settings.stream_backend is StreamBackend.AUTO
    assert loaded.sources["stream_backend"] == "default"
    assert loaded.settings.socket_mode == 0o660
    assert tuple(loaded.settings.programs) == DEFAULT_PROGRAMS


def test_toml_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'stream_backend = "python"\n')
    loaded = load_settings(config_path=path)
    assert loaded.settings.stream_backend is StreamBackend.PYTHON
    assert loaded.sources["stream_backend"] == f"config:{path}"
    assert loaded.sources["socket_path"] == "default"


def test_env_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'stream_backend = "rust"\n')
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "python")
    loaded = load_settings(config_path=path)
    assert loaded.settings.stream_backend is StreamBackend.PYTHON
    assert loaded.sources["stream_backend"] == "env"


def test_flag_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "python")
    loaded = load_settings(
        {"stream_backend": "rust", "log_level": None},
        config_path=write(tmp_path, ""),
    )
    assert loaded.settings.stream_backend is StreamBackend.RUST
    assert loaded.sources["stream_backend"] == "flag"
    assert loaded.sources["log_level"] == "default"


def test_config_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "max_stages = 3\n")
    monkeypatch.setenv("CUPRUM_CONFIG", str(path))
    loaded = load_settings()
    assert loaded.settings.max_stages == 3
    assert loaded.config_path == path


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'sokcet_path = "/tmp/x.sock"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path)
    message = str(info.value)
    assert "sokcet_path" in message
    assert f"config:{path}" in message
    assert "socket_path" in message  # the accepted keys are listed


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist \(named by --config\)"):
        load_settings(config_path=tmp_path / "absent.toml")


def test_missing_config_named_by_env_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="named by CUPRUM_CONFIG"):
        load_settings()


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_path=write(tmp_path, "stream_backend = \n"))


def test_unknown_backend_from_env_names_key_source_and_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "turbo")
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=write(tmp_path, ""))
    message = str(info.value)
    assert "stream_backend" in message
    assert "CUPRUM_STREAM_BACKEND" in message
    assert "'auto', 'rust', 'python'" in message


def test_bad_value_in_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_format = "xml"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path)
    assert f"config:{path}" in str(info.value)
    assert "'json' or 'console'" in str(info.value)


def test_lists_from_env_accept_commas_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPRUM_ALLOWED_UIDS", "1000, 1001")
    monkeypatch.setenv("CUPRUM_PROGRAMS", '["cat", "sort"]')
    settings = load_settings(config_path=write(tmp_path, "")).settings
    assert settings.allowed_uids == [1000, 1001]
    assert settings.programs == ["cat", "sort"]
    assert not settings.any_program


def test_star_opens_the_allowlist(tmp_path: Path) -> None:
    settings = load_settings(config_path=write(tmp_path, 'programs = "*"\n')).settings
    assert settings.any_program


def test_socket_mode_accepts_octal_strings(tmp_path: Path) -> None:
    path = write(tmp_path, 'socket_mode = "0600"\n')
    assert load_settings(config_path=path).settings.socket_mode == 0o600
    with pytest.raises(ConfigError, match="octal"):
        load_settings(config_path=write(tmp_path, 'socket_mode = "rw"\n'))


def test_default_socket_path_resolution() -> None:
    assert default_socket_path({"RUNTIME_DIRECTORY": "/run/cuprumd:/run/x"}) == Path(
        "/run/cuprumd/cuprumd.sock"
    )
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path(
        "/run/user/7/cuprumd/cuprumd.sock"
    )
    fallback = default_socket_path({})
    assert re.fullmatch(r"/tmp/cuprumd-\d+/cuprumd\.sock", str(fallback))


def test_example_config_documents_every_key_and_loads() -> None:
    example = REPO / "config" / "cuprumd.toml"
    text = example.read_text()
    for key in Settings.model_fields:
        assert re.search(rf"^#? ?{key} =", text, re.MULTILINE), key
    load_settings(config_path=example)
