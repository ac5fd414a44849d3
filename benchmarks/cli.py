"""``cuprumctl`` start-up: ``cuprumctl run -- true`` next to ``python -I -c pass``.

A command that stands in for a pipeline inside shell scripts runs often,
so its own cost must stay close to that of starting the interpreter at
all. Measured by wall time of the real console script
(``.venv/bin/cuprumctl``, as pip wrote it) against one real daemon:

- ``python -I -c pass``: the interpreter alone, the reference;
- ``cuprumctl run -- true``: the pipe mode (target: p50 ≤ twice the reference);
- ``cuprumctl ping``;
- ``cuprumctl run --capture -- true``: the full client, for comparison;
- the daemon's own round trip for the same job, sent on a connection held
  open, after the daemon idled as long as between two commands: the part
  of ``run -- true`` that is the daemon's, not the command's.

The variants take turns within every round, in a fresh random order, so
machine noise hits them alike. Children run without
``PYTHONDONTWRITEBYTECODE`` (and after warm-up runs), as an installed
command does: with its bytecode cached.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import TRUE_JOB, Conn, daemon
from benchmarks.report import table

TARGET_RATIO = 2.0
WARM_UP = 3
#: How long the daemon idles before the round trip is timed: about what it
#: idles between two commands here (a new job after an idle daemon costs
#: more than one right after another).
IDLE = 0.03
RUN = "cuprumctl run -- true"
DAEMON_RTT = "daemon round trip of `true` (after idling)"


def _script() -> list[str]:
    """The installed console script, else the module (and say so)."""
    beside = Path(sys.executable).parent / "cuprumctl"
    found = str(beside) if beside.exists() else shutil.which("cuprumctl")
    if found:
        return [found]
    print("cli: no cuprumctl script found; timing `python -m cuprumd.ctl`")
    return [sys.executable, "-m", "cuprumd.ctl"]


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - started


def _daemon_rtt(conn: Conn) -> float:
    time.sleep(IDLE)
    started = time.perf_counter()
    conn.call("run", job=TRUE_JOB)
    return time.perf_counter() - started


def _check(argv: list[str], env: dict[str, str]) -> None:
    """Each variant must work (and ``run`` must not fall back to capture)."""
    done = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if done.returncode != 0 or b"cannot take descriptors" in done.stderr:
        msg = f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        raise RuntimeError(msg)


def run_all(*, quick: bool = False) -> dict[str, Any]:
    """The table, printed and returned."""
    rounds = 40 if quick else 200
    ctl = _script()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CUPRUM_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    with daemon("auto", "auto") as (sock, _pid):
        env["CUPRUM_SOCKET"] = str(sock)
        variants = {
            "python -I -c pass": [sys.executable, "-I", "-c", "pass"],
            RUN: [*ctl, "run", "--", "true"],
            "cuprumctl ping": [*ctl, "ping"],
            "cuprumctl run --capture -- true": [*ctl, "run", "--capture", "--", "true"],
        }
        for argv in variants.values():
            _check(argv, env)
            for _ in range(WARM_UP):
                _time(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        samples[DAEMON_RTT] = []
        order = list(samples)
        conn = Conn(sock)
        try:
            for _ in range(rounds):
                random.shuffle(order)
                for name in order:
                    if name == DAEMON_RTT:
                        samples[name].append(_daemon_rtt(conn))
                    else:
                        samples[name].append(_time(variants[name], env))
        finally:
            conn.close()
    reference = statistics.median(samples["python -I -c pass"])
    rows = []
    for name, times in samples.items():
        times.sort()
        p50 = statistics.median(times)
        rows.append(
            {
                "variant": name,
                "p50_ms": p50 * 1000,
                "p90_ms": times[int(len(times) * 0.9) - 1] * 1000,
                "vs_python": p50 / reference,
            }
        )
    ratio = next(row["vs_python"] for row in rows if row["variant"] == RUN)
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(
        f"\nCLI start-up: wall time of one command ({rounds} rounds, "
        f"interleaved); `run -- true` {verdict} the target "
        f"(p50 ≤ {TARGET_RATIO:.1f}x python)\n"
    )
    print(
        table(
            rows,
            [
                ("variant", "command", ""),
                ("p50_ms", "p50 ms", ".1f"),
                ("p90_ms", "p90 ms", ".1f"),
                ("vs_python", "p50 / python -I -c pass", ".2f"),
            ],
        )
    )
    return {
        "rounds": rounds,
        "script": ctl,
        "target_ratio": TARGET_RATIO,
        "rows": rows,
    }


if __name__ == "__main__":
    run_all(quick="--quick" in sys.argv)
