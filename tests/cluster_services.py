"""What the cluster tests (tests/test_cluster.py) run: real ``sdgate api`` and ``sdgate worker``
processes over PostgreSQL and S3, a PostgreSQL of their own to restart, and the checks they share.

- ``Cluster``: starts nodes as child processes on free loopback ports over one database URL and one
  ``s3://`` location, keeps their logs in one folder, and stops whatever still runs at the end
  (``kill -9`` of one node is the test's business: ``node.kill()``).
- ``migrated_database``: a fresh database on a PostgreSQL server, brought to the newest schema by
  ``sdgate db upgrade`` as an operator would.
- ``PrivatePostgres``: a throwaway PostgreSQL (initdb / pg_ctl, as ``scripts/services.sh`` runs
  its own; as root, as the ``postgres`` user) that one test may stop and start without touching
  the shared server other tests use.
- ``metric``: one value out of a node's ``/metrics`` (Prometheus text), summed over the series
  that match the labels given.
- What the database says: ``job_rows``, ``all_ended``, ``endings`` (each job's terminal events in
  the outbox) and ``assert_each_succeeded_once``; ``s3_key``: where a stored image's object is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sdgate.jobs.schema import job_events, jobs
from tests.harness import ProcessServer, free_port
from tests.jobs.conftest import PgServer

PNG = b"\x89PNG\r\n\x1a\n"
TERMINAL = ("succeeded", "failed", "cancelled")
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.1) -> T:
    """``check()``'s first truthy answer within ``timeout`` seconds; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (a counter's ``_total`` included) whose labels match."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- what the database says -----------------------------------------------------------------------


def job_rows(db: sa.Engine) -> dict[str, Any]:
    """Every job's row, by id."""
    with db.connect() as conn:
        return {row.id: row for row in conn.execute(sa.select(jobs))}


def all_ended(db: sa.Engine, total: int) -> bool:
    with db.connect() as conn:
        query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state.in_(TERMINAL))
        return conn.execute(query).scalar_one() >= total


def endings(db: sa.Engine) -> dict[str, list[str]]:
    """Each job's terminal events in the outbox, in order: one, for a job that ended once."""
    found: dict[str, list[str]] = {}
    with db.connect() as conn:
        query = (sa.select(job_events.c.job_id, job_events.c.kind)
                 .where(job_events.c.kind.in_(TERMINAL)).order_by(job_events.c.seq))
        for job_id, kind in conn.execute(query):
            found.setdefault(job_id, []).append(kind)
    return found


def assert_each_succeeded_once(db: sa.Engine, rows: dict[str, Any]) -> None:
    """Every job in ``rows`` succeeded, with exactly one terminal event: ``succeeded``."""
    not_ok = {job_id: (row.state, row.error) for job_id, row in rows.items() if row.state != "succeeded"}
    assert not not_ok, not_ok
    ends = endings(db)
    twice = {job_id: ends.get(job_id) for job_id in rows if ends.get(job_id) != ["succeeded"]}
    assert not twice, twice


def image_ids(row: Any) -> list[str]:
    return [image["id"] for image in (row.result or {}).get("images", [])]


def s3_key(prefix: str, image_id: str) -> str:
    """Where ``S3ImageStore`` keeps a PNG: ``prefix/ab/cd/img_abcd....png``."""
    digest = image_id.removeprefix("img_")
    return f"{prefix}/{digest[:2]}/{digest[2:4]}/{image_id}.png"


def sdgate_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdgate", *args], capture_output=True, text=True,
                          timeout=timeout)


def upgrade(url: str) -> None:
    """``sdgate db upgrade --database URL``, as an operator runs it before starting the nodes."""
    out = sdgate_cli("db", "upgrade", "--database", url)
    assert out.returncode == 0, out.stdout + out.stderr


