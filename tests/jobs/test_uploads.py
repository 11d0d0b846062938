"""Upload rows on both databases: the same bytes uploaded again keep their first owner and restart
their clock, also when several nodes record them at the same moment."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from sdgate.jobs.schema import uploads
from sdgate.jobs.store import SqlJobStore
from sdgate.jobs.uploads import Uploads


def _rows(store: SqlJobStore) -> list[sa.Row]:  # type: ignore[type-arg]
    with store.database.connect() as conn:
        return list(conn.execute(sa.select(uploads)).all())


def test_a_second_upload_keeps_the_owner_and_restarts_the_clock(store: SqlJobStore) -> None:
    rows = Uploads(store.database)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    rows.record("img_a", owner="ann", content_type="image/png", size=3, now=first)
    rows.record("img_a", owner="bob", content_type="image/png", size=3, now=first + timedelta(days=1))
    (row,) = _rows(store)
    assert row.owner == "ann"
    created = uploads.c.created_at.type.process_result_value(row.created_at, store.database.dialect)
    assert created == first + timedelta(days=1)


def test_nodes_recording_the_same_bytes_at_once_all_succeed(store: SqlJobStore, db_url: str) -> None:
    nodes = [SqlJobStore(db_url) for _ in range(6)]
    start = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def record(node: SqlJobStore, owner: str) -> None:
        try:
            start.wait()
            for i in range(20):
                Uploads(node.database).record(f"img_{i}", owner=owner, content_type="image/png", size=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(n, f"o{i}")) for i, n in enumerate(nodes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for n in nodes:
            n.close()
    assert errors == []
    assert sorted(r.image_id for r in _rows(store)) == sorted(f"img_{i}" for i in range(20))
