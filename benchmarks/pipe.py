"""``cuprumctl`` as a pipe, and the pumps against pipes with no pump at all.

Side by side in one run, every variant once per round in turns, median of
``reps`` rounds:

- the shell's ``head -c N /dev/zero | cat | cat | wc -c``;
- the same with the middle through the daemon:
  ``head -c N /dev/zero | cuprumctl run -- cat '|' cat | wc -c`` (stdin and
  stdout passed, one pump between the two ``cat``), per backend
  (target: ≥ 0.90 of the shell);
- the physical limit of a pumped pipeline: ``head | cat | cat | wc``
  started by us, connected directly by pipes of the size the daemon gives
  its inter-stage pipes, no pump; and the same job run by the daemon,
  every stage boundary pumped (target: each pump ≥ 0.95 of direct).

The daemon rows also say how much CPU the daemon itself used per run (its
own threads: the pumps and the job's handling, not the stages), which
varies far less from run to run than the wall time does on two cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.daemon import Conn, bench_pipe_size, cpu_seconds, daemon
from benchmarks.report import table

GiB = 1 << 30
#: The default ``max_concurrent_jobs``: what the pipe budget is shared for.
MAX_JOBS = 16
#: At least this many rounds: one run of any variant here moves by up to
#: ±15 % on this 2-core machine, and the ratios sit near their targets.
MIN_ROUNDS = 9


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


def _rounds(
    runs: dict[str, Callable[[], float]], daemon_pid: dict[str, int], reps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every variant once per round, the order rotated each round; the wall
    times, and for daemon variants the daemon's CPU time, of each run."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in daemon_pid}
    order = list(runs)
    for _ in range(reps):
        for name in order:
            pid = daemon_pid.get(name)
            before = cpu_seconds(pid) if pid is not None else 0.0
            samples[name].append(runs[name]())
            if pid is not None:
                cpu[name].append(cpu_seconds(pid) - before)
        order = order[1:] + order[:1]
    return samples, cpu


def run_all(
    *, quick: bool = False, reps: int = 5, user: int | None = None
) -> dict[str, Any]:
    """The two tables; with ``user`` (as root) the daemons run as that uid,
    within its pipe budget, and ``cuprumctl`` is told to trust it. Every
    variant runs once per round, in turns, so a change in the machine's
    load between rounds hits them all alike."""
    size = (128 << 20) if quick else GiB
    reps = 2 if quick else max(reps, MIN_ROUNDS)
    ctl = str(Path(sys.executable).parent / "cuprumctl")
    # One job at a time on a default daemon: its pipes are what the budget
    # gives a 4-stage job alone (1 MiB as root).
    capacity = bench_pipe_size(
        unprivileged=user is not None, stages=4, max_jobs=MAX_JOBS
    ) or (64 << 10)
    shell_name = "shell: head | cat | cat | wc"
    direct_name = f"direct pipes ({capacity >> 10} KiB), no pump"
    runs: dict[str, Callable[[], float]] = {
        shell_name: lambda: _timed_shell(
            f"head -c {size} /dev/zero | cat | cat | wc -c"
        ),
        direct_name: lambda: _direct(size, capacity),
    }
    piped_names, pumped_names = [], []
    daemon_pid: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        for backend in ("python", "rust"):
            path, pid = stack.enter_context(
                daemon(backend, "auto", user=user, max_concurrent_jobs=MAX_JOBS)
            )
            env = {**os.environ, "CUPRUM_SOCKET": str(path)}
            if user is not None:
                env["CUPRUM_DAEMON_USER"] = str(user)
            script = f"head -c {size} /dev/zero | {ctl} run -- cat '|' cat | wc -c"
            piped = f"cuprumctl run ({backend} pump)"
            pumped = f"daemon job, {backend} pumps"
            runs[piped] = lambda s=script, e=env: _timed_shell(s, e)
            runs[pumped] = lambda p=path: _pumped(p, size)
            daemon_pid[piped] = daemon_pid[pumped] = pid
            piped_names.append(piped)
            pumped_names.append(pumped)
        samples, cpu = _rounds(runs, daemon_pid, reps)
    median = {name: statistics.median(times) for name, times in samples.items()}
    daemon_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    shell, direct = median[shell_name], median[direct_name]
    rows: list[dict[str, Any]] = [
        {"variant": name, "seconds": median[name]}
        for name in (shell_name, *piped_names)
    ]
    limits: list[dict[str, Any]] = [
        {"variant": name, "seconds": median[name]}
        for name in (direct_name, *pumped_names)
    ]
    for row in rows:
        row["mib_per_s"] = size / row["seconds"] / (1 << 20)
        row["vs_shell"] = shell / row["seconds"]
    for row in limits:
        row["mib_per_s"] = size / row["seconds"] / (1 << 20)
        row["vs_direct"] = direct / row["seconds"]
    for row in (*rows, *limits):
        row["daemon_cpu_s"] = daemon_cpu.get(row["variant"])
        row["samples"] = samples[row["variant"]]
    mib = size >> 20
    who = "" if user is None else f" [daemon as uid {user}]"
    print(
        f"\ncuprumctl as a pipe{who}: {mib} MiB through `cat | cat` "
        f"(median of {reps})\n"
    )
    print(
        table(
            rows,
            [
                ("variant", "variant", ""),
                ("seconds", "s", ".3f"),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_shell", "vs shell (≥ 0.90)", ".2f"),
                ("daemon_cpu_s", "daemon CPU s", ".2f"),
            ],
        )
    )
    print(f"\nThe physical limit{who}: {mib} MiB head | cat | cat | wc\n")
    print(
        table(
            limits,
            [
                ("variant", "variant", ""),
                ("seconds", "s", ".3f"),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_direct", "vs direct (≥ 0.95)", ".2f"),
                ("daemon_cpu_s", "daemon CPU s", ".2f"),
            ],
        )
    )
    return {"size": size, "pipe": rows, "limit": limits}
