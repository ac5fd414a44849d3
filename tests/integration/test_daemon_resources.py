"""A burst of jobs of every kind leaves the daemon as it found it.

Descriptors and children of the real daemon process are compared before and
after: a leak per job would be invisible to any single test but fatal to a
daemon that runs for months.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

from cuprumd.backend import StreamBackend
from tests.daemon_harness import Daemon, job, start_daemon, wait_for
from tests.helpers import SLOT_CACHE, SLOT_DIR, processes

DAEMON_SETTINGS = {"max_concurrent_jobs": 8, "max_queued_jobs": 128}

JOBS = [
    (job(["printf", "x"], ["cat"], ["wc", "-c"]), "succeeded"),
    (job(["cat", "/nonexistent"], ["cat"]), "failed"),
    (job(["true"], cwd="/usr/nonexistent-dir"), "error"),
    (job(["sleep", "5"], ["cat"], timeout=0.1), "timed_out"),
    (job(["yes"], ["head", "-n", "1"]), "succeeded"),
    (job(["cat"], ["tac"], stdin="b\na\n" * 1000, fail_fast=True), "succeeded"),
]


def descriptors(pid: int) -> dict[str, str]:
    """fd number -> what it points at (``pipe:[123]``, ``socket:[456]``)."""
    table = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            table[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return table


def kinds(table: dict[str, str]) -> Counter[str]:
    """The descriptor table without inode numbers or pool slot names, which
    change per job; anonymous inodes keep their kind (a pidfd is not a
    sandbox ruleset)."""
    return Counter(
        re.sub(
            r"\d+|job-[0-9a-f]+",
            "N",
            target if target.startswith("anon_inode:") else target.split(":[")[0],
        )
        for target in table.values()
    )


def is_slot_cache(target: str) -> bool:
    """A descriptor the daemon keeps with an idle job slot: a cgroup slot
    and its events file, a scratch directory's ruleset."""
    return target.endswith(SLOT_CACHE) or bool(SLOT_DIR.search(target))


def leaked(before: dict[str, str], after: dict[str, str]) -> Counter[str]:
    """Kinds of descriptor the daemon holds more of than before, the idle
    slots' caches aside: how many slots are idle depends on how the jobs
    happened to overlap (the test bounds them instead)."""

    def without_caches(table: dict[str, str]) -> dict[str, str]:
        return {fd: t for fd, t in table.items() if not is_slot_cache(t)}

    return kinds(without_caches(after)) - kinds(without_caches(before))


def zombies(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid and p.state == "Z"]


def settled(daemon: Daemon) -> bool:
    """No job process left and no connection but the one asking.

    Connections of clients that hung up close asynchronously after their
    job ended; a baseline taken before that would count their sockets.
    """
    if daemon.children():
        return False
    stats = daemon.request({"op": "stats"})["result"]
    return bool(stats["connections"] == 1 and stats["running"] == 0)


def quiet_table(pid: int) -> dict[str, str]:
    """The descriptor table once two reads 0.1 s apart agree.

    The connection ``settled`` used to ask for ``stats`` is closed by the
    daemon only when it reads the EOF, a moment after the reply.
    """
    table = descriptors(pid)
    for _ in range(100):
        time.sleep(0.1)
        again = descriptors(pid)
        if kinds(again) == kinds(table):
            return again
        table = again
    return table


def fill_pools(daemon: Daemon) -> None:
    """Run as many jobs at once as the daemon admits: its idle cgroup slots
    and scratch directories (with their rulesets) reach the number no later
    burst can pass, however its jobs happen to overlap."""
    with daemon.connect() as conn:
        ids = [
            conn.request({"op": "submit", "job": job(["sleep", "0.3"])})["result"][
                "job_id"
            ]
            for _ in range(DAEMON_SETTINGS["max_concurrent_jobs"])
        ]
        for job_id in ids:
            assert conn.request({"op": "wait", "job_id": job_id})["result"][
                "state"
            ] == ("succeeded")


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
    fill_pools(daemon)
    burst(daemon)  # warm-up: whatever the daemon opens once is open now
    assert wait_for(lambda: settled(daemon), timeout=10)
    before = quiet_table(pid)
    burst(daemon)
    assert wait_for(lambda: settled(daemon), timeout=10), daemon.children()
    assert wait_for(lambda: not leaked(before, descriptors(pid)), timeout=10), leaked(
        before, descriptors(pid)
    )
    # Per idle slot: a cgroup directory, its cgroup.events, a ruleset.
    slots = DAEMON_SETTINGS["max_concurrent_jobs"]
    assert sum(map(is_slot_cache, descriptors(pid).values())) <= 3 * slots
    assert zombies(pid) == []
    assert daemon.request({"op": "ping"})["result"]["stream_backend"] == str(
        stream_backend
    )


LOW_FD_LIMIT = (
    "import resource\n"
    "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
)


def test_the_daemon_lifts_its_descriptor_limit() -> None:
    # Each running job holds about six descriptors per stage: systemd's
    # default soft limit of 1024 would cap the daemon at a few dozen jobs.
    # Started with a soft limit of 256, it must raise it towards the hard.
    daemon = start_daemon({"stream_backend": "python"}, prelude=LOW_FD_LIMIT)
    try:
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        expected = 1 << 16 if hard == "unlimited" else min(1 << 16, int(hard))
        assert int(soft) == expected
        assert any(e["event"] == "fd_limit.raised" for e in daemon.events())
    finally:
        daemon.close()
