"""Pipeline throughput: the shell's own pipe vs cuprumd's Python and Rust pumps.

Every variant runs the same three-stage pipeline, ``head -c N /dev/zero |
cat | wc -c``; the variants are interleaved within each repetition so that
machine noise hits them alike, and medians are compared.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from cuprumd.backend import StreamBackend, is_rust_available
from cuprumd.models import JobResult, JobSpec
from cuprumd.pipeline import RunOptions, execute

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


def _runner(
    backend: StreamBackend,
    loop_runner: Callable[[Coroutine[Any, Any, JobResult]], JobResult],
) -> Callable[[int], float]:
    def run(size: int) -> float:
        spec = _spec(size)
        started = time.perf_counter()
        result = loop_runner(execute(spec, RunOptions(), backend))
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
