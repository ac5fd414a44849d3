"""The per-user pipe budget: 64 concurrent 3-stage jobs, root against not.

An unprivileged daemon's pipes are charged to its user, and over
``fs.pipe-user-pages-soft`` the kernel refuses to grow them: 64 running jobs
of three stages then run on the 64 KiB default pipes where root's run on
1 MiB. This group measures the same load three ways, interleaved within
each repetition: a root daemon, an unprivileged daemon on this machine's
budget, and (opt-in, ``--pipe-budget PAGES``) an unprivileged daemon with
the soft limit raised for the run. The last one says whether the budget or
the pump is what holds the unprivileged daemon back.

Raising the limit changes a machine-wide setting, so it is never done
unasked, and the old value is written back as soon as that daemon stops.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.daemon import daemon, peak_rss_under_load
from benchmarks.report import table
from cuprumd.backend import is_rust_available

SOFT_LIMIT = Path("/proc/sys/fs/pipe-user-pages-soft")
JOBS = 64


@contextlib.contextmanager
def raised_soft_limit(pages: int) -> Iterator[int]:
    """Set ``fs.pipe-user-pages-soft`` to ``pages``; yield the old value,
    which is restored however the body ends."""
    old = int(SOFT_LIMIT.read_text())
    try:
        SOFT_LIMIT.write_text(f"{pages}\n")
    except OSError as exc:
        msg = f"cannot set {SOFT_LIMIT} to {pages}: {exc.strerror}"
        raise RuntimeError(msg) from exc
    try:
        yield old
    finally:
        SOFT_LIMIT.write_text(f"{old}\n")


def _one(backend: str, user: int | None, size: int) -> float:
    with daemon(backend, "auto", user=user, max_output_bytes=1 << 20) as (path, pid):
        result = peak_rss_under_load(path, pid, JOBS, size)
    if result["succeeded"] != JOBS:
        msg = f"{backend}: {result['succeeded']} of {JOBS} jobs succeeded"
        raise RuntimeError(msg)
    rate: float = result["mib_per_s"]
    return rate


def run_all(
    *, uid: int, quick: bool, reps: int, raised_pages: int | None
) -> list[dict[str, Any]]:
    """Aggregate MiB/s per backend and variant, medians of ``reps``."""
    size = (64 << 20) if quick else (256 << 20)
    backends = ["python"] + (["rust"] if is_rust_available() else [])
    variants: list[tuple[str, int | None, int | None]] = [
        ("root", None, None),
        (f"uid {uid}", uid, None),
    ]
    if raised_pages is not None:
        raised = f"uid {uid}, soft limit {raised_pages} pages"
        variants.append((raised, uid, raised_pages))
    old = int(SOFT_LIMIT.read_text())
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for backend in backends:
            for name, user, pages in variants:
                with (
                    raised_soft_limit(pages)
                    if pages is not None
                    else contextlib.nullcontext(old)
                ):
                    rate = _one(backend, user, size)
                samples.setdefault((backend, name), []).append(rate)
    rows = []
    for backend in backends:
        root = statistics.median(samples[(backend, "root")])
        for name, _user, _pages in variants:
            rate = statistics.median(samples[(backend, name)])
            rows.append(
                {
                    "backend": backend,
                    "daemon": name,
                    "mib_per_s": rate,
                    "vs_root": rate / root,
                    "samples": samples[(backend, name)],
                }
            )
    print(
        f"\nThe pipe budget: {JOBS} concurrent `head -c {size >> 20}M /dev/zero |"
        f" cat | wc -c` jobs, aggregate MiB/s, median of {reps}"
        f" (this machine's soft limit: {old} pages)\n"
    )
    print(
        table(
            rows,
            [
                ("backend", "pump", ""),
                ("daemon", "daemon runs as", ""),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_root", "vs root (≥ 0.8)", ".2f"),
            ],
        )
    )
    return rows


def can_run(uid: int | None) -> str | None:
    """Why this group cannot run here, or ``None``."""
    if os.getuid() != 0:
        return "it needs root (it starts daemons as root and as another uid)"
    if uid is None:
        return "it needs --unprivileged-uid"
    return None
