"""Queue benchmark: what the job queue itself costs, with the null engine (no model, no GPU).

    python benchmarks/queue.py [--jobs 2000] [--latency-jobs 200] [--submitters 4] [--steps 1]
                               [--database-url postgresql://sdgate@127.0.0.1:55432/sdgate_test]
                               [--configs sqlite,pg1,pg4] [--settle-s 0]

Three set-ups, printed side by side:

- ``sqlite``: embedded mode (``sdgate serve``): one SQLite file, one store shared by the submitting
  side and one worker thread; events go through the in-process bus.
- ``pg1`` / ``pg4``: cluster mode on a fresh PostgreSQL database (made on the server of
  ``--database-url`` and dropped at the end): an "API node" store that submits and listens, and a
  "worker node" per worker: 1 or 4 separate processes (``multiprocessing``, spawned), each with its
  own store, outbox follower and one ``Worker`` thread, as ``sdgate worker`` nodes run in
  production (``--worker-mode threads``: one worker-node store with N ``Worker`` threads in this
  process instead). A submission reaches the workers and a finish reaches the API node through the outbox
  and LISTEN/NOTIFY, between processes, so no one GIL bounds the figures.

Every job runs the real worker path: claim (with its lease), the null engine (``--steps`` steps,
64x64), a PNG into a local image store, the outcome, the events. Figures:

- **throughput**: ``--jobs`` jobs submitted at once by ``--submitters`` threads, each in
  submissions of ``--submit-batch`` jobs (``submit_many``: one transaction each, as a caller with
  many jobs submits them; 1: one ``submit`` per job); jobs/s from the first submit to the API node
  hearing the last job's end.
- **latency at low load**: ``--latency-jobs`` jobs one at a time; per job, *submit -> claim*
  (``started_at - created_at``, the rows' own clocks), *finish -> notified* (the API node's bus
  publishing the terminal event, minus ``finished_at``) and *end to end* (``submit()`` called to
  notified: everything the queue adds, the null engine's own few milliseconds included). Median and
  95th percentile.

``--settle-s S`` waits S seconds idle before each set-up: on a machine that slows a CPU busy for a
while (a shared VM), the set-up run last would otherwise pay for the ones before it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file, queue.py, would then
# shadow the standard library's queue module (psycopg and concurrent.futures import it).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from sdgate.core.engine import EngineInputs, NoControl  # noqa: E402
from sdgate.core.images import encode_png  # noqa: E402
from sdgate.core.jobs import Job, JobEventKind, JobState  # noqa: E402
from sdgate.core.models import ModelCatalog  # noqa: E402
from sdgate.core.requests import GenerationRequest  # noqa: E402
from sdgate.core.results import GenerationResult, StoredImage  # noqa: E402
from sdgate.engine.null import NullEngine  # noqa: E402
from sdgate.jobs.events import TERMINAL_EVENTS  # noqa: E402
from sdgate.jobs.factory import Stores, open_stores  # noqa: E402
from sdgate.jobs.store import Outcome  # noqa: E402
from sdgate.settings import Settings  # noqa: E402
from sdgate.worker.runner import Worker  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://sdgate@127.0.0.1:55432/sdgate_test"
WARM_UP_JOBS = 20


@dataclass(frozen=True)
class Setup:
    name: str  # the column's title
    cluster: bool  # False: one store for both sides (embedded)
    workers: int


SETUPS = {
    "sqlite": Setup("SQLite embedded, 1 worker", cluster=False, workers=1),
    "pg1": Setup("PostgreSQL, 1 worker", cluster=True, workers=1),
    "pg4": Setup("PostgreSQL, 4 workers", cluster=True, workers=4),
}


@dataclass
class Figures:
    jobs_per_s: float = 0.0
    submit_to_claim_ms: list[float] = field(default_factory=list)
    finish_to_notified_ms: list[float] = field(default_factory=list)
    end_to_end_ms: list[float] = field(default_factory=list)
    failed: int = 0


class Notified:
    """When the API side's bus published each job's terminal event (wall clock)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.failed = 0
        self._cond = threading.Condition()
        self._order: list[str] = []  # the ids of ``at`` in the order they ended

    def __call__(self, kind: JobEventKind, job: Job) -> None:
        if kind in TERMINAL_EVENTS:
            now = time.time()
            with self._cond:
                if job.id not in self.at:
                    self.at[job.id] = now
                    self._order.append(job.id)
                self.failed += kind is not JobEventKind.SUCCEEDED
                self._cond.notify_all()

    def wait(self, ids: list[str], timeout: float) -> None:
        """Until every job of ``ids`` ended: each wake-up looks only at the jobs that ended since
        the last (the benchmark's own bookkeeping must not cost O(jobs) per event)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            missing = {i for i in ids if i not in self.at}
            seen = len(self._order)
            while missing:
                if len(self._order) != seen:
                    missing.difference_update(self._order[seen:])
                    seen = len(self._order)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(missing)} job(s) not finished within {timeout} s")
                self._cond.wait(left)


@contextmanager
def pg_database(server_url: str) -> Iterator[str]:
    """A fresh database on ``server_url``'s server, dropped afterwards."""
    url = sa.make_url(server_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"sdgate_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _request(steps: int, i: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"bench {i}", width=64, height=64, steps=steps, seed=i)


def _engine(settings: Settings) -> NullEngine:
    return NullEngine(settings, ModelCatalog(settings, builtin_dir=None))


def _settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp / "data", models_dir=tmp / "no-models", engine="null", worker_poll_s=0.5)


