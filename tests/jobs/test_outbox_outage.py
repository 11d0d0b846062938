"""An outbox follower whose reads fail (the database away) warns once per outage, keeps polling,
and says when reading works again: not a traceback at every poll."""

from __future__ import annotations

import logging
import time

import pytest

from sdgate.jobs.outbox import OutboxFollower
from sdgate.jobs.store import SqlJobStore


def test_one_warning_per_outage(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = SqlJobStore("sqlite://")
    follower = OutboxFollower(store.database, origin="elsewhere", poll_s=0.01)
    real = follower.poll_once
    calls = {"n": 0}
    down = {"on": True}

    def flaky() -> int:  # an injected fault: no real database fails on cue
        calls["n"] += 1
        if down["on"]:
            raise OSError("connection refused")
        return real()

    monkeypatch.setattr(follower, "poll_once", flaky)
    caplog.set_level(logging.DEBUG, logger="sdgate.jobs.outbox")
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while calls["n"] < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        down["on"] = False
        while not any("works again" in r.message for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        follower.stop()
        store.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "OSError" in warnings[0].getMessage()
    assert sum("still fails" in r.getMessage() for r in caplog.records) >= 18
