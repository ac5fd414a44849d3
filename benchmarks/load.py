"""The front door under load: many jobs, many connections, hostile frames.

One real daemon (``stream_backend`` and ``event_loop`` on ``auto``, room for
6 000 connections) serves the whole group, its VmRSS sampled every 20 ms:

1. 20 000 one-stage ``true`` jobs (``run``) from 8 concurrent clients, one
   connection each: round trip p50/p99, jobs/s, RSS before and after, and
   whether every job came back exactly once and succeeded (counted, never
   asserted);
2. 5 000 idle connections held open at once: the time to open them, the RSS
   they cost, and ``ping`` on a fresh connection meanwhile;
3. ``ping`` p50/p99/max on a connection of its own while nothing else
   happens, then while hostile clients (separate processes, so they never
   hold this process's GIL) stream unterminated lines past
   ``max_request_bytes``, run ``cat`` on ~7 MiB of stdin back to back, or
   send frames of 400 000 tiny stages;
4. the daemon's peak RSS across the group.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import queue
import re
import resource
import select
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.daemon import TRUE_JOB, Conn, _rss_kib, daemon
from benchmarks.report import table

#: The daemon's default frame limit, which this group keeps.
MAX_REQUEST_BYTES = 8 << 20
CONNECTION_LIMITS = {"max_connections": 6000, "max_connections_per_uid": 6000}
#: Pause between two pings, so a series spans the hostile traffic.
PING_GAP = 0.01
#: A scenario may add this much to the idle ping p99.
EXTRA_P99_TARGET_MS = 50.0
SAMPLE_SECONDS = 0.02
CHUNK = 64 << 10
TINY_STAGES = 400_000
CAT_STDIN_BYTES = 7 << 20
_STATE = re.compile(rb'"state":"(\w+)"')


# -- measuring ---------------------------------------------------------------


class RssSampler:
    """The daemon's VmRSS every 20 ms on a thread: the peak of the whole
    run, and of the window since the last ``window()`` call (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._window = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                rss = _rss_kib(self.pid)
                with self._lock:
                    self.peak = max(self.peak, rss)
                    self._window = max(self._window, rss)
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def window(self) -> int:
        """Peak since the previous call (or the start), and start anew."""
        with self._lock:
            peak, self._window = self._window, 0
        return peak

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mib(pid: int) -> float:
    try:
        return _rss_kib(pid) / 1024
    except OSError:
        return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank of ``values`` (sorted)."""
    return values[max(math.ceil(fraction * len(values)) - 1, 0)]


def latency_ms(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "pings": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def ping_series(path: Path, count: int, budget_s: float = math.inf) -> list[float]:
    """Seconds per ``ping`` on a fresh connection, ``PING_GAP`` apart: ``count``
    of them, or fewer if ``budget_s`` runs out first."""
    conn = Conn(path)
    conn.sock.settimeout(120)
    try:
        for _ in range(5):  # warm-up
            conn.call("ping")
        times: list[float] = []
        deadline = time.monotonic() + budget_s
        while len(times) < count and time.monotonic() < deadline:
            started = time.perf_counter()
            conn.call("ping")
            times.append(time.perf_counter() - started)
            time.sleep(PING_GAP)
        return times
    finally:
        conn.close()


def daemon_stats(path: Path) -> dict[str, Any]:
    conn = Conn(path)
    conn.sock.settimeout(60)
    try:
        result: dict[str, Any] = conn.call("stats")["result"]
        return result
    finally:
        conn.close()


def raise_nofile() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit (the daemon
    started after it inherits it); returns the previous soft and hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


# -- 1. many jobs ------------------------------------------------------------


def many_jobs(path: Path, pid: int, clients: int, per_client: int) -> dict[str, Any]:
    """``per_client`` ``run``s of ``true`` on each of ``clients`` connections;
    every reply is checked against the ids sent."""
    rtts: list[list[float]] = [[] for _ in range(clients)]
    replies: list[list[tuple[Any, str, str | None]]] = [[] for _ in range(clients)]
    failures: list[str] = []

    def client(index: int) -> None:
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(120)
            sock.connect(str(path))
        except OSError as exc:
            failures.append(f"client {index}: connect: {exc!r}")
            return
        reader = sock.makefile("rb")
        try:
            for n in range(per_client):
                line = {"id": f"{index}-{n}", "op": "run", "job": TRUE_JOB}
                data = json.dumps(line).encode() + b"\n"
                started = time.perf_counter()
                sock.sendall(data)
                raw = reader.readline()
                rtts[index].append(time.perf_counter() - started)
                if not raw:
                    failures.append(f"client {index}: closed after {n} jobs")
                    return
                reply = json.loads(raw)
                if reply.get("ok"):
                    result = reply["result"]
                    replies[index].append(
                        (reply.get("id"), result["state"], result["job_id"])
                    )
                else:
                    code = reply.get("error", {}).get("code", "?")
                    replies[index].append((reply.get("id"), f"error:{code}", None))
        except (OSError, ValueError) as exc:
            failures.append(f"client {index}: {exc!r}")
        finally:
            reader.close()
            sock.close()

    before = daemon_stats(path)
    rss_before = rss_mib(pid)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    rss_after = rss_mib(pid)
    after = daemon_stats(path)

    flat = [reply for per in replies for reply in per]
    expected = {f"{i}-{n}" for i in range(clients) for n in range(per_client)}
    seen = Counter(str(reply_id) for reply_id, _, _ in flat)
    states = Counter(state for _, state, _ in flat)
    job_ids = [job_id for _, _, job_id in flat if job_id is not None]
    ordered = sorted(t for per in rtts for t in per)
    return {
        "clients": clients,
        "jobs": clients * per_client,
        "replies": len(flat),
        "exactly_once": sum(1 for i in expected if seen[i] == 1),
        "duplicated": sum(1 for i in expected if seen[i] > 1),
        "missing": sum(1 for i in expected if seen[i] == 0),
        "unexpected": sum(n for i, n in seen.items() if i not in expected),
        "succeeded": states.get("succeeded", 0),
        "states": dict(states),
        "distinct_job_ids": len(set(job_ids)),
        "daemon_succeeded": after["jobs"]["succeeded"] - before["jobs"]["succeeded"],
        "failures": failures,
        "seconds": seconds,
        "jobs_per_s": len(flat) / seconds,
        "rtt_p50_ms": statistics.median(ordered) * 1000 if ordered else math.nan,
        "rtt_p99_ms": percentile(ordered, 0.99) * 1000 if ordered else math.nan,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
    }


# -- 2. idle connections -----------------------------------------------------


def _fate(sock: socket.socket) -> str:
    """What a held connection got from the daemon, if anything."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return "open"
    except OSError:
        return "reset"
    if not data:
        return "closed"
    try:
        code: str = json.loads(data.split(b"\n", 1)[0])["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "data"
    return code


def _open(path: Path, deadline: float) -> tuple[socket.socket, int]:
    """A connected socket, and how often the listen backlog was full (a
    non-blocking AF_UNIX connect fails with EAGAIN then; try again)."""
    retries = 0
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            retries += 1
            if time.monotonic() > deadline:
                raise TimeoutError("listen backlog stayed full") from None
            time.sleep(0.001)
            continue
        except OSError:
            sock.close()
            raise
        return sock, retries


def idle_connections(
    path: Path, pid: int, count: int, pings: tuple[int, float]
) -> dict[str, Any]:
    """Open ``count`` connections, hold them, ping on another one."""
    rss_before = rss_mib(pid)
    socks: list[socket.socket] = []
    error = None
    backlog_full = 0
    started = time.monotonic()
    try:
        for _ in range(count):
            sock, retries = _open(path, time.monotonic() + 30)
            socks.append(sock)
            backlog_full += retries
    except OSError as exc:
        error = f"connection {len(socks) + 1}: {exc!r}"
    connect_s = time.monotonic() - started
    try:
        # connect() returns once queued; wait until the daemon holds them all.
        deadline = time.monotonic() + 60
        held = 0
        while time.monotonic() < deadline:
            try:
                held = daemon_stats(path)["connections"] - 1
            except (OSError, RuntimeError, ValueError) as exc:
                error = f"{error or ''} stats: {exc!r}"
                break
            if held >= len(socks):
                break
            time.sleep(0.05)
        accepted_s = time.monotonic() - started
        rss_held = rss_mib(pid)
        times = ping_series(path, *pings)
        # Any of them answered or closed by the daemon meanwhile?
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0)}
        fates = Counter(_fate(s) if s.fileno() in ready else "open" for s in socks)
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.5)
    return {
        "connections": count,
        "opened": len(socks),
        "held_by_daemon": held,
        "fates": dict(fates),
        "still_open": fates.get("open", 0),
        "error": error,
        "backlog_full_retries": backlog_full,
        "connect_s": connect_s,
        "accepted_s": accepted_s,
        "rss_before_mib": rss_before,
        "rss_held_mib": rss_held,
        "rss_growth_mib": rss_held - rss_before,
        "rss_kib_per_conn": (rss_held - rss_before) * 1024 / max(len(socks), 1),
        "rss_closed_mib": rss_mib(pid),
        **latency_ms(times),
        "samples_ms": [t * 1000 for t in times],
    }


