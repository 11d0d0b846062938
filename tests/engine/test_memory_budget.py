"""The budget ``check_request`` compares each job's memory estimate with: the whole device."""

from __future__ import annotations

from types import SimpleNamespace

from sdgate.core.engine import memory_budget
from sdgate.engine.memory import job_budget, ram_total_bytes
from sdgate.engine.null import NullEngine
from tests.fakes import FakeEngine


def test_cpu_budget_is_the_machines_memory_at_the_engines_width() -> None:
    budget = job_budget(SimpleNamespace(type="cpu"), SimpleNamespace(itemsize=4))
    assert budget is not None and budget.bytes == ram_total_bytes() and budget.value_bytes == 4
    assert "CPU" in budget.where


def test_engines_that_do_not_say_have_no_budget() -> None:
    assert memory_budget(None) is None
    assert memory_budget(FakeEngine()) is None  # no memory_budget method: no memory check
    assert NullEngine.memory_budget(None) is None  # type: ignore[arg-type]
