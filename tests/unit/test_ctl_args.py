"""cuprumctl's quick parser reads ``run`` and ``ping`` exactly as argparse
does, and leaves everything else (help, abbreviations, bad values, other
commands) to argparse."""

from __future__ import annotations

import pytest

from cuprumd.ctl import _parse, _parser, _quick_args


@pytest.mark.parametrize(
    "words",
    [
        ["ping"],
        ["ping", "--json"],
        ["ping", "--socket", "/s.sock", "--daemon-user", "cuprumd"],
        ["--socket", "/g.sock", "ping"],
        ["--socket", "/g.sock", "run", "--", "true"],
        ["run", "--", "sort", "|", "uniq", "-c"],
        ["run", "sort", "-r", "--", "x"],
        ["run", "-n", "--fail-fast", "--capture", "--json", "--", "cat"],
        ["run", "--no-stdin", "cat", "-n"],
        ["run", "--timeout", "2.5", "--env", "A=1", "--env=B=2", "--", "env"],
        ["run", "--timeout=7", "--cwd", "/srv", "--separator", "::", "a", "::", "b"],
        ["run", "--socket=/s.sock", "--daemon-user=0", "--", "true"],
        ["run", "--cwd=", "--", "true"],
        ["run", "--", "--"],
    ],
)
def test_quick_parse_is_argparse(words: list[str]) -> None:
    quick = _quick_args(words)
    assert quick is not None
    assert vars(quick) == vars(_parser().parse_args(words))


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["-h"],
        ["run", "-h"],
        ["run"],
        ["run", "-n"],
        ["run", "--tim", "5", "--", "true"],  # an abbreviation
        ["run", "--timeout", "soon", "--", "true"],
        ["run", "--timeout", "-1", "--", "true"],
        ["run", "--timeout"],
        ["run", "--capture=yes", "--", "true"],
        ["run", "-nx", "--", "true"],
        ["run", "-", "x"],
        ["ping", "extra"],
        ["ping", "--capture"],
        ["submit", "--", "true"],
        ["status", "0123456789abcdef"],
        ["--socket", "--json", "ping"],
    ],
)
def test_anything_unusual_is_left_to_argparse(words: list[str]) -> None:
    assert _quick_args(words) is None


def test_both_parsers_take_the_global_socket() -> None:
    assert _parse(["--socket", "/g.sock", "run", "--", "true"]).socket == "/g.sock"
    assert _parse(["--socket", "/g.sock", "status", "x"]).socket == "/g.sock"
    assert _parse(["--socket", "/g", "ping", "--socket", "/l"]).socket == "/l"


def test_argparse_still_explains_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(["run", "--timeout", "soon", "--", "true"])
    assert exited.value.code == 2
    assert "invalid float value: 'soon'" in capsys.readouterr().err
