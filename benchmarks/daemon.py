"""The daemon measured as its clients see it, next to ``posix_spawn`` of ``true``.

- round trip of a one-stage ``true`` job over the socket (p50, p99) vs
  ``posix_spawn`` + ``waitpid`` of ``true`` in a loop;
- sustained jobs/s with 8 concurrent clients vs the same loop's rate;
- the daemon's peak RSS while 64 large pipelines run at once.

Each backend (and event loop) gets its own daemon, started here on a
temporary socket exactly as ``cuprumd serve`` runs under systemd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cuprumd.backend import is_rust_available

TRUE = shutil.which("true") or "/bin/true"
TRUE_JOB = {"stages": [{"argv": ["true"]}]}


@contextlib.contextmanager
def daemon(
    backend: str, event_loop: str, *, user: int | None = None, **extra: Any
) -> Iterator[tuple[Path, int]]:
    """Start a real daemon; yield its socket path and pid.

    With ``user`` (as root), the daemon runs as that uid via ``setpriv``,
    as the tests' unprivileged daemons do; its clients here stay root."""
    with tempfile.TemporaryDirectory(prefix="cuprumd-bench-") as tmp:
        sock = Path(tmp) / "d.sock"
        config = Path(tmp) / "d.toml"
        settings: dict[str, Any] = {
            "socket_path": str(sock),
            "stream_backend": backend,
            "event_loop": event_loop,
            "log_level": "warning",
            "max_concurrent_jobs": 128,
            "max_queued_jobs": 1024,
            **extra,
        }
        lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        config.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUPRUM_")}
        argv = [sys.executable, "-m", "cuprumd.cli", "serve", "--config", str(config)]
        if user is not None:
            for path in (Path(tmp), config):
                os.chown(path, user, user)
            argv = [*as_user(user), *argv]
            env["HOME"] = tmp
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.socket(socket.AF_UNIX) as probe:
                        probe.connect(str(sock))
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        msg = f"daemon did not start ({backend}/{event_loop})"
                        raise RuntimeError(msg) from None
                    time.sleep(0.05)
            yield sock, proc.pid
        finally:
            proc.terminate()
            proc.wait(30)


def as_user(uid: int) -> list[str]:
    """The ``setpriv`` prefix that runs a command as ``uid``, no capabilities.

    The command is exec'd while setpriv still holds root's capabilities, so
    an interpreter under a directory ``uid`` cannot search (a pyenv Python
    in ``/root``) still starts; the same interpreter started *by* ``uid``
    would not."""
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--inh-caps=-all",
    ]  # fmt: skip


class Conn:
    """One NDJSON connection, as ``socat`` would hold it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.next_id = 0

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "op": op, **fields}) + "\n"
        self.sock.sendall(line.encode())
        reply: dict[str, Any] = json.loads(self.file.readline())
        if not reply.get("ok"):
            raise RuntimeError(reply)
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def spawn_true_times(count: int) -> list[float]:
    """Seconds per ``posix_spawn`` + ``waitpid`` of ``true``."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        pid = os.posix_spawn(TRUE, [TRUE], {})
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    return times


def round_trip_times(path: Path, count: int) -> list[float]:
    conn = Conn(path)
    try:
        for _ in range(20):  # warm-up
            conn.call("run", job=TRUE_JOB)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            conn.call("run", job=TRUE_JOB)
            times.append(time.perf_counter() - started)
        return times
    finally:
        conn.close()


