"""The floor under the queue benchmark: PostgreSQL doing only the minimum a job queue does, from a
plain psycopg loop, on the same machine (what sdgate's own per-job cost is measured against).

    python benchmarks/queue_floor.py [--jobs 4000] [--workers 4] [--database-url postgresql://...]

In a scratch database (made and dropped): the jobs INSERTed in batches of 25 (one transaction
each), ``--workers`` processes each claiming one job at a time (``UPDATE ... WHERE id = (SELECT ...
FOR UPDATE SKIP LOCKED) RETURNING``) and recording its end (an UPDATE with a small JSON result and a
``pg_notify``), all in autocommit. No outbox, no events, no image, no Python beside the loop: jobs
per second from the first INSERT to the last job ended.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As in queue.py: this folder first on sys.path would let queue.py shadow the standard library's queue.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402

DEFAULT_URL = "postgresql://sdgate@127.0.0.1:55432/sdgate_test"
TABLE = """CREATE TABLE floor_jobs (
    id text PRIMARY KEY, state text NOT NULL, priority int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), request jsonb, result jsonb, worker text,
    started_at timestamptz, finished_at timestamptz)"""
CLAIM = """UPDATE floor_jobs SET state = 'running', worker = %s, started_at = now()
    WHERE id = (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY priority, created_at
                LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, request"""
FINISH = """WITH done AS (UPDATE floor_jobs SET state = 'succeeded', finished_at = now(), result = %s
                          WHERE id = %s RETURNING id)
    SELECT pg_notify('floor_jobs', id) FROM done"""


def worker(url: str, name: str, done: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(CLAIM, (name,)).fetchone()
            if row is None:
                if done.is_set():
                    return
                time.sleep(0.001)
                continue
            result = json.dumps({"images": [{"id": uuid.uuid4().hex, "seed": 1}]})
            conn.execute(FINISH, (result, row[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database-url", default=os.environ.get("SDGATE_TEST_DATABASE_URL") or DEFAULT_URL)
    args = parser.parse_args()
    server = args.database_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"sdgate_floor_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLE)
            conn.execute("CREATE INDEX ON floor_jobs (priority, created_at) WHERE state = 'queued'")
        context = multiprocessing.get_context("spawn")
        done = context.Event()
        workers = [context.Process(target=worker, args=(url, f"w{i}", done)) for i in range(args.workers)]
        for process in workers:
            process.start()
        time.sleep(1.0)  # the workers connected and polling
        started = time.time()
        with psycopg.connect(url, autocommit=True) as conn:
            for first in range(0, args.jobs, 25):
                rows = [(uuid.uuid4().hex, json.dumps({"prompt": f"bench {k}", "steps": 1}))
                        for k in range(first, min(args.jobs, first + 25))]
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany("INSERT INTO floor_jobs (id, state, request) VALUES (%s, 'queued', %s)",
                                    rows)
            while conn.execute("SELECT count(*) FROM floor_jobs WHERE state <> 'succeeded'").fetchone()[0]:
                time.sleep(0.005)
        elapsed = time.time() - started
        done.set()
        for process in workers:
            process.join(30)
        print(f"{args.jobs} jobs, {args.workers} worker processes: {args.jobs / elapsed:.0f} jobs/s "
              f"(load average at the end {os.getloadavg()[0]:.2f})")
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
