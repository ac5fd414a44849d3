"""Spool files: made on first write, private, read back whole."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cuprumd.spool import Spool

JOB = "0123456789abcdef"


def test_files_are_made_only_for_streams_that_get_output(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    files = spool.create(JOB, stages=2)
    assert not (spool.root / JOB).exists()  # nothing written: nothing made
    files.stderrs[1].write(memoryview(b"warn"))
    files.stdout.write(memoryview(b"out"))
    files.stdout.write(memoryview(b"put"))
    files.close()
    assert spool.read(JOB, 2) == (b"output", [b"", b"warn"])
    mode = (spool.root / JOB / "stdout").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700


def test_leftovers_go_and_removal_is_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.create(JOB, stages=1)
    first.stdout.write(memoryview(b"old"))
    first.close()
    other = "fedcba9876543210"
    kept = spool.create(other, stages=1)
    kept.stdout.write(memoryview(b"x"))
    kept.close()
    assert spool.keep_only({JOB}) == 1  # what no journal record names
    assert spool.read(other, 1) == (b"", [b""])
    assert spool.read(JOB, 1) == (b"old", [b""])
    spool.remove(JOB)
    assert list(spool.root.iterdir()) == []


def test_names_that_are_not_job_ids_are_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="not a job id"):
        spool.create("../escape", stages=1)