# -- 3. hostile clients (each in a process of its own) -----------------------


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(0.5)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _send(sock: socket.socket, data: bytes, stop: Any) -> str:
    """Send all of ``data``; "sent", or why not ("stopped", "closed", ...)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view[: 1 << 20]) :]
        except TimeoutError:
            if stop.is_set():
                return "stopped"
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        except OSError:
            return "error"
    return "sent"


def _reply(sock: socket.socket, stop: Any, limit_s: float = 120.0) -> str:
    """Read one reply line and name it: a job state, an error code, or what
    happened instead ("closed", "reset", "timeout", "stopped")."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit_s
    while True:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            if stop.is_set() or time.monotonic() > deadline:
                return "stopped" if stop.is_set() else "timeout"
            continue
        except OSError as exc:
            return "reset" if isinstance(exc, ConnectionResetError) else "error"
        if not data:
            return "closed"
        chunks.append(data)
        if data.endswith(b"\n"):
            return _outcome(chunks)


def _outcome(chunks: list[bytes]) -> str:
    """A reply's job state (``ok``) or error code, reading no more of a
    large reply than its head."""
    head = chunks[0][:512]
    if b'"ok":true' in head:
        match = _STATE.search(head)
        return match.group(1).decode() if match else "ok"
    try:
        code: str = json.loads(b"".join(chunks))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unparsable"
    return code


