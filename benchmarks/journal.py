"""What keeping jobs costs: the journal and spool against memory only.

Two daemons side by side in one run, the same but for ``state_dir``:
submit + wait of ``true`` (p50, p99), jobs/s from 8 clients doing the same,
and the journal's and spool's growth per 10,000 jobs.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import TRUE_JOB, Conn, daemon
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


def _rate(path: Path, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = Conn(path)
        try:
            while time.monotonic() < stop:
                _submit_wait(conn)
                done[index] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


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
    count = 300 if quick else 2000
    seconds = 3.0 if quick else 10.0
    rows = []
    growth: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cuprumd-bench-state-") as tmp:
        state = Path(tmp) / "state"
        for variant, extra in (("memory", {}), ("journal", {"state_dir": str(state)})):
            with daemon("auto", "auto", **extra) as (path, _pid):
                _round_trips(path, 50)  # warm-up
                rtt = _round_trips(path, count)
                rate = _rate(path, 8, seconds)
                if variant == "journal":
                    growth = _growth(path, state, 1000 if quick else 10_000)
            rows.append(
                {
                    "variant": variant,
                    "p50_ms": statistics.median(rtt) * 1000,
                    "p99_ms": rtt[int(len(rtt) * 0.99) - 1] * 1000,
                    "jobs_per_s": rate,
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
