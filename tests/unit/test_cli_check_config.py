"""``cuprumd check-config``: effective settings, sources, exit statuses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cuprumd import backend
from cuprumd.cli import main
from cuprumd.engine import sandbox
from cuprumd.engine.sandbox import rulesets
from cuprumd.errors import EX_CONFIG


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


def test_json_reports_the_sandbox_as_the_daemon_builds_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("CUPRUM_PROGRAMS", "cat")
    monkeypatch.setenv("CUPRUM_WRITABLE_PATHS", str(tmp_path))
    status, doc = run_json(capsys)
    assert status == 0
    report = doc["sandbox"]
    assert report["mode"] == "strict"
    assert report["landlock_abi"] == sandbox.landlock_abi()
    assert report["required_abi"] == 6
    assert report["error"] is None
    assert report["warnings"] == []
    policy = report["policy"]
    cat = os.path.realpath(shutil.which("cat") or "cat")
    assert policy["executables"][0] == cat
    assert len(policy["executables"]) == 2
    assert "/usr" in policy["readable"]
    assert policy["writable"] == [str(tmp_path)]
    assert policy["tcp"] == "denied"


def test_text_shows_mode_abi_and_paths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_SANDBOX", "exec")
    monkeypatch.setenv("CUPRUM_PROGRAMS", "cat,sed")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out.splitlines()
    abi = sandbox.landlock_abi()
    assert f"sandbox: exec (Landlock ABI {abi} found, 6 needed)" in out
    assert "sandbox reads: unrestricted" in out
    assert "sandbox writable: (none)" in out
    executables = next(line for line in out if line.startswith("sandbox executables:"))
    assert os.path.realpath(shutil.which("sed") or "sed") in executables
    assert not [line for line in out if line.startswith("warning:")]
    assert out[0].startswith("allowed_gids")


def test_sandbox_off_warns_about_each_risky_program(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_SANDBOX", "off")
    monkeypatch.setenv("CUPRUM_PROGRAMS", "cat,sed,sort,/usr/bin/env")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    for name in ("'sed'", "'sort'", "'/usr/bin/env'"):
        assert any(name in line for line in warnings), name
    assert "sandbox: off" in out
    assert "sandbox executables" not in out

    status, doc = run_json(capsys)
    assert status == 0
    assert len(doc["sandbox"]["warnings"]) == 3
    assert doc["sandbox"]["policy"] == {"mode": "off", "enforced": False}


def test_state_dir_the_sandbox_would_expose_exits_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_STATE_DIR", "/etc/cuprumd/state")
    assert main(["check-config"]) == EX_CONFIG
    captured = capsys.readouterr()
    assert "configuration error: state_dir: /etc/cuprumd/state" in captured.err
    assert "sandbox: strict" in captured.out

    status, doc = run_json(capsys)
    assert status == EX_CONFIG
    assert doc["sandbox"]["error"].startswith("state_dir: ")
    assert doc["sandbox"]["policy"] is None


def test_missing_writable_path_exits_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("CUPRUM_WRITABLE_PATHS", str(tmp_path / "gone"))
    assert main(["check-config"]) == EX_CONFIG
    assert "writable_paths: " in capsys.readouterr().err


def fake_landlock_abi(monkeypatch: pytest.MonkeyPatch, abi: int) -> None:
    """Fake the kernel's ABI where the report reads it (``sandbox.landlock_abi``
    in cli.py) and where the sandbox is built (``rulesets``)."""
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: abi)
    monkeypatch.setattr(rulesets, "landlock_abi", lambda: abi)


@pytest.mark.parametrize("mode", ["strict", "exec"])
def test_kernel_without_landlock_exits_78_naming_the_way_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    monkeypatch.setenv("CUPRUM_SANDBOX", mode)
    fake_landlock_abi(monkeypatch, 4)
    assert main(["check-config"]) == EX_CONFIG
    captured = capsys.readouterr()
    assert f"sandbox: {mode} (Landlock ABI 4 found, 6 needed)" in captured.out
    assert "offers Landlock ABI 4" in captured.err
    assert 'sandbox = "off"' in captured.err


def test_kernel_without_landlock_is_fine_when_the_sandbox_is_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUPRUM_SANDBOX", "off")
    fake_landlock_abi(monkeypatch, 0)
    status, doc = run_json(capsys)
    assert status == 0
    assert doc["sandbox"]["landlock_abi"] == 0
    assert doc["sandbox"]["error"] is None
