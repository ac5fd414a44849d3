"""Steps for the daemon features, against real daemon processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenario, scenarios, then, when

from cuprumd.backend import StreamBackend
from tests.daemon_harness import (
    HIDE_NATIVE,
    Daemon,
    RawConnection,
    start_daemon,
    wait_for,
)
from tests.helpers import pid_alive


@scenario(
    "daemon_protocol.feature", "A client that hangs up during run cancels its job"
)
def test_hangup_cancels_the_job(stream_backend: StreamBackend) -> None:
    """Run once per pump (bound before ``scenarios`` so it is not doubled)."""


scenarios("daemon_lifecycle.feature")
scenarios("daemon_protocol.feature")


@dataclass
class World:
    daemons: list[Daemon] = field(default_factory=list)
    daemon: Daemon | None = None
    replies: dict[str, Any] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    bystander: RawConnection | None = None
    prelude: str = ""
    job_id: str = ""
    pids: set[int] = field(default_factory=set)

    @property
    def live(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def start(self, settings: dict[str, Any], **kwargs: Any) -> Daemon:
        self.daemon = start_daemon(settings, **kwargs)
        self.daemons.append(self.daemon)
        return self.daemon


@pytest.fixture
def world() -> Iterator[World]:
    state = World()
    yield state
    if state.bystander is not None:
        state.bystander.close()
    for daemon in state.daemons:
        daemon.close()


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[Daemon]:
    daemon = start_daemon({"stream_backend": "python"})
    yield daemon
    daemon.terminate()
    daemon.close()


def parse_pipeline(text: str) -> list[dict[str, list[str]]]:
    stages = []
    for part in text.split(" | "):
        program, _, rest = part.partition(" ")
        if program == "printf":
            args = [rest.encode().decode("unicode_escape")]
        else:
            args = rest.split()
        stages.append({"argv": [program, *args]})
    return stages


def run_in_background(world: World, name: str, text: str) -> None:
    def go() -> None:
        with world.live.connect() as conn:
            world.replies[name] = conn.request(
                {"op": "run", "job": {"stages": parse_pipeline(text)}}
            )

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    world.threads.append(thread)


# -- given ---------------------------------------------------------------------


@given(parsers.parse('a daemon configured with stream_backend "{value}"'))
def configured_daemon(world: World, value: str) -> None:
    world.start({"stream_backend": value})


@given("the native extension is hidden")
def hide_native(world: World) -> None:
    world.prelude = HIDE_NATIVE


@given(parsers.parse("a running daemon with a shutdown grace of {grace:f} seconds"))
def daemon_with_grace(world: World, grace: float) -> None:
    world.start({"stream_backend": "python", "shutdown_grace_seconds": grace})


@given(parsers.parse('a client running "{text}"'))
def first_client(world: World, text: str) -> None:
    run_in_background(world, "first", text)


@given(parsers.parse('another client running "{text}"'))
def second_client(world: World, text: str) -> None:
    run_in_background(world, "second", text)
    assert wait_for(
        lambda: world.live.request({"op": "stats"})["result"]["running"] == 2
    )


@given("a running daemon")
def running_daemon(world: World, shared_daemon: Daemon) -> None:
    world.daemon = shared_daemon


@given("a running daemon for the pump under test")
def daemon_for_pump(world: World, stream_backend: StreamBackend) -> None:
    world.start({"stream_backend": str(stream_backend)})


@given("a connected bystander client")
def bystander(world: World) -> None:
    world.bystander = world.live.connect()
    assert world.bystander.request({"op": "ping"})["ok"]


@given("a daemon allowing 1 running job and no queue")
def tiny_daemon(world: World) -> None:
    world.start(
        {"stream_backend": "python", "max_concurrent_jobs": 1, "max_queued_jobs": 0}
    )


@given(parsers.parse('a submitted job "{text}"'))
def submitted_job(world: World, text: str) -> None:
    reply = world.live.request(
        {"op": "submit", "job": {"stages": parse_pipeline(text)}}
    )
    world.job_id = reply["result"]["job_id"]


# -- when ----------------------------------------------------------------------


@when("a client pings the daemon")
def ping(world: World) -> None:
    world.replies["ping"] = world.live.request({"op": "ping"})


@when(parsers.parse('a client runs "{text}"'))
def run(world: World, text: str) -> None:
    world.replies["run"] = world.live.request(
        {"op": "run", "job": {"stages": parse_pipeline(text)}}
    )


@when(parsers.parse('a daemon is started with CUPRUM_STREAM_BACKEND set to "{value}"'))
def start_forced(world: World, value: str) -> None:
    world.start(
        {}, env={"CUPRUM_STREAM_BACKEND": value}, prelude=world.prelude, wait=False
    )


@when("the daemon receives SIGTERM")
def sigterm(world: World) -> None:
    world.replies["status"] = world.live.terminate(timeout=15)
    for thread in world.threads:
        thread.join(5)


@when(parsers.parse("a client sends {request}"))
def send_raw(world: World, request: str) -> None:
    with world.live.connect() as conn:
        world.replies["run"] = conn.request_line(request.encode())


@when(parsers.parse('a client starts running "{text}" and hangs up'))
def run_and_hang_up(world: World, text: str) -> None:
    daemon = world.live
    conn = daemon.connect()
    conn.send({"op": "run", "job": {"stages": parse_pipeline(text)}})
    count = len(parse_pipeline(text))
    assert wait_for(lambda: len(daemon.children()) == count)
    world.pids = set(daemon.children())
    conn.close()


# -- then ----------------------------------------------------------------------


@then(parsers.parse('the ping reports stream backend "{value}"'))
def ping_reports(world: World, value: str) -> None:
    assert world.replies["ping"]["result"]["stream_backend"] == value


@then(
    parsers.parse(
        'the job result reports stream backend "{value}" with output "{output}"'
    )
)
def result_reports(world: World, value: str, output: str) -> None:
    result = world.replies["run"]["result"]
    assert result["stream_backend"] == value
    assert result["stdout"] == output.encode().decode("unicode_escape")


@then("the daemon exits with a non-zero status")
def exits_non_zero(world: World) -> None:
    assert world.live.proc.wait(15) != 0


@then("its log names CUPRUM_STREAM_BACKEND")
def log_names_variable(world: World) -> None:
    assert "CUPRUM_STREAM_BACKEND" in world.live.log()


@then("no socket file is left behind")
def no_socket(world: World) -> None:
    assert not world.live.socket_path.exists()


@then(parsers.parse('the first client gets a result with state "{state}"'))
def first_state(world: World, state: str) -> None:
    assert world.replies["first"]["result"]["state"] == state


@then(parsers.parse('the second client gets a result with state "{state}"'))
def second_state(world: World, state: str) -> None:
    assert world.replies["second"]["result"]["state"] == state


@then("the daemon exits with status 0 and its socket file is gone")
def clean_exit(world: World) -> None:
    assert world.replies["status"] == 0
    assert not world.live.socket_path.exists()


@then(parsers.parse('that client gets the error code "{code}"'))
def error_code(world: World, code: str) -> None:
    reply = world.replies["run"]
    assert reply["ok"] is False
    assert reply["error"]["code"] == code


@then("the bystander can still ping the daemon")
def bystander_fine(world: World) -> None:
    assert world.bystander is not None
    assert world.bystander.request({"op": "ping"})["ok"] is True
    assert world.live.proc.poll() is None


@then(parsers.parse('the job ends as "{state}"'))
def job_ends_as(world: World, state: str) -> None:
    assert wait_for(
        lambda: any(
            e["event"] == "job.finished" and e["state"] == state
            for e in world.live.events()
        )
    )


@then("none of its processes is left")
def processes_gone(world: World) -> None:
    assert world.pids
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in world.pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(pid_alive(p) for p in world.pids)


@then("the submitted job is still running")
def still_running(world: World) -> None:
    reply = world.live.request({"op": "status", "job_id": world.job_id})
    assert reply["result"]["state"] == "running"
