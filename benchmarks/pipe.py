"""``cuprumctl`` as a pipe, and the pumps against pipes with no pump at all.

Side by side in one run, median of ``reps``:

- the shell's ``head -c N /dev/zero | cat | cat | wc -c``;
- the same with the middle through the daemon:
  ``head -c N /dev/zero | cuprumctl run -- cat '|' cat | wc -c`` (stdin and
  stdout passed, one pump between the two ``cat``), per backend
  (target: ≥ 0.90 of the shell);
- the physical limit of a pumped pipeline: ``head | cat | cat | wc``
  started by us, connected directly by pipes of the size the daemon gives
  its inter-stage pipes, no pump; and the same job run by the daemon,
  every stage boundary pumped (target: each pump ≥ 0.95 of direct).
"""

from __future__ import annotations

import fcntl
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import Conn, daemon
from benchmarks.report import table

GiB = 1 << 30


def _median(run: Any, reps: int) -> float:
    return statistics.median(run() for _ in range(reps))


def _timed_shell(script: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-c", script], check=True, env=env, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def _direct(size: int, capacity: int) -> float:
    """head | cat | cat | wc on pipes of ``capacity``, no pump."""
    argvs = [["head", "-c", str(size), "/dev/zero"], ["cat"], ["cat"], ["wc", "-c"]]
    started = time.perf_counter()
    procs = []
    previous = None
    for i, argv in enumerate(argvs):
        last = i == len(argvs) - 1
        reader, writer = (None, None) if last else os.pipe()
        if writer is not None:
            try:
                fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, capacity)
            except OSError:
                pass
        procs.append(
            subprocess.Popen(
                argv,
                stdin=previous,
                stdout=subprocess.DEVNULL if last else writer,
            )
        )
        if previous is not None:
            os.close(previous)
        if writer is not None:
            os.close(writer)
        previous = reader
    for proc in procs:
        proc.wait()
    return time.perf_counter() - started


def _pumped(path: Path, size: int) -> float:
    conn = Conn(path)
    try:
        job = {
            "stages": [
                {"argv": ["head", "-c", str(size), "/dev/zero"]},
                {"argv": ["cat"]},
                {"argv": ["cat"]},
                {"argv": ["wc", "-c"]},
            ]
        }
        started = time.perf_counter()
        reply = conn.call("run", job=job)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    assert reply["result"]["stdout"].strip() == str(size), reply
    return elapsed


def run_all(*, quick: bool = False, reps: int = 5) -> dict[str, Any]:
    size = (128 << 20) if quick else GiB
    reps = 2 if quick else reps
    ctl = str(Path(sys.executable).parent / "cuprumctl")
    shell = _median(
        lambda: _timed_shell(f"head -c {size} /dev/zero | cat | cat | wc -c"), reps
    )
    rows: list[dict[str, Any]] = [
        {"variant": "shell: head | cat | cat | wc", "seconds": shell}
    ]
    limits: list[dict[str, Any]] = []
    direct = _median(lambda: _direct(size, 1 << 20), reps)
    limits.append({"variant": "direct pipes (1 MiB), no pump", "seconds": direct})
    for backend in ("python", "rust"):
        with daemon(backend, "auto") as (path, _pid):
            env = {**os.environ, "CUPRUM_SOCKET": str(path)}
            script = f"head -c {size} /dev/zero | {ctl} run -- cat '|' cat | wc -c"
            piped = _median(lambda s=script, e=env: _timed_shell(s, e), reps)
            name = f"cuprumctl run ({backend} pump)"
            rows.append({"variant": name, "seconds": piped})
            pumped = _median(lambda p=path: _pumped(p, size), reps)
            name = f"daemon job, {backend} pumps"
            limits.append({"variant": name, "seconds": pumped})
    for row in rows:
        row["mib_per_s"] = size / row["seconds"] / (1 << 20)
        row["vs_shell"] = shell / row["seconds"]
    for row in limits:
        row["mib_per_s"] = size / row["seconds"] / (1 << 20)
        row["vs_direct"] = direct / row["seconds"]
    mib = size >> 20
    print(f"\ncuprumctl as a pipe: {mib} MiB through `cat | cat` (median of {reps})\n")
    print(
        table(
            rows,
            [
                ("variant", "variant", ""),
                ("seconds", "s", ".3f"),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_shell", "vs shell (≥ 0.90)", ".2f"),
            ],
        )
    )
    print(f"\nThe physical limit: {mib} MiB head | cat | cat | wc\n")
    print(
        table(
            limits,
            [
                ("variant", "variant", ""),
                ("seconds", "s", ".3f"),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_direct", "vs direct (≥ 0.95)", ".2f"),
            ],
        )
    )
    return {"size": size, "pipe": rows, "limit": limits}