def oversized_lines(path: str, stop: Any, out: Any) -> None:
    """Stream one unterminated line past the frame limit, 64 KiB at a time;
    read the daemon's answer; reconnect; again."""
    stats: Counter[str] = Counter()
    chunk = b"x" * CHUNK
    out.put(("ready", None))
    try:
        while not stop.is_set():
            sock = _connect(path)
            if sock is None:
                stats["connect_failed"] += 1
                stop.wait(0.05)
                continue
            with sock:
                outcome = _send(sock, b'{"id":"big","op":"ping","pad":"', stop)
                sent = 0
                while outcome == "sent" and sent <= MAX_REQUEST_BYTES + CHUNK:
                    if stop.is_set():
                        outcome = "stopped"
                        break
                    outcome = _send(sock, chunk, stop)
                    sent += CHUNK
                stats["bytes"] += sent
                if outcome == "stopped":
                    break
                stats["lines"] += 1
                stats[_reply(sock, stop)] += 1
    finally:
        out.put(("done", dict(stats)))


def cat_jobs(path: str, stop: Any, out: Any) -> None:
    """``run`` ``cat`` on ~7 MiB of text, back to back, on one connection."""
    stats: Counter[str] = Counter()
    line = "abcdefghijklmnopqrstuvwxyz0123456789" * 28 + "\n"
    text = line * (CAT_STDIN_BYTES // len(line))
    job = {"stages": [{"argv": ["cat"]}], "stdin": text}
    request = json.dumps({"id": "cat", "op": "run", "job": job}).encode() + b"\n"
    assert len(request) < MAX_REQUEST_BYTES
    out.put(("ready", None))
    sock: socket.socket | None = None
    try:
        while not stop.is_set():
            if sock is None:
                sock = _connect(path)
                if sock is None:
                    stats["connect_failed"] += 1
                    stop.wait(0.05)
                    continue
            outcome = _send(sock, request, stop)
            if outcome == "sent":
                stats["requests"] += 1
                outcome = _reply(sock, stop)
            stats[outcome] += 1
            if outcome not in ("succeeded", "failed", "busy"):
                sock.close()
                sock = None
            elif outcome == "busy":
                stop.wait(0.05)
    finally:
        if sock is not None:
            sock.close()
        out.put(("done", dict(stats)))


def many_stages(path: str, stop: Any, out: Any) -> None:
    """A ``run`` of 400 000 ``true`` stages, inside the frame limit, again and
    again (the daemon refuses it: more than ``max_stages``)."""
    stats: Counter[str] = Counter()
    stages = ",".join(['{"argv":["true"]}'] * TINY_STAGES)
    request = f'{{"id":"many","op":"run","job":{{"stages":[{stages}]}}}}\n'.encode()
    assert len(request) < MAX_REQUEST_BYTES
    out.put(("ready", None))
    sock: socket.socket | None = None
    try:
        while not stop.is_set():
            if sock is None:
                sock = _connect(path)
                if sock is None:
                    stats["connect_failed"] += 1
                    stop.wait(0.05)
                    continue
            outcome = _send(sock, request, stop)
            if outcome == "sent":
                stats["requests"] += 1
                outcome = _reply(sock, stop)
            stats[outcome] += 1
            if outcome not in ("bad_request", "busy"):
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
        out.put(("done", dict(stats)))


Worker = Callable[[str, Any, Any], None]
SCENARIOS: list[tuple[str, str, Worker, int]] = [
    ("oversized", "4 clients: unterminated 8 MiB+ lines", oversized_lines, 4),
    ("cat", "2 clients: run cat, 7 MiB stdin", cat_jobs, 2),
    ("stages", f"1 client: {TINY_STAGES:,}-stage frames", many_stages, 1),
]


def under_fire(
    path: Path,
    sampler: RssSampler,
    worker: Worker | None,
    clients: int,
    pings: tuple[int, float],
) -> dict[str, Any]:
    """Ping while ``clients`` processes run ``worker``; stop them; report."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    out = context.Queue()
    procs = [
        context.Process(target=worker, args=(str(path), stop, out), daemon=True)
        for _ in range(clients if worker else 0)
    ]
    for proc in procs:
        proc.start()
    stats: Counter[str] = Counter()
    try:
        _await(out, procs, "ready", stats, 60)
        if procs:
            time.sleep(0.5)  # let the hostile traffic get going
        sampler.window()
        times = ping_series(path, *pings)
        peak = sampler.window()
    finally:
        stop.set()
        done = _await(out, procs, "done", stats, 30)
        stuck = 0
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
                stuck += 1
        time.sleep(0.5)  # let the daemon drain what the last frames left
    return {
        **latency_ms(times),
        "peak_rss_mib": peak / 1024,
        "traffic": dict(stats),
        "workers_unreported": len(procs) - done,
        "workers_terminated": stuck,
        "samples_ms": [t * 1000 for t in times],
    }


def _await(
    out: Any, procs: list[Any], kind: str, stats: Counter[str], limit_s: float
) -> int:
    """Read the workers' messages until each has sent ``kind`` (their counts
    come with "done"), they died, or ``limit_s`` passed; how many did."""
    seen = 0
    deadline = time.monotonic() + limit_s
    while seen < len(procs) and time.monotonic() < deadline:
        try:
            got, counts = out.get(timeout=0.5)
        except queue.Empty:
            if kind == "ready" and not all(p.is_alive() for p in procs):
                break
            continue
        if got == "done":
            stats.update(counts)
        seen += got == kind
    return seen


def _traffic(counts: dict[str, int]) -> str:
    shown = {k: v for k, v in counts.items() if k != "bytes"}
    return ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) or "-"


# -- the group ---------------------------------------------------------------


def _judge(hostile: list[dict[str, Any]]) -> None:
    """Each scenario's p99 against the idle one's, and its traffic in words."""
    idle_p99 = hostile[0]["p99_ms"]
    for row in hostile:
        row["extra_p99_ms"] = row["p99_ms"] - idle_p99
        row["met"] = "yes" if row["extra_p99_ms"] <= EXTRA_P99_TARGET_MS else "NO"
        row["target"] = "" if row["scenario"] == "idle" else "≤ idle + 50 ms"
        row["traffic_text"] = _traffic(row["traffic"])
        if row["workers_unreported"] or row["workers_terminated"]:
            row["traffic_text"] += (
                f"; workers unreported {row['workers_unreported']},"
                f" terminated {row['workers_terminated']}"
            )


def run_all(*, quick: bool = False) -> dict[str, Any]:
    """Every load figure, printed and returned."""
    clients = 8
    per_client = 250 if quick else 2500
    idle_count = 1000 if quick else 5000
    pings = 100 if quick else 500
    #: A series stops early if this runs out: one stall can last seconds.
    budget_s = 10.0 if quick else 30.0
    old_soft, old_hard = raise_nofile()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    notes = []
    if soft < idle_count + 64:
        idle_count = soft - 64
        notes.append(f"RLIMIT_NOFILE {soft}: holding only {idle_count} connections")
    stack = contextlib.ExitStack()
    try:
        path, pid = stack.enter_context(daemon("auto", "auto", **CONNECTION_LIMITS))
        limits: dict[str, Any] = dict(CONNECTION_LIMITS)
    except RuntimeError:
        path, pid = stack.enter_context(daemon("auto", "auto"))
        limits = {}
        notes.append("daemon refused max_connections*; started with its defaults")
    try:
        with stack, RssSampler(pid) as sampler:
            start_rss = rss_mib(pid)
            jobs = many_jobs(path, pid, clients, per_client)
            jobs["peak_rss_mib"] = sampler.window() / 1024
            idle = idle_connections(path, pid, idle_count, (pings, budget_s))
            idle["peak_rss_mib"] = sampler.window() / 1024
            quiet = under_fire(path, sampler, None, 0, (pings, budget_s))
            hostile = [{"scenario": "idle", "name": "idle", **quiet}]
            for name, label, worker, count in SCENARIOS:
                row = under_fire(path, sampler, worker, count, (pings, budget_s))
                hostile.append({"scenario": label, "name": name, **row})
            alive = True
            try:
                ping_series(path, 1)
            except (OSError, RuntimeError, ValueError):
                alive = False
            end_rss = rss_mib(pid)
            group_peak = sampler.peak / 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, old_hard))
    _judge(hostile)
    summary = {
        "start_rss_mib": start_rss,
        "peak_rss_mib": group_peak,
        "end_rss_mib": end_rss,
        "alive": "yes" if alive else "NO",
    }

    results = {
        "settings": limits,
        "notes": notes,
        "jobs": jobs,
        "idle_connections": idle,
        "hostile": hostile,
        "summary": summary,
    }
    print_tables(results)
    return results


def print_tables(results: dict[str, Any]) -> None:
    jobs, idle = results["jobs"], results["idle_connections"]
    hostile, summary = results["hostile"], results["summary"]
    print("\nLoad: one daemon (auto backend and loop), VmRSS sampled every 20 ms")
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"\n{jobs['jobs']:,} one-stage `true` runs from {jobs['clients']} clients:\n")
    print(
        table(
            [jobs],
            [
                ("jobs", "jobs", ","),
                ("replies", "replies", ","),
                ("exactly_once", "exactly once", ","),
                ("succeeded", "succeeded", ","),
                ("distinct_job_ids", "distinct job ids", ","),
                ("seconds", "seconds", ".1f"),
                ("jobs_per_s", "jobs/s", ".0f"),
                ("rtt_p50_ms", "RTT p50 ms", ".3f"),
                ("rtt_p99_ms", "RTT p99 ms", ".3f"),
                ("rss_before_mib", "RSS before MiB", ".1f"),
                ("rss_after_mib", "RSS after MiB", ".1f"),
                ("peak_rss_mib", "peak RSS MiB", ".1f"),
            ],
        )
    )
    for failure in jobs["failures"]:
        print(f"  ! {failure}")
    print(f"\n{idle['connections']:,} idle connections held at once:\n")
    print(
        table(
            [idle],
            [
                ("opened", "opened", ","),
                ("held_by_daemon", "held by daemon", ","),
                ("still_open", "still open", ","),
                ("connect_s", "connect s", ".2f"),
                ("backlog_full_retries", "EAGAIN retries", ","),
                ("accepted_s", "all accepted s", ".2f"),
                ("rss_before_mib", "RSS before MiB", ".1f"),
                ("rss_held_mib", "RSS held MiB", ".1f"),
                ("rss_kib_per_conn", "KiB / conn", ".1f"),
                ("p50_ms", "ping p50 ms", ".3f"),
                ("p99_ms", "ping p99 ms", ".3f"),
                ("max_ms", "ping max ms", ".3f"),
            ],
        )
    )
    if idle["error"] or idle["still_open"] != idle["opened"]:
        print(f"  ! {idle['error'] or ''} fates: {idle['fates']}")
    print("\nping on its own connection, idle and under hostile clients:\n")
    print(
        table(
            hostile,
            [
                ("scenario", "scenario", ""),
                ("pings", "pings", "d"),
                ("p50_ms", "p50 ms", ".3f"),
                ("p99_ms", "p99 ms", ".3f"),
                ("max_ms", "max ms", ".3f"),
                ("extra_p99_ms", "p99 over idle ms", ".1f"),
                ("target", "target", ""),
                ("met", "met", ""),
                ("peak_rss_mib", "peak RSS MiB", ".1f"),
                ("traffic_text", "hostile requests → outcomes", ""),
            ],
        )
    )
    print("\nThe daemon across the whole load group:\n")
    print(
        table(
            [summary],
            [
                ("start_rss_mib", "RSS at start MiB", ".1f"),
                ("peak_rss_mib", "peak RSS MiB", ".1f"),
                ("end_rss_mib", "RSS at end MiB", ".1f"),
                ("alive", "answers ping at end", ""),
            ],
        )
    )
