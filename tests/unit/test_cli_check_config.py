"""``cuprumd check-config``: effective settings, sources, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuprumd import backend
from cuprumd.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CUPRUM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def rust_toml(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('stream_backend = "rust"\n')
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    status = main(["check-config", "--json", *args])
    return status, json.loads(capsys.readouterr().out)


def test_env_overrides_toml(
    rust_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_STREAM_BACKEND", "python")
    status, doc = run_json(capsys, "--config", str(rust_toml))
    assert status == 0
    assert doc["settings"]["stream_backend"] == {"value": "python", "source": "env"}
    assert doc["stream_backend"]["resolved"] == "python"
    assert doc["stream_backend"]["source"] == "env"


def test_toml_alone_reports_rust_from_the_file(
    rust_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: True)
    status, doc = run_json(capsys, "--config", str(rust_toml))
    assert status == 0
    assert doc["settings"]["stream_backend"]["source"] == f"config:{rust_toml}"
    assert doc["stream_backend"]["resolved"] == "rust"


def test_forced_rust_without_extension_fails(
    rust_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(backend, "_probe_native", lambda: False)
    assert main(["check-config", "--config", str(rust_toml)]) == 1
    assert "CUPRUM_STREAM_BACKEND" in capsys.readouterr().out


def test_text_output_names_each_source(
    rust_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_MAX_STAGES", "4")
    monkeypatch.setattr(backend, "_probe_native", lambda: True)
    assert main(["check-config", "--config", str(rust_toml)]) == 0
    lines = {
        line.split("=", 1)[0].strip(): line.split("=", 1)[1].strip()
        for line in capsys.readouterr().out.splitlines()
        if " = " in line
    }
    assert lines["stream_backend"] == f'"rust"  # config:{rust_toml}'
    assert lines["max_stages"] == "4  # env"
    assert lines["socket_mode"] == "0660  # default"


def test_turbo_exits_78_through_the_real_entry_point(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUPRUM_")}
    env["CUPRUM_STREAM_BACKEND"] = "turbo"
    proc = subprocess.run(
        [sys.executable, "-m", "cuprumd.cli", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 78
    assert "CUPRUM_STREAM_BACKEND" in proc.stderr
    assert "'auto', 'rust', 'python'" in proc.stderr
