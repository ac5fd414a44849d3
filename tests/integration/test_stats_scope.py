"""``stats`` shows the whole daemon only to root and the daemon's user;
anyone else sees their own jobs, errors and connections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.daemon_harness import (
    as_other_uid,
    daemon_uid,
    job,
    short_tmpdir,
    start_daemon,
)

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="a client of another uid needs root to start"
)
OTHER = 65533


def test_another_user_sees_only_their_own_counters() -> None:
    workdir = short_tmpdir()
    workdir.chmod(0o755)
    daemon = start_daemon(
        {
            "allowed_uids": [0, OTHER, daemon_uid()],
            "socket_mode": "0666",
            "programs": ["true", "cat"],
        },
        workdir=workdir,
    )
    try:
        with daemon.connect() as conn:
            for _ in range(3):
                conn.request({"op": "run", "job": job(["true"])})
            conn.request({"op": "run", "job": job(["rm"])})  # program_not_allowed
        path = str(daemon.socket_path)
        replies = as_other_uid(
            OTHER,
            Path(path),
            [{"op": "run", "job": {"stages": [{"argv": ["true"]}]}}, {"op": "stats"}],
        )
        theirs = replies[1]["result"]
        assert isinstance(theirs, dict)
        assert theirs["scope"] == "uid"
        assert theirs["accepted"] == 1
        assert theirs["jobs"]["succeeded"] == 1
        assert theirs["errors"] == {}  # root's refused request is not theirs
        assert theirs["connections"] == 1
        whole = daemon.request({"op": "stats"})["result"]
        assert whole["scope"] == "daemon"
        assert whole["accepted"] == 4
        assert whole["errors"] == {"program_not_allowed": 1}
    finally:
        daemon.terminate()
        daemon.close()