class GroupRunner:
    """``--outcomes many``: NOT the real worker, the store's own ceiling. A thread that claims up to
    8 jobs (``claim_group``), runs each on the null engine with no control reads and no progress
    writes, stores its PNG, and records the group's outcomes in one call (``finish_many``, as the
    worker records a quick group's ends): what the queue costs without the worker's own bookkeeping
    (its control handles, leases, logs, metrics and registry)."""

    def __init__(self, stores: Stores, engine: NullEngine, worker_id: str) -> None:
        self._stores, self._engine, self.worker_id = stores, engine, worker_id
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"bench-{worker_id}", daemon=True)

    def start(self) -> None:
        self._stores.events.add_listener(lambda kind, job: self._wake.set(), kinds=(JobEventKind.QUEUED,))
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        store = self._stores.jobs
        while not self._stop.is_set():
            self._wake.clear()
            claimed = store.claim_group(self.worker_id, limit=8)
            if not claimed:
                self._wake.wait(0.5)
                continue
            outcomes = []
            for job in claimed:
                assert isinstance(job.request, GenerationRequest)
                output = self._engine.generate(job.request, EngineInputs(), NoControl())
                stored = tuple(
                    StoredImage(id=self._stores.images.put(encode_png(g.image, g.infotext)), seed=g.seed,
                                width=g.image.width, height=g.image.height, infotext=g.infotext)
                    for g in output.images
                )
                result = GenerationResult(images=stored, model_name=output.model_name, width=output.width,
                                          height=output.height, steps=output.steps, timings=output.timings)
                outcomes.append(Outcome(job.id, JobState.SUCCEEDED, result=result))
            store.finish_many(outcomes, worker_id=self.worker_id)  # type: ignore[attr-defined]


def worker_node(database: str, tmp: str, worker_id: str, ready: Any, stop: Any) -> None:
    """A worker node's process: its own store, outbox follower and one ``Worker`` thread, until
    ``stop`` is set."""
    settings = _settings(Path(tmp))
    stores = open_stores(database, Path(tmp) / "images")
    worker = Worker(stores.jobs, _engine(settings), stores.images, stores.events, settings,
                    worker_id=worker_id)
    stores.outbox.start(queued_only=True)  # as sdgate worker does
    worker.start()
    ready.set()
    parent = multiprocessing.parent_process()
    try:
        while not stop.wait(1.0):
            if parent is not None and not parent.is_alive():
                break  # the benchmark was killed: do not linger
    finally:
        worker.stop(timeout=30)
        stores.close()


