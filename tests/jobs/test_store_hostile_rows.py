"""Issue 13: rows written before every text and number was checked still read, and any metadata key
can be filtered on (SQLite's JSON path syntax cannot quote a key holding ``"``)."""

from __future__ import annotations

import json
import math

import pytest

from sdgate.core.requests import GenerationRequest, HiresSettings
from sdgate.jobs.store import SqlJobStore


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: such rows were written by versions before submit checked them, on SQLite;
    PostgreSQL's JSONB never took them."""
    return sqlite_url


def test_any_metadata_key_filters(store: SqlJobStore) -> None:
    keys = ['a"b', "a\\b", "$.x", "a'b", "a.b", "[0]", "ü"]
    ids = {key: store.submit(GenerationRequest(prompt=key), metadata={key: "1", "n": 1}).id for key in keys}
    store.submit(GenerationRequest(prompt="other"), metadata={"a": "1"})
    for key in keys:
        found, _ = store.page(metadata={key: "1"})
        assert [job.id for job in found] == [ids[key]], key
    assert store.page(metadata={'a"b': "2"})[0] == []
    assert store.page(metadata={"n": "1"})[0] == []  # top-level string values only, as before
    both, _ = store.page(metadata={'a"b': "1", "n": "x"})
    assert both == []


def test_rows_with_surrogates_and_non_finite_numbers_read(store: SqlJobStore) -> None:
    request = GenerationRequest(
        prompt="\ud800x", styles=("s\udfff",), cfg_scale=math.nan, hires=HiresSettings(scale=math.inf)
    )
    job = store.submit(
        request,
        metadata={"k": "\udc80", "n": math.nan, "deep": [[math.inf]]},
    )
    for got in (store.get(job.id), store.list()[0], store.page()[0][0]):
        assert got.request.prompt == "\\ud800x" and got.request.styles == ("s\\udfff",)
        assert got.request.cfg_scale == 7.0  # the default: what the row held was no number
        assert got.request.hires is not None and got.request.hires.scale == 2.0
        assert got.metadata == {"k": "\\udc80", "n": None, "deep": [[None]]}
        json.dumps(got.model_dump(mode="json"), allow_nan=False, ensure_ascii=False).encode("utf-8")


def test_a_row_with_metadata_nested_500_deep_reads_cut(store: SqlJobStore) -> None:
    """The issue's 500-deep metadata was stored before submit bounded it; readers get 64 levels."""
    deep: object = 1
    for _ in range(500):
        deep = {"a": deep}
    job = store.submit(GenerationRequest(prompt="x"), metadata=deep)  # type: ignore[arg-type]
    got = store.get(job.id).metadata
    levels = 0
    while isinstance(got, dict):
        got, levels = got["a"], levels + 1
    assert levels == 64 and got is None
    json.dumps(store.get(job.id).model_dump(mode="json"))
