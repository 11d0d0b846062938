"""``Listeners``: the one callback list behind ``JobEvents.add_listener`` and the outbox follower's."""

from __future__ import annotations

import logging

import pytest

from sdgate.jobs.events import Listeners


def test_every_listener_runs_in_order_even_after_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    listeners: Listeners[[str]] = Listeners("test listener")

    def boom(value: str) -> None:
        raise RuntimeError("boom")

    listeners.add(lambda v: seen.append("a" + v))
    listeners.add(boom)
    listeners.add(lambda v: seen.append("b" + v))
    with caplog.at_level(logging.ERROR):
        listeners.call("job_1", "!")
    assert seen == ["a!", "b!"]
    assert "job job_1: test listener failed" in caplog.text


def test_remove_stops_calls_and_is_idempotent() -> None:
    seen: list[int] = []
    listeners: Listeners[[int]] = Listeners("test listener")
    remove = listeners.add(seen.append)
    listeners.call("job_1", 1)
    remove()
    remove()
    listeners.call("job_1", 2)
    assert seen == [1]


def test_a_listener_may_remove_itself_while_called() -> None:
    seen: list[int] = []
    listeners: Listeners[[int]] = Listeners("test listener")

    def once(value: int) -> None:
        seen.append(value)
        remove()

    remove = listeners.add(once)
    listeners.call("job_1", 1)
    listeners.call("job_1", 2)
    assert seen == [1]
