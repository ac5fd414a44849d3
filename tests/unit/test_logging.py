"""One log format per stream: readable at a terminal, JSON lines elsewhere,
stdlib records included."""

from __future__ import annotations

import io
import json
import logging

from cuprumd.logging import configure_logging, get_logger


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_json_lines_when_not_a_terminal_stdlib_records_too() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    get_logger("t").info("thing.happened", n=1)
    logging.getLogger("cuprumd.backend").warning("from %s", "stdlib")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "thing.happened"
    assert lines[0]["n"] == 1
    assert lines[1]["event"] == "from stdlib"
    assert lines[1]["level"] == "warning"


def test_auto_is_console_lines_at_a_terminal() -> None:
    out = Terminal()
    configure_logging("auto", "info", stream=out)
    get_logger("t").info("thing.happened", n=1)
    text = out.getvalue()
    assert "thing.happened" in text
    assert not text.lstrip().startswith("{")
    configure_logging("json", "info", stream=out)
    get_logger("t").info("forced")
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "forced"


def test_a_logger_made_before_a_reload_follows_the_new_configuration() -> None:
    """Module loggers are made at import; a reload must still reach them."""
    first, second = io.StringIO(), io.StringIO()
    log = get_logger("t")
    configure_logging("json", "warning", stream=first)
    log.info("filtered")
    log.warning("kept", n=1)
    configure_logging("json", "info", stream=second)
    log.info("now.kept")
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == [
        "kept"
    ]
    assert json.loads(second.getvalue())["event"] == "now.kept"
