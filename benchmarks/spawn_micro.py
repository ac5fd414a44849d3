"""Micro-benchmark: start and reap ``/bin/true`` with each way of spawning.

Run with ``.venv/bin/python benchmarks/spawn_micro.py [--iterations N]``.
Each iteration times one spawn (until the call returns, which for every
variant means the child has exec'd) and the spawn plus the wait for the
child's exit. The variants take turns within every round, in a fresh
random order each time, so machine noise hits them alike and no variant
always pays for its predecessor (a fork() leaves the caller's memory
copy-on-write, which the next spawn then pays for in page faults). All children get
/dev/null as stdin, stdout and stderr and the caller's environment.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PROGRAM = "/bin/true"

# spawn(null) -> handle; wait(handle) reaps the child.
Variant = tuple[Callable[[int], Any], Callable[[Any], None]]


def _posix_spawn(null: int) -> int:
    actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
    return os.posix_spawn(PROGRAM, [PROGRAM], os.environ, file_actions=actions)


def _waitpid(pid: int) -> None:
    os.waitpid(pid, 0)


def _popen(null: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PROGRAM], stdin=null, stdout=null, stderr=null)


def _popen_wait(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()


def _noop() -> None:
    pass


def _popen_preexec(null: int) -> subprocess.Popen[bytes]:
    # The cost being measured: any preexec_fn forces fork() instead of vfork.
    # This script runs a single thread, so preexec_fn is safe here.
    return subprocess.Popen(
        [PROGRAM],
        stdin=null,
        stdout=null,
        stderr=null,
        preexec_fn=_noop,  # noqa: PLW1509
    )


def _native_variants() -> dict[str, Variant]:
    try:
        from cuprumd import _native
    except ImportError:
        print("cuprumd._native is not built (make build): native rows skipped")
        return {}
    program = os.fsencode(PROGRAM)
    argv = [program]
    envp = [key + b"=" + value for key, value in os.environb.items()]
    cwd = os.fsencode(os.getcwd())
    limits = [(resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, 1024, 1024)]

    def spawn_stage(null: int) -> int:
        _, pidfd = _native.spawn_stage(program, argv, envp, (null, null, null))
        return pidfd

    def spawn_stage_contained(null: int) -> int:
        _, pidfd = _native.spawn_stage(
            program, argv, envp, (null, null, null), cwd=cwd, rlimits=limits
        )
        return pidfd

    def waitid(pidfd: int) -> None:
        try:
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        finally:
            os.close(pidfd)

    return {
        "_native.spawn_stage + waitid(pidfd)": (spawn_stage, waitid),
        "  ... with cwd + 2 rlimits": (spawn_stage_contained, waitid),
    }


def _row(name: str, width: int, spawn: list[float], total: list[float]) -> str:
    total_cuts = statistics.quantiles(total, n=100)
    return (
        f"{name:<{width}}  {statistics.median(spawn):9.1f}"
        f"  {statistics.median(total):9.1f}  {total_cuts[89]:9.1f}"
        f"  {total_cuts[98]:9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="spawn_micro.py")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--no-preexec", action="store_true", help="skip the slow preexec_fn row"
    )
    args = parser.parse_args()

    variants: dict[str, Variant] = {
        "os.posix_spawn + waitpid": (_posix_spawn, _waitpid),
        "subprocess.Popen + wait": (_popen, _popen_wait),
    }
    if not args.no_preexec:
        variants["subprocess.Popen(preexec_fn) + wait"] = (_popen_preexec, _popen_wait)
    variants.update(_native_variants())

    names = list(variants)
    order = random.Random(0)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    spawn_us: dict[str, list[float]] = {name: [] for name in names}
    total_us: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.warmup + args.iterations):
        order.shuffle(names)
        for name in names:
            spawn, wait = variants[name]
            started = time.perf_counter_ns()
            handle = spawn(null)
            spawned = time.perf_counter_ns()
            wait(handle)
            ended = time.perf_counter_ns()
            if round_ >= args.warmup:
                spawn_us[name].append((spawned - started) / 1000)
                total_us[name].append((ended - started) / 1000)
    os.close(null)

    print(
        f"{PROGRAM}, {args.iterations} iterations each (after {args.warmup} warm-up),"
        f" Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; times in µs"
    )
    width = max(len(name) for name in variants)
    print(
        f"{'variant':<{width}}  {'spawn p50':>9}  {'total p50':>9}"
        f"  {'total p90':>9}  {'total p99':>9}"
    )
    for name in variants:
        print(_row(name, width, spawn_us[name], total_us[name]))


if __name__ == "__main__":
    main()