def _worker(node: Stores, settings: Settings, worker_id: str, args: argparse.Namespace
            ) -> Worker | GroupRunner:
    if args.outcomes == "many":
        return GroupRunner(node, _engine(settings), worker_id)
    return Worker(node.jobs, _engine(settings), node.images, node.events, settings, worker_id=worker_id)


def run_setup(setup: Setup, database: str, tmp: Path, args: argparse.Namespace) -> Figures:
    settings = _settings(tmp)
    api = open_stores(database, tmp / "images")
    notified = Notified()
    # The waiting client hears the ends, as a caller of ?wait= or a webhook does: the node decodes
    # the documents of no other kind (a node streaming SSE to someone would decode those too).
    api.events.add_listener(notified, kinds=tuple(TERMINAL_EVENTS))
    workers: list[Worker | GroupRunner] = []
    nodes: list[Any] = []
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    worker_side: Stores | None = None
    if setup.cluster and args.worker_mode == "threads":  # one worker node: a store, N Worker threads
        worker_side = open_stores(database, tmp / "images")
        node = worker_side
        workers = [_worker(node, settings, f"bench-{i}", args) for i in range(setup.workers)]
        worker_side.outbox.start()
    elif setup.cluster:
        for i in range(setup.workers):
            ready = context.Event()
            node = context.Process(target=worker_node, args=(database, str(tmp), f"bench-{i}", ready, stop),
                                   name=f"bench-worker-{i}", daemon=True)
            node.start()
            nodes.append((node, ready))
        for node, ready in nodes:
            if not ready.wait(120):
                raise RuntimeError(f"{node.name} did not start")
    else:
        workers = [_worker(api, settings, f"bench-{i}", args) for i in range(setup.workers)]
    api.outbox.start()
    for worker in workers:
        worker.start()
    figures = Figures()
    try:
        warm = [api.jobs.submit(_request(args.steps, i)).id for i in range(WARM_UP_JOBS)]
        notified.wait(warm, 60)
        _measure_latency(api, notified, figures, args)
        _measure_throughput(api, notified, figures, args)
        figures.failed = notified.failed
    finally:
        stop.set()
        for worker in workers:
            worker.stop(timeout=30)
        for node, _ in nodes:
            node.join(60)
            if node.is_alive():
                node.kill()
        api.close()
        if worker_side is not None:
            worker_side.close()
    return figures


def _measure_latency(api: Stores, notified: Notified, figures: Figures, args: argparse.Namespace) -> None:
    for i in range(args.latency_jobs):
        called = time.time()
        job = api.jobs.submit(_request(args.steps, i))
        notified.wait([job.id], 30)
        done = api.jobs.get(job.id)
        assert done.started_at is not None and done.finished_at is not None
        figures.submit_to_claim_ms.append((done.started_at - done.created_at).total_seconds() * 1000)
        finished = done.finished_at.timestamp()
        figures.finish_to_notified_ms.append((notified.at[job.id] - finished) * 1000)
        figures.end_to_end_ms.append((notified.at[job.id] - called) * 1000)
        time.sleep(0.005)  # low load: the workers idle between jobs