@contextmanager
def migrated_database(server: PgServer) -> Iterator[str]:
    """A new, empty database on ``server`` brought up by ``sdgate db upgrade``; dropped after."""
    with server.database(migrated=False) as url:
        upgrade(url)
        yield url


class Node(ProcessServer):
    """One ``sdgate api`` or ``sdgate worker`` process; ``name`` for messages."""

    def __init__(self, name: str, args: list[str], port: int, log: Path) -> None:
        self.name = name
        self.args = args
        super().__init__(args, port, log, wait_ready=False)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no drain, no goodbye to the database."""
        self.stop(signal.SIGKILL)

    def metrics(self) -> str:
        response = httpx.get(self.url + "/metrics", timeout=10)
        assert response.status_code == 200, (self.name, response.status_code, response.text[:300])
        return response.text


class Cluster:
    """Nodes over one database and one object store; see the module docstring."""

    def __init__(self, root: Path, *, database: str, storage: str, endpoint: str, models: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.common = ["--database", database, "--storage", storage, "--storage-endpoint", endpoint,
                       "--models-dir", str(models), "--log-level", "warning"]
        self.nodes: list[Node] = []

    def api(self, name: str, *, port: int | None = None) -> Node:
        """``sdgate api`` (started, not yet waited for: ``node.wait_ready()``)."""
        return self._start(name, "api", [], port)

    def worker(self, name: str, *, engine: str = "null", extra: tuple[str, ...] = ()) -> Node:
        """``sdgate worker --engine ENGINE --device cpu`` (started, not yet waited for)."""
        return self._start(name, "worker", ["--engine", engine, "--device", "cpu", *extra], None)

    def restart(self, node: Node) -> Node:
        """The same command again on the same port (after ``node`` ended)."""
        assert node.proc.poll() is not None, f"{node.name} still runs"
        again = Node(node.name, node.args, node.port, node.log)
        self.nodes.append(again)
        return again

    def stop_all(self) -> None:
        """Kills every node still running (a test's database or server is removed next)."""
        for node in reversed(self.nodes):
            node.stop(signal.SIGKILL)

    def logs(self, lines: int = 40) -> str:
        """The last lines of every node's log, for an assertion's message."""
        parts = []
        for node in self.nodes:
            text = node.log.read_text(errors="replace").splitlines()[-lines:] if node.log.exists() else []
            parts.append(f"--- {node.name} ({node.log.name}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def _start(self, name: str, command: str, extra: list[str], port: int | None) -> Node:
        port = port or free_port()
        args = [sys.executable, "-m", "sdgate", command, "--port", str(port),
                "--data-dir", str(self.root / name), *self.common, *extra]
        node = Node(name, args, port, self.root / f"{name}.log")
        self.nodes.append(node)
        return node


# -- a PostgreSQL of one's own -------------------------------------------------------------------


def pg_bin() -> Path | None:
    """Where initdb and pg_ctl are (Debian keeps them off PATH), as scripts/services.sh finds them."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


class PrivatePostgres:
    """A PostgreSQL server in a temporary folder on a free port: ``start()``, ``stop(mode)``,
    ``url(database)``, ``close()`` (stops it and removes the folder). Durable commits (the shared
    test server turns ``synchronous_commit`` off for speed, which a crash may undo)."""

    USER = "sdgate"

    def __init__(self) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server (initdb, pg_ctl): run scripts/services.sh start")
        self.bin = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user (as root) must reach the folder.
        self.dir = Path(tempfile.mkdtemp(prefix="sdgate-private-pg-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        try:
            if self.as_root:  # as scripts/services.sh does: initdb and postgres refuse to run as root
                if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
                    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                    "postgres"], check=True, capture_output=True)
                shutil.chown(self.dir, user="postgres")
            self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8",
                      "--no-locale")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` ends every session cleanly, ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> str:
        name = f"sdgate_private_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with suppress(AssertionError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.dir)
        assert out.returncode == 0, f"{tool} failed: {out.stdout}{out.stderr}{self.log()}"
