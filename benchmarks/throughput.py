"""Pipeline throughput: the shell's own pipe vs cuprumd's Python and Rust pumps.

Every variant runs the same three-stage pipeline, ``head -c N /dev/zero |
cat | wc -c``; the variants are interleaved within each repetition so that
machine noise hits them alike, and medians are compared. cuprumd's jobs
run with the options a daemon with the default settings would give them,
so their inter-stage pipes are sized as deployed: within the per-user pipe
budget when this process is unprivileged.

``measure_pacing`` puts the Rust pump's pacer against no pacing at fixed
pipe capacities: the same pipeline, every pipe set to one capacity, the
two pumps run with and without pacing, interleaved.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from cuprumd.backend import StreamBackend, is_rust_available
from cuprumd.engine.pipesize import PipeLedger
from cuprumd.models import JobResult, JobSpec
from cuprumd.pipeline import RunOptions, execute
from cuprumd.settings import Settings

GiB = 1 << 30


@dataclass(frozen=True)
class Variant:
    name: str
    run: Callable[[int], float]


def _shell(size: int) -> float:
    cmd = f"head -c {size} /dev/zero | cat | wc -c"
    started = time.perf_counter()
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, check=True)
    elapsed = time.perf_counter() - started
    assert int(out.stdout) == size
    return elapsed


def _spec(size: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "stages": [
                {"argv": ["head", "-c", str(size), "/dev/zero"]},
                {"argv": ["cat"]},
                {"argv": ["wc", "-c"]},
            ]
        }
    )


def deployed_options() -> RunOptions:
    """A default daemon's job options: its pipes shared out for this uid."""
    settings = Settings()
    ledger = PipeLedger(
        wanted=settings.pump_buffer_size,
        max_jobs=settings.max_concurrent_jobs,
        max_stages=settings.max_stages,
    )
    return RunOptions.from_settings(settings, pipes=ledger)


def pipe_size_alone(options: RunOptions, stages: int = 3) -> int:
    """The inter-stage pipe size a job of ``stages`` stages gets alone."""
    if options.pipes is None:
        return options.pump_buffer_size
    grant = options.pipes.acquire(stages)
    options.pipes.release(grant)
    return grant.size


def _runner(
    backend: StreamBackend,
    loop_runner: Callable[[Coroutine[Any, Any, JobResult]], JobResult],
) -> Callable[[int], float]:
    options = deployed_options()

    def run(size: int) -> float:
        spec = _spec(size)
        started = time.perf_counter()
        result = loop_runner(execute(spec, options, backend))
        elapsed = time.perf_counter() - started
        assert result.stdout.strip() == str(size), result
        return elapsed

    return run


def variants() -> list[Variant]:
    """Shell, then each pump under each event loop this machine has."""
    import uvloop

    loops: list[tuple[str, Callable[[Coroutine[Any, Any, JobResult]], JobResult]]] = [
        ("asyncio", asyncio.run),
        ("uvloop", uvloop.run),
    ]
    found = [Variant("shell", _shell)]
    backends = [StreamBackend.PYTHON]
    if is_rust_available():
        backends.append(StreamBackend.RUST)
    for backend in backends:
        for loop_name, loop_runner in loops:
            found.append(
                Variant(f"{backend}/{loop_name}", _runner(backend, loop_runner))
            )
    return found


def measure(sizes: dict[str, int], reps: int) -> list[dict[str, Any]]:
    """Median wall time per variant and size, plus throughput and ratio."""
    rows: list[dict[str, Any]] = []
    found = variants()
    for label, size in sizes.items():
        samples: dict[str, list[float]] = {v.name: [] for v in found}
        inner = max(1, min(200, (64 << 20) // max(size, 1)))  # batch tiny jobs
        for _ in range(reps):
            for variant in found:
                started = time.perf_counter()
                for _ in range(inner):
                    variant.run(size)
                samples[variant.name].append((time.perf_counter() - started) / inner)
        shell = statistics.median(samples["shell"])
        for variant in found:
            median = statistics.median(samples[variant.name])
            rows.append(
                {
                    "size": label,
                    "bytes": size,
                    "variant": variant.name,
                    "median_s": median,
                    "mib_per_s": size / median / (1 << 20),
                    "vs_shell": shell / median,
                    "samples": samples[variant.name],
                }
            )
    return rows


def _pipe(capacity: int) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, capacity)
    got = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
    if got != capacity:
        os.close(r)
        os.close(w)
        msg = f"pipe capacity {got}, not {capacity}"
        raise OSError(msg)
    return r, w


def _spawn(argv: list[str], stdin: int, stdout: int) -> int:
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1)]
    return os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)


def paced_pipeline(size: int, capacity: int, *, pacing: bool) -> float:
    """``head -c size /dev/zero | cat | wc -c`` with every pipe at
    ``capacity`` and the Rust pump between stages; seconds."""
    import cuprumd._native as native

    pipes = [_pipe(capacity) for _ in range(4)]
    (a_r, a_w), (b_r, b_w), (c_r, c_w), (d_r, d_w) = pipes
    null_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    null_out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    results: list[tuple[int, str, bool]] = []

    def transfer(reader: int, writer: int) -> None:
        try:
            results.append(
                native.rust_pump_transfer(
                    reader, writer, buffer_size=1 << 20, pacing=pacing
                )
            )
        finally:
            os.close(reader)
            os.close(writer)

    started = time.perf_counter()
    pids = [
        _spawn(["head", "-c", str(size), "/dev/zero"], null_in, a_w),
        _spawn(["cat"], b_r, c_w),
        _spawn(["wc", "-c"], d_r, null_out),
    ]
    for fd in (a_w, b_r, c_w, d_r, null_in, null_out):
        os.close(fd)
    pumps = [
        threading.Thread(target=transfer, args=(a_r, b_w)),
        threading.Thread(target=transfer, args=(c_r, d_w)),
    ]
    for thread in pumps:
        thread.start()
    for thread in pumps:
        thread.join()
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    assert [moved for moved, _, _ in results] == [size, size], results
    return elapsed


def measure_pacing(
    capacities: dict[str, int], size: int, reps: int
) -> list[dict[str, Any]]:
    """Median MiB/s with and without pacing at each pipe capacity."""
    rows: list[dict[str, Any]] = []
    if not is_rust_available():
        return rows
    for label, capacity in capacities.items():
        samples: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(reps):
            for pacing in (True, False):
                samples[pacing].append(paced_pipeline(size, capacity, pacing=pacing))
        paced, unpaced = (statistics.median(samples[p]) for p in (True, False))
        rows.append(
            {
                "capacity": label,
                "capacity_bytes": capacity,
                "bytes": size,
                "paced_mib_s": size / paced / (1 << 20),
                "unpaced_mib_s": size / unpaced / (1 << 20),
                "paced_vs_unpaced": unpaced / paced,
                "samples_paced": samples[True],
                "samples_unpaced": samples[False],
            }
        )
    return rows
