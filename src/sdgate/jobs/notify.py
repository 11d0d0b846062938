"""LISTEN/NOTIFY on PostgreSQL: the outbox follower of every node wakes as soon as any node commits.

    notifying(insert, seq, payload)          # outbox.write_event: the INSERT that also NOTIFYs
    listener = NotifyListener(engine, on_notify=follower.notified)  # on_notify(payloads or None)
    listener.start(); listener.listening.wait(5); listener.stop()

The store appends an outbox row with ``NOTIFY <channel>, '<origin> <kind>'`` in the same
statement, so the notification is delivered exactly when the row commits, and never for a
rolled-back one. Submissions (``queued``) ring on ``sdgate_jobs_queued``, every other kind on
``sdgate_jobs``: an API node listens on both, a worker node on the first alone (it wakes for
nothing else), so the claims and outcomes of the others do not wake every worker's listener in vain
(all nodes of a cluster run one version: an older node listens on ``sdgate_jobs`` alone). The
payload is the writing process's ``origin`` and the event's kind only: a notification is a doorbell
(a follower need not read at once for its own process's rows, nor for kinds nobody in its process
listens to), the follower reads the row itself (progress previews are stored and referenced, never
pushed through NOTIFY's 8 KB payload). ``on_notify`` gets the payloads of a batch of notifications
(``parse_payload``), or None after a (re)connection: then anything may have committed unseen.

The listener holds one dedicated psycopg connection in autocommit mode (outside the pool: a LISTEN
belongs to its session) and waits on its socket. The follower's poll stays as the fallback: a
dropped connection (a PostgreSQL restart, ``pg_terminate_backend``, the network) costs latency, not
events. The listener then reconnects with a doubling wait up to ``MAX_BACKOFF_S`` and wakes the
follower once it listens again, for what committed in the gap. An idle connection is pinged every
``KEEPALIVE_S`` so a silently dead one is noticed. Nothing ends the thread but ``stop``.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

from sdgate.jobs.database import PG_CONNECT_TIMEOUT_S, describe

logger = logging.getLogger(__name__)

CHANNEL = "sdgate_jobs"  # every kind but ``queued``
QUEUE_CHANNEL = "sdgate_jobs_queued"  # submissions and re-queues: what a worker node wakes for
CHANNELS = (CHANNEL, QUEUE_CHANNEL)
KEEPALIVE_S = 5.0
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


def notice(origin: str, kind: str) -> dict[str, str]:
    """The ``channel`` and ``payload`` parameters of the NOTIFY of one event (``pg_notify_call``)."""
    return {"channel": QUEUE_CHANNEL if kind == "queued" else CHANNEL, "payload": f"{origin} {kind}"}


def pg_notify_call() -> sa.ColumnElement[Any]:
    """``pg_notify(:channel, :payload)``, the parameters from ``notice``."""
    return sa.func.pg_notify(sa.bindparam("channel", type_=sa.Text), sa.bindparam("payload", type_=sa.Text))


def notifying(insert: sa.Insert, seq: sa.Column[Any]) -> sa.Select[Any]:
    """``insert ... RETURNING seq`` that also sends the NOTIFY of ``notice``: one round trip."""
    appended = insert.returning(seq).cte("appended")
    return sa.select(appended.c[seq.name], pg_notify_call())


def parse_payload(payload: str) -> tuple[str, str | None]:
    """``(origin, kind)`` of a notification; kind None for a payload of the origin alone (a node
    of an older version), which may be of any kind."""
    origin, _, kind = payload.partition(" ")
    return origin, kind or None


class NotifyListener:
    """One thread LISTENing on ``channels``; ``on_notify(payloads)`` after each batch of
    notifications, ``on_notify(None)`` after each (re)connection. ``listening`` is set while the
    LISTEN is in place."""

    def __init__(self, engine: sa.Engine, on_notify: Callable[[frozenset[str] | None], None], *,
                 channels: tuple[str, ...] = CHANNELS,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self._engine = engine
        self._on_notify = on_notify
        self._channels = channels
        self._keepalive_s = keepalive_s
        self.listening = threading.Event()
        self._stopping = threading.Event()
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.backend_pid: int | None = None  # of the LISTEN connection (tests terminate it)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="sdgate-outbox-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with suppress(OSError):  # already closed by an earlier stop
            self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._stop_r.close()
        self._stop_w.close()

    def _connect(self) -> Any:
        import psycopg

        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        cparams.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
        cparams["application_name"] = "sdgate-listen"
        conn = psycopg.connect(*cargs, **cparams, autocommit=True)
        for channel in self._channels:
            conn.execute(f'LISTEN "{channel}"')
        return conn

    def _loop(self) -> None:
        backoff = MIN_BACKOFF_S
        failing = False
        while not self._stopping.is_set():
            try:
                self._conn = self._connect()
                self.backend_pid = self._conn.info.backend_pid
                self.listening.set()
                if failing:
                    logger.info("job notifications: listening again on %s", describe(self._engine.url))
                failing, backoff = False, MIN_BACKOFF_S
                self._on_notify(None)  # what committed while no LISTEN was in place
                self._listen(self._conn)
            except Exception as exc:  # never ends the thread: the poll covers the gap
                if not self._stopping.is_set() and not failing:
                    logger.warning("job notifications: LISTEN connection lost (%s); polling until it is "
                                   "back", " ".join(str(exc).split())[:200])
                failing = True
            finally:
                self.listening.clear()
                self._close()
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _listen(self, conn: Any) -> None:
        """Until the connection fails (raises) or ``stop``."""
        pinged = time.monotonic()
        while not self._stopping.is_set():
            wait = max(0.0, self._keepalive_s - (time.monotonic() - pinged))
            ready, _, _ = select.select([conn.fileno(), self._stop_r], [], [], wait)
            if self._stop_r in ready:
                return
            if ready and (batch := list(conn.notifies(timeout=0))):
                self._on_notify(frozenset(n.payload for n in batch))
                continue
            # Idle for keepalive_s, or readable with no notification (the server closing it): a
            # ping raises on a dead connection.
            conn.execute("SELECT 1")
            pinged = time.monotonic()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may refuse even this
                logger.debug("closing the LISTEN connection failed", exc_info=True)
