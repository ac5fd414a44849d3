"""Which user stages run as: never root, and only a switch the daemon may make."""

from __future__ import annotations

import pytest

from cuprumd.containment import decide_job_user
from cuprumd.errors import ConfigError

USERS = {"nobody": (65534, 65534), "cuprum-job": (990, 980), "root": (0, 0)}


def lookup(name: str) -> tuple[int, int]:
    return USERS[name]


def test_a_root_daemon_runs_jobs_as_nobody_unless_told_otherwise() -> None:
    assert decide_job_user(None, euid=0, may_switch=True, lookup=lookup) == (
        65534,
        65534,
    )
    assert decide_job_user("cuprum-job", euid=0, may_switch=True, lookup=lookup) == (
        990,
        980,
    )


def test_an_unprivileged_daemon_runs_jobs_as_itself_by_default() -> None:
    assert decide_job_user(None, euid=1000, may_switch=False, lookup=lookup) is None
    assert (
        decide_job_user("nobody", euid=65534, may_switch=False, lookup=lookup) is None
    )


def test_jobs_never_run_as_root() -> None:
    with pytest.raises(ConfigError, match="must not run as root"):
        decide_job_user("root", euid=0, may_switch=True, lookup=lookup)


def test_an_unknown_user_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no user 'ghost'"):
        decide_job_user("ghost", euid=0, may_switch=True, lookup=lookup)


def test_a_switch_the_daemon_cannot_make_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="needs the daemon to run as root"):
        decide_job_user("cuprum-job", euid=1000, may_switch=False, lookup=lookup)
    assert decide_job_user("cuprum-job", euid=1000, may_switch=True, lookup=lookup) == (
        990,
        980,
    )


def test_a_job_peer_is_known_by_uid_by_group_or_by_being_gone() -> None:
    import os
    import subprocess

    from cuprumd.containment import Guard
    from cuprumd.engine.launch import launch_python
    from cuprumd.engine.sandbox import build_policy
    from cuprumd.peers import Peer

    guard = Guard(build_policy("off", []), None, None, "python", launch_python, ())
    me = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    assert not guard.is_job_peer(me)
    finished = subprocess.Popen(["true"])
    finished.wait()
    # A peer that has left cannot be checked: it may have handed on its socket.
    assert guard.is_job_peer(Peer(pid=finished.pid, uid=os.getuid(), gid=0))
    assert guard.is_job_peer(Peer(pid=0, uid=os.getuid(), gid=0))
    guard.index.add(os.getppid(), os.getpgrp())  # as if we were in a job
    assert guard.is_job_peer(me)
    guard.index.discard([os.getppid()], os.getpgrp())
    assert not guard.is_job_peer(me)
    # A client of another uid is never a job: jobs cannot change their uid.
    assert not guard.is_job_peer(Peer(pid=0, uid=os.getuid() + 1, gid=0))
    with_user = Guard(
        build_policy("off", []), None, None, "python", launch_python, (), (4242, 4242)
    )
    assert with_user.is_job_peer(Peer(pid=os.getpid(), uid=4242, gid=4242))
    assert not with_user.is_job_peer(me)


def test_a_process_that_cannot_gain_privileges_is_taken_for_a_job() -> None:
    # Every sandboxed stage carries no_new_privs, and nothing it starts can
    # drop it, however it leaves the job's process group.
    import os
    import subprocess
    import time
    from pathlib import Path

    from cuprumd.containment import Guard
    from cuprumd.engine.launch import launch_python
    from cuprumd.engine.sandbox import build_policy, open_sandbox
    from cuprumd.peers import Peer

    policy = build_policy("strict", ["/usr/bin/true"])
    sandbox = open_sandbox(policy)
    guard = Guard(policy, sandbox, None, "python", launch_python, ())
    plain = subprocess.Popen(["sleep", "30"])
    escapee = subprocess.Popen(["setpriv", "--no-new-privs", "sleep", "30"])
    try:
        for proc in (plain, escapee):  # until both run sleep itself
            while (
                not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep")
            ):
                time.sleep(0.005)
        uid, gid = os.getuid(), os.getgid()
        assert not guard.is_job_peer(Peer(pid=plain.pid, uid=uid, gid=gid))
        assert guard.is_job_peer(Peer(pid=escapee.pid, uid=uid, gid=gid))
    finally:
        for proc in (plain, escapee):
            proc.kill()
            proc.wait()
        guard.close()
