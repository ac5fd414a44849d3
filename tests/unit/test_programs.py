"""The programs allowlist: pure rules first, then the real PATH probe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cuprumd.errors import ProgramNotAllowed
from cuprumd.programs import build_allowlist, load_allowlist

FAKE_PATH = {"sort": "/usr/bin/sort", "cat": "/bin/cat", "awk": "/usr/bin/awk"}
EXECUTABLE = {"/opt/tools/frob"}


def allowlist(*entries: str):
    return build_allowlist(entries, FAKE_PATH.get, EXECUTABLE.__contains__)


def test_names_resolve_to_their_start_up_paths() -> None:
    allowed = allowlist("sort", "cat")
    assert allowed.resolve("sort") == "/usr/bin/sort"
    assert allowed.resolve_all(["cat", "sort"]) == ("/bin/cat", "/usr/bin/sort")


def test_a_name_outside_the_list_is_refused_by_name() -> None:
    with pytest.raises(ProgramNotAllowed, match="'awk'"):
        allowlist("sort").resolve("awk")


def test_absolute_path_only_when_that_path_is_listed() -> None:
    allowed = allowlist("sort", "/opt/tools/frob")
    assert allowed.resolve("/opt/tools/frob") == "/opt/tools/frob"
    with pytest.raises(ProgramNotAllowed, match="/usr/bin/sort"):
        allowed.resolve("/usr/bin/sort")  # listed by name, not by path
    with pytest.raises(ProgramNotAllowed):
        allowed.resolve("frob")  # a path entry does not allow the bare name


def test_relative_paths_are_refused_even_with_star() -> None:
    for allowed in (allowlist("sort"), allowlist("*")):
        with pytest.raises(ProgramNotAllowed, match="relative"):
            allowed.resolve("./sort")


def test_missing_entries_are_reported_and_refused_with_a_reason() -> None:
    allowed = allowlist("sort", "nosuch", "/opt/none", "rel/path", "")
    assert allowed.missing == ("nosuch", "/opt/none", "rel/path", "")
    with pytest.raises(ProgramNotAllowed, match="not found on PATH"):
        allowed.resolve("nosuch")


def test_star_allows_any_program_found_and_any_absolute_path() -> None:
    allowed = allowlist("*")
    assert allowed.any_program
    assert allowed.resolve("awk") == "/usr/bin/awk"
    assert allowed.resolve("/anything/at/all") == "/anything/at/all"
    with pytest.raises(ProgramNotAllowed, match="not found"):
        allowed.resolve("nosuch")


def test_one_refused_stage_refuses_the_job() -> None:
    with pytest.raises(ProgramNotAllowed, match="'rm'"):
        allowlist("sort", "cat").resolve_all(["cat", "rm", "sort"])


def test_load_allowlist_probes_the_real_path(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plain = tmp_path / "notexec"
    plain.write_text("")
    allowed = load_allowlist(
        ["mytool", "notexec", str(tool), "ghost"],
        search_path=f"relative-dir{os.pathsep}{tmp_path}",
    )
    assert allowed.resolve("mytool") == str(tool)
    assert allowed.resolve(str(tool)) == str(tool)
    assert set(allowed.missing) == {"notexec", "ghost"}


def test_relative_path_entries_are_never_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    trap = tmp_path / "bin" / "trap"
    trap.write_text("#!/bin/sh\n")
    trap.chmod(0o755)
    allowed = load_allowlist(["trap"], search_path="bin")
    assert allowed.missing == ("trap",)
