"""``make bench``: run the measured comparisons and print the tables.

Results go to ``benchmarks/results/latest.json`` and an SVG plot of the
throughput to ``docs/performance-throughput.svg``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks import throughput
from benchmarks.report import svg_bars, table

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 reps")
    parser.add_argument(
        "--only",
        choices=["throughput", "daemon", "load"],
        default=None,
        help="one group",
    )
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        },
    }
    if args.only in (None, "throughput"):
        big = (64 << 20) if args.quick else throughput.GiB
        sizes = {
            "1 GiB" if not args.quick else "64 MiB": big,
            "1 MiB": 1 << 20,
            "1 KiB": 1024,
        }
        rows = throughput.measure(sizes, reps)
        results["throughput"] = rows
        print(
            "\nThroughput: head -c N /dev/zero | cat | wc -c (median of",
            reps,
            "runs)\n",
        )
        print(
            table(
                rows,
                [
                    ("size", "size", ""),
                    ("variant", "variant", ""),
                    ("median_s", "median s", ".4f"),
                    ("mib_per_s", "MiB/s", ".0f"),
                    ("vs_shell", "ratio to shell", ".2f"),
                ],
            )
        )
        biggest = [r for r in rows if r["bytes"] == big]
        svg_bars(
            biggest,
            "vs_shell",
            f"{biggest[0]['size']} through two pumps: throughput relative to the shell",
            ROOT / "docs" / "performance-throughput.svg",
        )
    if args.only in (None, "daemon"):
        from benchmarks import daemon

        results["daemon"] = daemon.run_all(quick=args.quick)
    if args.only in (None, "load"):
        from benchmarks import load

        results["load"] = load.run_all(quick=args.quick)
    out = ROOT / "benchmarks" / "results" / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
