"""``make bench``: run the measured comparisons and print the tables.

Results go to ``benchmarks/results/latest.json`` and an SVG plot of the
throughput to ``docs/performance-throughput.svg``.

The deployed daemon is an unprivileged user, held to the per-user pipe
budget that root is exempt from. Run as root with ``--unprivileged-uid``
(``make bench`` passes 65534), the throughput and daemon groups run a
second time as that uid (``setpriv``), their tables labelled, followed by
one table setting the two throughputs side by side. The ``budget`` group
(root with ``--unprivileged-uid``) runs 64 concurrent pipelines on a root
daemon and on one of that uid; ``--pipe-budget PAGES`` adds a third daemon
of that uid with the machine's per-user pipe limit raised for its run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import throughput
from benchmarks.report import svg_bars, table

ROOT = Path(__file__).resolve().parent.parent
GROUPS = (
    "throughput",
    "pacing",
    "daemon",
    "load",
    "cli",
    "journal",
    "pipe",
    "budget",
)
#: What the unprivileged pass repeats: the tables the pipe budget can change.
UNPRIVILEGED_GROUPS = ("throughput", "daemon", "pipe")


def _who() -> str:
    uid = os.getuid()
    return "root" if uid == 0 else f"unprivileged, uid {uid}"


def _run_throughput(quick: bool, reps: int, label: str, *, plot: bool) -> list[Any]:
    big = (64 << 20) if quick else throughput.GiB
    sizes = {
        "1 GiB" if not quick else "64 MiB": big,
        "1 MiB": 1 << 20,
        "1 KiB": 1024,
    }
    pipe_size = throughput.pipe_size_alone(throughput.deployed_options())
    rows = throughput.measure(sizes, reps)
    for row in rows:
        row["pipe_size"] = pipe_size
    pipes = f"{pipe_size >> 10} KiB" if pipe_size else "the default 64 KiB"
    print(
        f"\nThroughput [{label}]: head -c N /dev/zero | cat | wc -c (median of",
        reps,
        f"runs); inter-stage pipes {pipes}\n",
    )
    print(
        table(
            rows,
            [
                ("size", "size", ""),
                ("variant", "variant", ""),
                ("median_s", "median s", ".4f"),
                ("mib_per_s", "MiB/s", ".0f"),
                ("vs_shell", "ratio to shell", ".2f"),
            ],
        )
    )
    if plot:
        biggest = [r for r in rows if r["bytes"] == big]
        svg_bars(
            biggest,
            "vs_shell",
            f"{biggest[0]['size']} through two pumps: throughput relative to the shell",
            ROOT / "docs" / "performance-throughput.svg",
        )
    return rows


def _run_pacing(quick: bool, reps: int, label: str) -> list[Any]:
    size = (64 << 20) if quick else (512 << 20)
    capacities = {
        "8 KiB": 8 << 10,
        "64 KiB": 64 << 10,
        "256 KiB": 256 << 10,
        "1 MiB": 1 << 20,
    }
    rows = throughput.measure_pacing(capacities, size, reps)
    print(
        f"\nThe Rust pump's pacer [{label}]: head -c {size >> 20}M /dev/zero | cat |"
        f" wc -c, every pipe at one capacity, median of {reps} runs\n"
    )
    print(
        table(
            rows,
            [
                ("capacity", "pipe capacity", ""),
                ("paced_mib_s", "paced MiB/s", ".0f"),
                ("unpaced_mib_s", "unpaced MiB/s", ".0f"),
                ("paced_vs_unpaced", "paced / unpaced", ".2f"),
            ],
        )
    )
    return rows


def run_groups(
    groups: list[str],
    quick: bool,
    reps: int,
    *,
    child: bool,
    uid: int | None = None,
    raised_pages: int | None = None,
) -> dict[str, Any]:
    """Run ``groups`` as whoever this process runs as (``child``: the
    unprivileged re-run, which leaves the plot alone)."""
    label = _who()
    results: dict[str, Any] = {"user": label}
    if "throughput" in groups:
        results["throughput"] = _run_throughput(quick, reps, label, plot=not child)
    if "pacing" in groups:
        results["pacing"] = _run_pacing(quick, reps, label)
    if "daemon" in groups:
        from benchmarks import daemon

        results["daemon"] = daemon.run_all(quick=quick)
    if "load" in groups:
        from benchmarks import load

        results["load"] = load.run_all(quick=quick)
    if "cli" in groups:
        from benchmarks import cli

        results["cli"] = cli.run_all(quick=quick)
    if "journal" in groups:
        from benchmarks import journal

        results["journal"] = journal.run_all(quick=quick)
    if "pipe" in groups:
        from benchmarks import pipe

        results["pipe"] = pipe.run_all(quick=quick, reps=reps)
    if "budget" in groups:
        from benchmarks import budget

        why = budget.can_run(uid)
        if why is None and uid is not None:
            results["budget"] = budget.run_all(
                uid=uid, quick=quick, reps=min(reps, 3), raised_pages=raised_pages
            )
        else:
            print(f"\nthe pipe budget group is skipped: {why}", file=sys.stderr)
    return results


#: What the unprivileged run needs to read: the package, its extension, the
#: benchmarks; it says which interpreter it got.
_PROBE = "import sys, benchmarks.throughput, cuprumd._native; print(sys.version)"


def _probe(uid: int, env: dict[str, str]) -> str | None:
    """Whether ``uid`` can run the benchmarks; warn when its interpreter is
    not ours (a shared ``libpython`` it cannot reach is replaced by the
    system's, whose stdlib it then uses too). ``None``: it cannot."""
    from benchmarks.daemon import as_user

    probe = subprocess.run(
        [*as_user(uid), sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        print(
            f"\nunprivileged run skipped: uid {uid} cannot run the benchmarks"
            f" from {ROOT} (the repository and {sys.executable} must be"
            f" readable by it):\n{probe.stderr.strip()}",
            file=sys.stderr,
        )
        return None
    version = probe.stdout.strip()
    if version != sys.version:
        print(
            f"\nWARNING: uid {uid} runs Python {version.split()[0]}, not"
            f" {sys.version.split()[0]} as here: parts of the interpreter are"
            " out of its reach, so its figures mix in another Python build."
            " Make the interpreter readable, or run both from a copy that is.",
            file=sys.stderr,
        )
    return version


def run_unprivileged(
    uid: int, groups: list[str], quick: bool, reps: int
) -> dict[str, Any] | None:
    """Run ``groups`` again as ``uid``; ``None`` (and why) when it cannot.

    The throughput group runs the engine in-process, so it is a second
    ``python -m benchmarks`` as ``uid``. The daemon group stays here, its
    clients root, and starts every daemon as ``uid``: a process of that
    uid could not start the interpreter when it lives where ``uid``
    cannot search (``daemon.as_user``). The pipe group does the same:
    its daemons run as ``uid``, ``cuprumctl`` and the shell as root."""
    from benchmarks import daemon

    if shutil.which("setpriv") is None:
        print("\nunprivileged run skipped: setpriv is not installed", file=sys.stderr)
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUPRUM_")}
    version = _probe(uid, env)
    if version is None:
        return None
    results: dict[str, Any] = {"user": f"unprivileged, uid {uid}", "python": version}
    if "throughput" in groups:
        child = _child_run(uid, ["throughput"], quick, reps, env)
        results["throughput"] = child["throughput"]
    if "daemon" in groups:
        results["daemon"] = daemon.run_all(quick=quick, user=uid)
    if "pipe" in groups:
        from benchmarks import pipe

        results["pipe"] = pipe.run_all(quick=quick, reps=reps, user=uid)
    return results


def _child_run(
    uid: int, groups: list[str], quick: bool, reps: int, env: dict[str, str]
) -> dict[str, Any]:
    from benchmarks.daemon import as_user

    with tempfile.TemporaryDirectory(prefix="cuprumd-bench-") as tmp:
        os.chown(tmp, uid, uid)
        out = Path(tmp) / "results.json"
        command = [
            *as_user(uid),
            sys.executable,
            "-m",
            "benchmarks",
            "--reps",
            str(reps),
            "--results",
            str(out),
            *(["--quick"] if quick else []),
            *(arg for group in groups for arg in ("--only", group)),
        ]
        subprocess.run(command, cwd=ROOT, env={**env, "HOME": tmp}, check=True)
        child: dict[str, Any] = json.loads(out.read_text())
        return child


def print_side_by_side(privileged: list[Any], unprivileged: list[Any]) -> None:
    """One row per size and variant: root's MiB/s next to the unprivileged."""
    theirs = {(r["size"], r["variant"]): r for r in unprivileged}
    rows = []
    for mine in privileged:
        other = theirs.get((mine["size"], mine["variant"]))
        if other is None:
            continue
        rows.append(
            {
                "size": mine["size"],
                "variant": mine["variant"],
                "root": mine["mib_per_s"],
                "unprivileged": other["mib_per_s"],
                "ratio": other["mib_per_s"] / mine["mib_per_s"],
            }
        )
    sizes = {
        "root": privileged[0]["pipe_size"],
        "unprivileged": unprivileged[0]["pipe_size"],
    }
    pipes = ", ".join(
        f"{who} {size >> 10 if size else 64} KiB" for who, size in sizes.items()
    )
    print(f"\nThroughput, root against unprivileged (inter-stage pipes: {pipes})\n")
    print(
        table(
            rows,
            [
                ("size", "size", ""),
                ("variant", "variant", ""),
                ("root", "root MiB/s", ".0f"),
                ("unprivileged", "unprivileged MiB/s", ".0f"),
                ("ratio", "unprivileged / root", ".2f"),
            ],
        )
    )


def print_daemon_side_by_side(
    privileged: dict[str, Any], other: dict[str, Any]
) -> None:
    """Jobs/s per daemon and the 64 concurrent pipelines, root against not."""
    theirs = {r["variant"]: r for r in other["rows"]}
    rows = [
        {
            "what": f"{mine['variant']}: `true` jobs/s, 8 clients",
            "root": mine["jobs_per_s"],
            "unprivileged": theirs[mine["variant"]]["jobs_per_s"],
        }
        for mine in privileged["rows"]
        if mine["variant"] in theirs
    ]
    for backend, mine in privileged["rss"].items():
        if backend in other["rss"]:
            rows.append(
                {
                    "what": f"{backend}: MiB/s, 64 concurrent pipelines",
                    "root": mine["mib_per_s"],
                    "unprivileged": other["rss"][backend]["mib_per_s"],
                }
            )
    for row in rows:
        row["ratio"] = row["unprivileged"] / row["root"]
    print("\nDaemon, root against unprivileged\n")
    print(
        table(
            rows,
            [
                ("what", "daemon", ""),
                ("root", "root", ".0f"),
                ("unprivileged", "unprivileged", ".0f"),
                ("ratio", "unprivileged / root", ".2f"),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 reps")
    parser.add_argument(
        "--only",
        choices=GROUPS,
        action="append",
        default=None,
        help="one group (repeatable)",
    )
    parser.add_argument(
        "--unprivileged-uid",
        type=int,
        default=None,
        metavar="UID",
        help="as root: run the throughput and daemon groups again as UID",
    )
    parser.add_argument(
        "--pipe-budget",
        type=int,
        default=None,
        metavar="PAGES",
        help="as root: the budget group also runs a daemon as the unprivileged"
        " uid with fs.pipe-user-pages-soft set to PAGES (restored after)",
    )
    parser.add_argument("--results", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps
    groups: list[str] = args.only or list(GROUPS)
    child = args.results is not None
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        **run_groups(
            groups,
            args.quick,
            reps,
            child=child,
            uid=args.unprivileged_uid,
            raised_pages=args.pipe_budget,
        ),
    }
    again = [g for g in groups if g in UNPRIVILEGED_GROUPS]
    if args.unprivileged_uid is not None and os.getuid() != 0:
        print(f"\nno second run as uid {args.unprivileged_uid}: already unprivileged")
    elif args.unprivileged_uid is not None and again:
        other = run_unprivileged(args.unprivileged_uid, again, args.quick, args.reps)
        if other is not None:
            results["unprivileged"] = other
            if "throughput" in results and "throughput" in other:
                print_side_by_side(results["throughput"], other["throughput"])
            if "daemon" in results and "daemon" in other:
                print_daemon_side_by_side(results["daemon"], other["daemon"])
    out = args.results or ROOT / "benchmarks" / "results" / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not child:
        print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