def _measure_throughput(api: Stores, notified: Notified, figures: Figures, args: argparse.Namespace) -> None:
    ids: list[str] = []
    lock = threading.Lock()
    share, extra = divmod(args.jobs, args.submitters)
    per_thread = [share + (k < extra) for k in range(args.submitters)]

    def submit(count: int, offset: int) -> None:
        mine: list[str] = []
        for start in range(0, count, args.submit_batch):
            end = min(count, start + args.submit_batch)
            requests = [_request(args.steps, offset + i) for i in range(start, end)]
            if len(requests) == 1:
                mine.append(api.jobs.submit(requests[0]).id)
            else:  # one transaction for the lot, as a batch API submits (SqlJobStore.submit_many)
                mine += [job.id for job in api.jobs.submit_many(requests)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=submit, args=(count, sum(per_thread[:k])))
               for k, count in enumerate(per_thread)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notified.wait(ids, 600)
    last = max(notified.at[i] for i in ids)
    figures.jobs_per_s = len(ids) / (last - started)


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_table(results: dict[str, Figures], args: argparse.Namespace) -> None:
    names = [SETUPS[key].name for key in results]
    rows: list[tuple[str, list[str]]] = [
        ("throughput, jobs/s", [f"{f.jobs_per_s:.0f}" for f in results.values()]),
    ]
    for title, attr in (
        ("submit -> claim, ms", "submit_to_claim_ms"),
        ("finish -> notified, ms", "finish_to_notified_ms"),
        ("end to end, ms", "end_to_end_ms"),
    ):
        samples = [getattr(f, attr) for f in results.values()]
        rows.append((f"{title} (p50)", [f"{statistics.median(v):.1f}" for v in samples]))
        rows.append((f"{title} (p95)", [f"{_p(v, 0.95):.1f}" for v in samples]))
    rows.append(("jobs not succeeded", [str(f.failed) for f in results.values()]))
    width = max(len(r[0]) for r in rows)
    cols = [max(len(n), 8) for n in names]
    print(" ".join(["", " " * width, *[n.rjust(c) for n, c in zip(names, cols, strict=True)]]))
    for title, values in rows:
        print(" ".join(["", title.ljust(width), *[v.rjust(c) for v, c in zip(values, cols, strict=True)]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the throughput run")
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs run one at a time")
    parser.add_argument("--submitters", type=int, default=4, help="threads submitting the throughput run")
    parser.add_argument("--submit-batch", type=int, default=25,
                        help="jobs per submission of the throughput run (submit_many; 1: one submit() each)")
    parser.add_argument("--steps", type=int, default=1, help="null-engine steps per job")
    parser.add_argument("--database-url",
                        default=os.environ.get("SDGATE_TEST_DATABASE_URL") or DEFAULT_PG_URL,
                        help="a PostgreSQL server where a scratch database may be made")
    parser.add_argument("--configs", default="sqlite,pg1,pg4", help="which of sqlite, pg1, pg4")
    parser.add_argument("--settle-s", type=float, default=0.0,
                        help="seconds idle before each set-up: on a machine that throttles a busy CPU "
                             "(a shared VM), the set-up run last would otherwise pay for the ones before")
    parser.add_argument("--worker-mode", choices=("processes", "threads"), default="processes",
                        help="PostgreSQL rows: a process per worker (as sdgate worker nodes), or one "
                             "worker node with N Worker threads in the benchmark's own process")
    parser.add_argument("--outcomes", choices=("worker", "many"), default="worker",
                        help="worker: the real Worker runs every job (the figures to quote); many: the "
                             "store's ceiling, a loop of claim_group + null engine + finish_many with no "
                             "control reads or progress writes (threads and SQLite only)")
    args = parser.parse_args()
    if args.outcomes == "many" and args.worker_mode != "threads":
        parser.error("--outcomes many runs in this process: add --worker-mode threads")
    if not 0 <= args.settle_s <= 3600:  # NaN fails this too
        parser.error("--settle-s: seconds from 0 to 3600")
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SETUPS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (sqlite, pg1, pg4)")

    print("$ python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    print(f"  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs; {args.jobs} jobs for throughput, "
          f"{args.latency_jobs} one at a time for latency; null engine, {args.steps} step(s), 64x64; "
          f"PostgreSQL workers as {args.worker_mode}"
          + (f"; {args.settle_s:g} s idle before each set-up" if args.settle_s > 0 else "")
          + ("; NOT the real worker: claim_group + finish_many loops (--outcomes many)"
             if args.outcomes == "many" else ""))
    print("  load average (1, 5, 15 min) at the start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    results: dict[str, Figures] = {}
    for key in keys:
        setup = SETUPS[key]
        time.sleep(args.settle_s)
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            if setup.cluster:
                with pg_database(args.database_url) as url:
                    results[key] = run_setup(setup, url, tmp, args)
            else:
                results[key] = run_setup(setup, f"sqlite:///{tmp / 'data' / 'sdgate.db'}", tmp, args)
        print(f"  {setup.name}: done", file=sys.stderr)
    print_table(results, args)
    print("  load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