def sandbox_round_trips(count: int, rounds: int = 5) -> dict[str, Any]:
    """``true`` RTT p50 with ``sandbox = "strict"`` and ``"off"`` against
    ``posix_spawn``, the three measured in turns so noise hits them alike."""
    samples: dict[str, list[float]] = {"spawn": [], "off": [], "strict": []}
    with (
        daemon("auto", "auto", sandbox="off") as (off, _),
        daemon("auto", "auto", sandbox="strict") as (strict, _),
    ):
        per_round = max(count // rounds, 20)
        for _ in range(rounds):
            samples["spawn"] += spawn_true_times(per_round)
            samples["off"] += round_trip_times(off, per_round)
            samples["strict"] += round_trip_times(strict, per_round)
    spawn_p50 = statistics.median(samples["spawn"])
    return {
        "spawn_p50_ms": spawn_p50 * 1000,
        **{
            f"{mode}_p50_ms": statistics.median(samples[mode]) * 1000
            for mode in ("off", "strict")
        },
        **{
            f"{mode}_vs_spawn": statistics.median(samples[mode]) / spawn_p50
            for mode in ("off", "strict")
        },
    }


def _run_true(conn: Conn) -> None:
    conn.call("run", job=TRUE_JOB)


def jobs_per_second(
    path: Path,
    clients: int,
    seconds: float,
    one_job: Callable[[Conn], None] = _run_true,
) -> float:
    """Jobs per second from ``clients`` threads, each on its own connection
    doing ``one_job`` (a ``run`` of ``true`` unless told) back to back."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = Conn(path)
        try:
            while time.monotonic() < stop:
                one_job(conn)
                done[index] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def spawn_rate(seconds: float) -> float:
    count, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        pid = os.posix_spawn(TRUE, [TRUE], {})
        os.waitpid(pid, 0)
        count += 1
    return count / (time.monotonic() - started)


def cpu_seconds(pid: int) -> float:
    """The CPU time ``pid``'s own threads have used (user + system), not its
    children's: for a daemon, the pumps and the job handling, not the
    stages."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_rss_under_load(path: Path, pid: int, jobs: int, size: int) -> dict[str, Any]:
    """Submit ``jobs`` pipelines of ``size`` bytes at once; sample the RSS."""
    spec = {
        "stages": [
            {"argv": ["head", "-c", str(size), "/dev/zero"]},
            {"argv": ["cat"]},
            {"argv": ["wc", "-c"]},
        ]
    }
    conn = Conn(path)
    idle = _rss_kib(pid)
    peak = idle
    started = time.monotonic()
    try:
        ids = [conn.call("submit", job=spec)["result"]["job_id"] for _ in range(jobs)]
        while True:
            peak = max(peak, _rss_kib(pid))
            states = [conn.call("status", job_id=i)["result"]["state"] for i in ids]
            if all(s not in ("queued", "running") for s in states):
                break
            time.sleep(0.1)
        results = [conn.call("wait", job_id=i)["result"] for i in ids]
    finally:
        conn.close()
    ok = sum(1 for r in results if r["stdout"].strip() == str(size))
    seconds = time.monotonic() - started
    return {
        "jobs": jobs,
        "bytes_per_job": size,
        "succeeded": ok,
        "idle_rss_mib": idle / 1024,
        "peak_rss_mib": peak / 1024,
        "seconds": seconds,
        "mib_per_s": jobs * size / seconds / (1 << 20),
    }


def bench_pipe_size(
    *, unprivileged: bool, jobs: int = 1, stages: int = 3, max_jobs: int = 128
) -> int:
    """The inter-stage pipe size of the last of ``jobs`` concurrent jobs of
    ``stages`` stages on a daemon started here (the default settings but
    ``max_concurrent_jobs = max_jobs``), on this machine's budget."""
    import dataclasses

    from cuprumd.engine.pipesize import PipeBudget, PipeLedger
    from cuprumd.settings import Settings

    defaults = Settings()
    budget = PipeBudget.of_this_process()
    if unprivileged:
        budget = dataclasses.replace(budget, exempt=False)
    ledger = PipeLedger(
        wanted=defaults.pump_buffer_size,
        max_jobs=max_jobs,
        max_stages=defaults.max_stages,
        budget=budget,
    )
    grants = [ledger.acquire(stages) for _ in range(jobs)]
    return grants[-1].size


def run_all(*, quick: bool = False, user: int | None = None) -> dict[str, Any]:
    """Every daemon figure of DESIGN section 9, printed and returned.

    With ``user`` (as root), every daemon runs as that uid via ``setpriv``,
    and the sandbox's cost, a root measurement, is left out."""
    uid = os.getuid() if user is None else user
    label = "root" if uid == 0 else f"unprivileged, uid {uid}"
    who = f" [{label}]"
    count = 200 if quick else 1000
    seconds = 3.0 if quick else 10.0
    big = (64 << 20) if quick else (1 << 30)
    backends = ["python"] + (["rust"] if is_rust_available() else [])
    spawn = spawn_true_times(count)
    spawn_p50 = statistics.median(spawn)
    rate_ref = spawn_rate(seconds)
    rows = []
    load = {}
    for backend in backends:
        for loop in ("asyncio", "uvloop"):
            with daemon(backend, loop, user=user) as (path, _pid):
                rtt = sorted(round_trip_times(path, count))
                rate = jobs_per_second(path, 8, seconds)
            p50 = statistics.median(rtt)
            rows.append(
                {
                    "variant": f"{backend}/{loop}",
                    "rtt_p50_ms": p50 * 1000,
                    "rtt_p99_ms": rtt[int(len(rtt) * 0.99) - 1] * 1000,
                    "rtt_vs_spawn": p50 / spawn_p50,
                    "jobs_per_s": rate,
                    "rate_vs_spawn": rate / rate_ref,
                }
            )
        # Each submitted job reserves max_output_bytes of max_retained_bytes
        # at admission: 64 at the default 16 MiB would not all be admitted.
        with daemon(backend, "auto", user=user, max_output_bytes=1 << 20) as (
            path,
            pid,
        ):
            load[backend] = peak_rss_under_load(path, pid, 64, big)
    print(
        f"\nDaemon{who}: one-stage `true` jobs; reference posix_spawn+wait p50 "
        f"{spawn_p50 * 1000:.3f} ms, {rate_ref:.0f} spawns/s\n"
    )
    from benchmarks.report import table

    print(
        table(
            rows,
            [
                ("variant", "daemon", ""),
                ("rtt_p50_ms", "RTT p50 ms", ".3f"),
                ("rtt_p99_ms", "RTT p99 ms", ".3f"),
                ("rtt_vs_spawn", "p50 / spawn (≤ 3)", ".2f"),
                ("jobs_per_s", "jobs/s (8 clients)", ".0f"),
                ("rate_vs_spawn", "rate / spawn (≥ 0.5)", ".2f"),
            ],
        )
    )
    sandboxed = sandbox_round_trips(count) if user is None else None
    if sandboxed is not None:
        print("\nThe sandbox's cost: one-stage `true` RTT p50, interleaved runs\n")
        print(
            table(
                [sandboxed],
                [
                    ("spawn_p50_ms", "posix_spawn ms", ".3f"),
                    ("off_p50_ms", "sandbox off ms", ".3f"),
                    ("off_vs_spawn", "off / spawn (≤ 1.5)", ".2f"),
                    ("strict_p50_ms", "strict ms", ".3f"),
                    ("strict_vs_spawn", "strict / spawn (≤ 2.0)", ".2f"),
                ],
            )
        )
    pipe_size = bench_pipe_size(unprivileged=uid != 0, jobs=64)
    pipes = f"{pipe_size >> 10} KiB" if pipe_size else "the default 64 KiB"
    print(
        f"\nDaemon{who} RSS during 64 concurrent {big >> 20} MiB pipelines "
        f"(< 200 MiB); inter-stage pipes {pipes}:\n"
    )
    print(
        table(
            [{"backend": k, **v} for k, v in load.items()],
            [
                ("backend", "backend", ""),
                ("succeeded", "jobs ok", "d"),
                ("idle_rss_mib", "idle RSS MiB", ".1f"),
                ("peak_rss_mib", "peak RSS MiB", ".1f"),
                ("seconds", "seconds", ".1f"),
                ("mib_per_s", "MiB/s (all jobs)", ".0f"),
            ],
        )
    )
    return {
        "spawn_p50_ms": spawn_p50 * 1000,
        "spawn_rate": rate_ref,
        "rows": rows,
        "sandbox": sandboxed,
        "rss": load,
        "pipe_size": pipe_size,
        "user": label,
    }
