"""A burst of jobs of every kind leaves the daemon as it found it.

Descriptors and children of the real daemon process are compared before and
after: a leak per job would be invisible to any single test but fatal to a
daemon that runs for months.
"""

from __future__ import annotations

import os
import threading

from cuprumd.backend import StreamBackend
from tests.daemon_harness import Daemon, job, wait_for
from tests.helpers import processes

DAEMON_SETTINGS = {"max_concurrent_jobs": 8, "max_queued_jobs": 128}

JOBS = [
    (job(["printf", "x"], ["cat"], ["wc", "-c"]), "succeeded"),
    (job(["cat", "/nonexistent"], ["cat"]), "failed"),
    (job(["true"], cwd="/nonexistent-dir"), "error"),
    (job(["sleep", "5"], ["cat"], timeout=0.1), "timed_out"),
    (job(["yes"], ["head", "-n", "1"]), "succeeded"),
    (job(["cat"], ["sort"], stdin="b\na\n" * 1000, fail_fast=True), "succeeded"),
]


def descriptors(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)


def zombies(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid and p.state == "Z"]


def burst(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        for n, (spec, state) in enumerate(JOBS * 3):
            reply = conn.request({"id": n, "op": "run", "job": spec})
            assert reply["result"]["state"] == state, reply
        ids = [
            conn.request({"op": "submit", "job": spec})["result"]["job_id"]
            for spec, _ in JOBS
        ]
        for job_id, (_, state) in zip(ids, JOBS, strict=True):
            reply = conn.request({"op": "wait", "job_id": job_id})
            assert reply["result"]["state"] == state
        sleeper = conn.request({"op": "submit", "job": job(["sleep", "30"])})
        conn.request({"op": "cancel", "job_id": sleeper["result"]["job_id"]})
    for _ in range(3):  # clients that leave in the middle of a run
        with daemon.connect() as gone:
            gone.send({"op": "run", "job": job(["sleep", "30"], ["cat"])})

    def client() -> None:
        with daemon.connect() as conn:
            for spec, state in JOBS[:3]:
                assert (
                    conn.request({"op": "run", "job": spec})["result"]["state"] == state
                )

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_burst_of_jobs_leaks_no_fd_and_no_process(
    daemon: Daemon, stream_backend: StreamBackend
) -> None:
    pid = daemon.proc.pid
    burst(daemon)  # warm-up: whatever the daemon opens once is open now
    assert wait_for(lambda: not daemon.children(), timeout=10)
    before = descriptors(pid)
    burst(daemon)
    assert wait_for(lambda: not daemon.children(), timeout=10), daemon.children()
    assert wait_for(lambda: descriptors(pid) == before, timeout=10), (
        before,
        descriptors(pid),
    )
    assert zombies(pid) == []
    assert daemon.request({"op": "ping"})["result"]["stream_backend"] == str(
        stream_backend
    )
