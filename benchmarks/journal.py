"""What keeping jobs costs: the journal and spool against memory only.

Two daemons side by side in one run, the same but for ``state_dir``,
measured in alternating slices:
submit + wait of ``true`` (p50, p99), jobs/s from 8 clients doing the same,
and the journal's and spool's growth per 10,000 jobs.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import TRUE_JOB, Conn, daemon, jobs_per_second
from benchmarks.report import table

__all__ = ["run_all"]


def _submit_wait(conn: Conn) -> None:
    job_id = conn.call("submit", job=TRUE_JOB)["result"]["job_id"]
    conn.call("wait", job_id=job_id)


def _round_trips(path: Path, count: int) -> list[float]:
    conn = Conn(path)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            _submit_wait(conn)
            times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return sorted(times)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _growth(path: Path, state: Path, jobs: int) -> dict[str, float]:
    """Bytes the journal (with its WAL) and the spool grow per 10,000 jobs."""
    journal = [state / "journal.sqlite3", state / "journal.sqlite3-wal"]
    before = sum(_size(p) for p in journal if p.exists()), _size(state / "spool")
    conn = Conn(path)
    try:
        for _ in range(jobs):
            _submit_wait(conn)
    finally:
        conn.close()
    after = sum(_size(p) for p in journal if p.exists()), _size(state / "spool")
    scale = 10_000 / jobs
    return {
        "journal_mib_per_10k": (after[0] - before[0]) * scale / (1 << 20),
        "spool_mib_per_10k": (after[1] - before[1]) * scale / (1 << 20),
        "spool_dirs_per_10k": scale * jobs,
    }


def run_all(*, quick: bool = False) -> dict[str, Any]:
    """Both daemons run at once and are measured in alternating slices
    (round trips, then 8-client windows), so a change in the machine's
    load between two halves of the run cannot pass for the journal's cost."""
    rounds = 6 if quick else 20
    count = 50 if quick else 100
    seconds = 0.5 if quick else 1.0
    variants = ("memory", "journal")
    rtt: dict[str, list[float]] = {v: [] for v in variants}
    jobs: dict[str, float] = dict.fromkeys(variants, 0.0)
    growth: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="cuprumd-bench-state-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        state = Path(tmp) / "state"
        extras: dict[str, dict[str, Any]] = {
            "memory": {},
            "journal": {"state_dir": str(state)},
        }
        paths = {
            v: stack.enter_context(daemon("auto", "auto", **extras[v]))[0]
            for v in variants
        }
        for path in paths.values():
            _round_trips(path, 50)  # warm-up
        for index in range(rounds):
            order = variants if index % 2 == 0 else variants[::-1]
            for variant in order:
                rtt[variant] += _round_trips(paths[variant], count)
            for variant in order:
                jobs[variant] += (
                    jobs_per_second(paths[variant], 8, seconds, _submit_wait) * seconds
                )
        growth = _growth(paths["journal"], state, 1000 if quick else 10_000)
    rows = []
    for variant in variants:
        times = sorted(rtt[variant])
        rows.append(
            {
                "variant": variant,
                "p50_ms": statistics.median(times) * 1000,
                "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
                "jobs_per_s": jobs[variant] / (rounds * seconds),
            }
        )
    memory, journal = rows
    ratios = {
        "p50_ratio": journal["p50_ms"] / memory["p50_ms"],
        "rate_ratio": journal["jobs_per_s"] / memory["jobs_per_s"],
    }
    print("\nKeeping jobs: submit + wait of `true`, memory only vs state_dir\n")
    print(
        table(
            rows,
            [
                ("variant", "results kept in", ""),
                ("p50_ms", "p50 ms", ".3f"),
                ("p99_ms", "p99 ms", ".3f"),
                ("jobs_per_s", "jobs/s (8 clients)", ".0f"),
            ],
        )
    )
    print(
        table(
            [{**ratios, **growth}],
            [
                ("p50_ratio", "p50 journal / memory (≤ 1.3)", ".2f"),
                ("rate_ratio", "jobs/s journal / memory (≥ 0.8)", ".2f"),
                ("journal_mib_per_10k", "journal MiB / 10k jobs", ".1f"),
                ("spool_mib_per_10k", "spool MiB / 10k jobs", ".1f"),
            ],
        )
    )
    return {"rows": rows, **ratios, **growth}
