"""The reload plan: which keys a serving daemon takes over, and which wait."""

from __future__ import annotations

from cuprumd.backend import StreamBackend
from cuprumd.reload import RELOADABLE, plan_reload
from cuprumd.settings import FIELD_NAMES, Settings


def test_reloadable_keys_are_taken_and_the_others_kept_and_named() -> None:
    running = Settings(programs=["cat"], stream_backend=StreamBackend.PYTHON)
    loaded = Settings(
        programs=["cat", "tac"], stream_backend=StreamBackend.RUST, max_stages=3
    )
    plan = plan_reload(running, loaded)
    assert set(plan.applied) == {"programs", "max_stages"}
    assert plan.restart_needed == ("stream_backend",)
    assert plan.settings.programs == ["cat", "tac"]
    assert plan.settings.max_stages == 3
    assert plan.settings.stream_backend is StreamBackend.PYTHON
    assert plan.rebuilds_sandbox


def test_nothing_changed_is_an_empty_plan() -> None:
    plan = plan_reload(Settings(), Settings())
    assert (plan.applied, plan.restart_needed) == ((), ())
    assert not plan.rebuilds_sandbox


def test_every_reloadable_key_is_a_setting() -> None:
    assert RELOADABLE <= FIELD_NAMES
