"""Webhooks: when a job ends, POST it to the job's ``callback_url``, signed, retried, recorded.

    hooks = Webhooks(store.database, secret=..., render=lambda job: {...})
    hooks.register(job_id, url)          # at submit; nothing is sent before the job is terminal
    await hooks.run(store)               # the delivery task (started in the app's lifespan)

The ``webhooks`` table is the outbox: a row is due once its job is terminal and ``next_attempt_at``
has passed, so deliveries survive a restart. Each attempt is appended to ``attempt_log``; after
``max_attempts`` failures the row is ``failed``. Signature (Stripe-style, over the raw body)::

    X-Sdgate-Timestamp: 1732311000
    X-Sdgate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Callback URLs pointing at loopback, private, link-local or reserved addresses are refused (at
submit and again before each attempt, against DNS rebinding) unless ``allow_private`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.jobs import Job, JobStore
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import jobs as jobs_table
from sdgate.jobs.schema import webhooks as hooks_table

logger = logging.getLogger("sdgate.webhooks")

SIGNATURE_HEADER = "X-Sdgate-Signature"
TIMESTAMP_HEADER = "X-Sdgate-Timestamp"
EVENT_HEADER = "X-Sdgate-Event"
DELIVERY_HEADER = "X-Sdgate-Delivery"
MAX_URL_LENGTH = 2048
_TERMINAL = ("succeeded", "failed", "cancelled")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, body: bytes, headers: Any, *, tolerance_s: float = 300.0) -> bool:
    """What a receiver runs: the signature matches and the timestamp is recent."""
    try:
        timestamp = int(headers[TIMESTAMP_HEADER])
        given = str(headers[SIGNATURE_HEADER])
    except (KeyError, TypeError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, sign(secret, timestamp, body))


def backoff_s(attempt: int, base_s: float, cap_s: float = 3600.0) -> float:
    """Delay after failed attempt ``attempt`` (1-based): base, 2*base, 4*base, ... capped."""
    return min(cap_s, base_s * 2 ** (attempt - 1))


def load_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else one made once and kept in ``<data_dir>/webhook-secret``."""
    if configured:
        return configured
    path = data_dir / "webhook-secret"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    logger.info("made a webhook signing secret in %s", path)
    return value


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_callback_url(url: str, *, allow_private: bool, resolve: bool = True) -> str:
    """``url`` if it may be called back, else ``InvalidRequest`` naming ``callback_url``."""
    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"callback_url: {why}", field="callback_url")

    if len(url) > MAX_URL_LENGTH:
        raise bad(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise bad("must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise bad("must not carry credentials")
    if allow_private:
        return url
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if not resolve:
            return url
        try:
            infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise bad(f"cannot resolve host {host!r}") from None
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(_is_public(a) for a in addresses):
        raise bad("points at a loopback, private or reserved address (see allow_private_callbacks)")
    return url


def _now() -> datetime:
    return datetime.now(UTC)


class Webhooks:
    def __init__(
        self,
        database: sa.Engine,
        *,
        secret: str,
        render: Callable[[Job], dict[str, Any]],
        allow_private: bool = False,
        max_attempts: int = 6,
        backoff_s: float = 2.0,
        timeout_s: float = 10.0,
        poll_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self._db = database
        # After each recorded attempt, its outcome: "delivered", "retry" or "failed" (metrics).
        self._on_attempt = on_attempt
        self._secret = secret
        self._render = render
        self._allow_private = allow_private
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._transport = transport
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- bookkeeping (sync; call from a thread) --------------------------------------------------

    def register(self, job_id: str, url: str) -> None:
        now = _now()
        with transaction(self._db, write=True) as conn:
            conn.execute(
                sa.insert(hooks_table).values(
                    job_id=job_id, url=url, state="pending", attempts=0, next_attempt_at=now,
                    attempt_log=[], created_at=now,
                )
            )

    def status(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Public delivery state per job id (jobs without a callback are left out)."""
        if not job_ids:
            return {}
        with transaction(self._db, write=False) as conn:
            rows = conn.execute(sa.select(hooks_table).where(hooks_table.c.job_id.in_(job_ids))).all()
        return {
            row.job_id: {
                "url": row.url, "state": row.state, "attempts": row.attempts,
                "last_status": row.last_status, "last_error": row.last_error,
                "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
                "log": list(row.attempt_log),
            }
            for row in rows
        }

    def _due(self, limit: int = 20) -> list[tuple[str, str, int]]:
        """Due deliveries, each claimed for this process by pushing its ``next_attempt_at`` past the
        attempt's timeout (a lease): another API process skips it, and a process that dies
        mid-delivery leaves it to be retried once the lease runs out."""
        now = _now()
        lease = now + timedelta(seconds=self._timeout_s + 30)
        query = (
            sa.select(hooks_table.c.job_id, hooks_table.c.url, hooks_table.c.attempts,
                      hooks_table.c.next_attempt_at)
            .join(jobs_table, jobs_table.c.id == hooks_table.c.job_id)
            .where(
                hooks_table.c.state == "pending",
                hooks_table.c.next_attempt_at <= now,
                jobs_table.c.state.in_(_TERMINAL),
            )
            .order_by(hooks_table.c.next_attempt_at)
            .limit(limit)
            # PostgreSQL: deliveries another process is claiming right now are skipped, not waited on.
            .with_for_update(skip_locked=True, of=hooks_table)
        )
        claimed = []
        with transaction(self._db, write=True) as conn:
            for row in conn.execute(query).all():
                won = conn.execute(
                    sa.update(hooks_table)
                    .where(hooks_table.c.job_id == row.job_id,
                           hooks_table.c.next_attempt_at == row.next_attempt_at)
                    .values(next_attempt_at=lease)
                ).rowcount
                if won:
                    claimed.append((row.job_id, row.url, row.attempts))
        return claimed

    def _record(self, job_id: str, attempt: dict[str, Any], *, ok: bool) -> None:
        now = _now()
        with transaction(self._db, write=True) as conn:
            row = conn.execute(  # locked: the attempt log is read, extended and written back
                sa.select(hooks_table).where(hooks_table.c.job_id == job_id).with_for_update()
            ).one_or_none()
            if row is None:  # the job was deleted meanwhile
                return
            attempts = row.attempts + 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "attempt_log": [*row.attempt_log, attempt],
                "last_status": attempt.get("status"),
                "last_error": attempt.get("error"),
            }
            if ok:
                values.update(state="delivered", delivered_at=now, next_attempt_at=None)
                outcome = "delivered"
            elif attempts >= self._max_attempts or attempt.get("final"):
                values.update(state="failed", next_attempt_at=None)
                outcome = "failed"
            else:
                values["next_attempt_at"] = now + timedelta(seconds=backoff_s(attempts, self._backoff_s))
                outcome = "retry"
            conn.execute(sa.update(hooks_table).where(hooks_table.c.job_id == job_id).values(values))
        if self._on_attempt is not None:
            self._on_attempt(outcome)

    # -- delivery ------------------------------------------------------------------------------

    def notify(self) -> None:
        """Thread-safe: a job became terminal; look for due deliveries now."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody delivers any more
                loop.call_soon_threadsafe(wake.set)

    async def run(self, store: JobStore) -> None:
        """Deliver due webhooks until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        async with httpx.AsyncClient(
            transport=self._transport, timeout=self._timeout_s, follow_redirects=False
        ) as client:
            while True:
                self._wake.clear()
                try:
                    due = await asyncio.to_thread(self._due)
                except Exception:
                    logger.exception("webhook delivery: reading the outbox failed")
                    due = []
                for job_id, url, attempts in due:
                    try:
                        await self._deliver(client, store, job_id, url, attempts + 1)
                    except NotFound:
                        pass  # the job was deleted meanwhile (its webhook row went with it)
                    except Exception:
                        logger.exception("job %s: webhook delivery failed", job_id)
                try:
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _deliver(self, client: httpx.AsyncClient, store: JobStore, job_id: str, url: str,
                       attempt: int) -> None:
        job = await asyncio.to_thread(store.get, job_id)
        event = f"job.{job.state.value}"
        body = json.dumps({"event": event, "job": self._render(job)}, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sdgate-webhooks",
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: event,
            DELIVERY_HEADER: f"{job_id}-{attempt}",
        }
        record: dict[str, Any] = {"attempt": attempt, "at": _now().isoformat(), "status": None, "error": None}
        started = time.perf_counter()
        ok = False
        try:
            await asyncio.to_thread(check_callback_url, url, allow_private=self._allow_private)
            response = await client.post(url, content=body, headers=headers)
            record["status"] = response.status_code
            ok = 200 <= response.status_code < 300
            if not ok:
                record["error"] = f"HTTP {response.status_code}"
        except InvalidRequest as exc:
            record.update(error=exc.message, final=True)
        except httpx.HTTPError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["duration_s"] = round(time.perf_counter() - started, 4)
        level = logging.INFO if ok else logging.WARNING
        logger.log(level, "job %s: webhook attempt %d to %s: %s", job_id, attempt, url,
                   "delivered" if ok else record["error"])
        await asyncio.to_thread(self._record, job_id, record, ok=ok)
