"""``stats`` shows the whole daemon only to root and the daemon's user;
anyone else sees their own jobs, errors and connections."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.daemon_harness import PYTHON, daemon_uid, job, short_tmpdir, start_daemon

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="a client of another uid needs root to start"
)
OTHER = 65533
PROBE = (
    "import json, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.settimeout(20)\n"
    "s.connect(sys.argv[1])\n"
    "f = s.makefile('rwb')\n"
    "out = []\n"
    "for line in sys.argv[2:]:\n"
    "    f.write(line.encode() + b'\\n'); f.flush()\n"
    "    out.append(json.loads(f.readline()))\n"
    "print(json.dumps(out))\n"
)


def as_other(socket_path: str, *requests: dict[str, object]) -> list[dict[str, object]]:
    argv = [
        "setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups",
        PYTHON, "-I", "-c", PROBE, socket_path, *(json.dumps(r) for r in requests),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(done.stdout))


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
        replies = as_other(
            path,
            {"op": "run", "job": {"stages": [{"argv": ["true"]}]}},
            {"op": "stats"},
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
