"""API keys: the ``api_keys`` table (migration 0006) on SQLite or PostgreSQL, behind one ``KeyStore``.

A key is ``sdg_`` + 43 URL-safe characters (32 random bytes). It is shown once, when it is made
(``create``) or replaced (``rotate``); the table keeps its SHA-256 (hex) and its first
``PREFIX_LENGTH`` characters, the *prefix*: unique, shown in listings and logs, and how ``verify``
finds the row before comparing digests in constant time (``secrets.compare_digest``).

    keys = KeyStore(stores.database, cache_s=KEY_CACHE_S)
    made = keys.create("app1", scopes=("generate", "read"), limits=KeyLimits(rate_per_min=60))
    print(made.secret)                   # the only time the key is seen
    key = keys.verify(made.secret)       # ApiKey, or Unauthorized: unknown / revoked / expired
    keys.revoke(key.id)

Verification is cached in the process for ``cache_s`` seconds (by the key's digest, positive and
negative answers alike, at most ``CACHE_ENTRIES``), so a busy client costs one query per key per
``cache_s``, not one per request. Revoking or rotating through this ``KeyStore`` drops its own
cache entries at once; every other process (another API node, a server while ``sdgate keys
revoke`` runs beside it) stops accepting the old key within ``cache_s`` seconds. Expiry is checked
on every call, cached or not.

``last_used_at`` is written when a verification that reads the row finds it older than
``LAST_USED_EVERY_S``, and a database that refuses the write (a full disk) does not refuse the
request.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sdgate.core.errors import Conflict, InvalidRequest, NotFound, StorageUnavailable, Unauthorized
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import api_keys as table

log = logging.getLogger("sdgate.keys")

KEY_PREFIX = "sdg_"
PREFIX_LENGTH = 12  # "sdg_" and 8 random characters (48 bits): unique per key, safe to show
SCOPES = ("generate", "read", "admin")
KEY_CACHE_S = 5.0  # a revoke reaches every process within this many seconds
CACHE_ENTRIES = 10_000
LAST_USED_EVERY_S = 60.0
MAX_NAME = 255
# What a presented key must look like before it costs a query: sdg_ and URL-safe base64.
_KEY_SHAPE = re.compile(r"sdg_[A-Za-z0-9_-]{20,100}")
_PREFIX_TRIES = 5

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def looks_like_key(text: str) -> bool:
    """Whether ``text`` has the shape of an sdgate key (nothing about whether it is one)."""
    return bool(_KEY_SHAPE.fullmatch(text))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# -- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits; ``None``: none of its own (the server's apply). ``max_concurrent``: its
    jobs queued or running at once."""

    rate_per_min: float | None = None
    rate_burst: int | None = None
    images_per_day: int | None = None
    gpu_seconds_per_day: float | None = None
    max_concurrent: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any) -> KeyLimits:
        if not isinstance(data, dict):
            return cls()
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known and isinstance(v, int | float)})


@dataclass(frozen=True)
class ApiKey:
    """A key as stored, without its digest: what listings, the admin API and principals see."""

    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    limits: KeyLimits = field(default_factory=KeyLimits)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None
    last_used_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: datetime | None = None) -> dict[str, Any]:
        """JSON-ready, for ``keys list --json`` and the admin API: never the digest."""

        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id, "name": self.name, "prefix": self.prefix, "scopes": list(self.scopes),
            "limits": self.limits.to_dict(), "state": self.state(now or wall_clock()),
            "created_at": when(self.created_at), "expires_at": when(self.expires_at),
            "revoked_at": when(self.revoked_at), "rotated_at": when(self.rotated_at),
            "last_used_at": when(self.last_used_at),
        }


@dataclass(frozen=True)
class IssuedKey:
    """A key just made or rotated: its record and the secret, which is never seen again."""

    key: ApiKey
    secret: str


# -- parsing what operators type -------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour|d|day))?\s*$", re.I)
_PER_MIN = {"s": 60.0, "sec": 60.0, "second": 60.0, "m": 1.0, "min": 1.0, "minute": 1.0,
            "h": 1 / 60, "hour": 1 / 60, "d": 1 / 1440, "day": 1 / 1440}
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.I)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_rate(text: str) -> float:
    """``60/min``, ``2/s``, ``1000/h``, ``5000/day`` or a bare number (per minute) -> requests per
    minute. ``InvalidRequest`` otherwise."""
    match = _RATE.match(text)
    if not match:
        raise InvalidRequest(f"rate: expected N/min, N/s, N/h or N/day, got {text[:40]!r}", field="rate")
    unit = (match.group(2) or "min").lower()
    return float(match.group(1)) * _PER_MIN[unit]


def parse_expiry(text: str, now: datetime) -> datetime:
    """``90d``, ``12h``, ``30m``, ``2w``, ``3600s`` from ``now``, or an ISO 8601 date or time (UTC
    when it names no zone). Must be in the future."""
    match = _DURATION.match(text)
    if match:
        when = now + timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2).lower()])
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidRequest(
                f"expires: expected a duration (90d, 12h, 30m) or an ISO date, got {text[:40]!r}",
                field="expires",
            ) from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        raise InvalidRequest("expires: must be in the future", field="expires")
    return when


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    unknown = [s for s in out if s not in SCOPES]
    if unknown or not out:
        raise InvalidRequest(f"scopes: each one of {', '.join(SCOPES)}; got {', '.join(out) or 'none'}",
                             field="scopes")
    return out


def check_limits(limits: KeyLimits) -> KeyLimits:
    for name, value in asdict(limits).items():
        if value is not None and (value < 0 or value != value or value > 1e12):
            raise InvalidRequest(f"{name}: must be a number from 0 to 10^12", field=name)
    return limits


# -- the store -----------------------------------------------------------------------------------


@dataclass
class _Cached:
    key: ApiKey | None  # None: no key has this digest
    fetched: float  # time.monotonic()


class KeyStore:
    """Every API key, over the job database; ``cache_s`` > 0 caches verification (see module)."""

    def __init__(self, database: sa.Engine, *, cache_s: float = 0.0, clock: Clock = wall_clock) -> None:
        self._db = database
        self.cache_s = cache_s
        self.clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    # -- making and changing keys ------------------------------------------------------------------

    def create(
        self, name: str, *, scopes: Iterable[str] = ("generate", "read"), limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """A new key. ``Conflict`` when an unrevoked key already has ``name``."""
        name = name.strip()
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidRequest(f"name: 1 to {MAX_NAME} printable characters", field="name")
        scopes = check_scopes(scopes)
        limits = check_limits(limits or KeyLimits())
        now = self.clock()
        key_id = "key_" + secrets.token_hex(8)
        with transaction(self._db, write=True) as conn:
            taken = conn.execute(
                sa.select(table.c.id).where(table.c.name == name, table.c.revoked_at.is_(None)).limit(1)
            ).first()
            if taken is not None:
                raise Conflict(f"an active key is already named {name!r} (revoke it, or pick another name)",
                               field="name")
            secret = self._insert_unique(conn, lambda s: {
                "id": key_id, "name": name, "prefix": s[:PREFIX_LENGTH], "secret_hash": digest(s),
                "scopes": list(scopes), "limits": limits.to_dict(), "created_at": now,
                "expires_at": expires_at,
            })
        key = ApiKey(id=key_id, name=name, prefix=secret[:PREFIX_LENGTH], scopes=scopes, limits=limits,
                     created_at=now, expires_at=expires_at)
        return IssuedKey(key=key, secret=secret)

    def rotate(self, ref: str) -> IssuedKey:
        """A new secret (and prefix) for the key ``ref`` names; its id, scopes and limits stay, so
        its jobs stay its own. The old secret stops working (see the module on other processes)."""
        key = self.find(ref)
        if key.revoked_at is not None:
            raise Conflict(f"key {key.id} is revoked", field="key")
        now = self.clock()
        with transaction(self._db, write=True) as conn:
            secret = self._insert_unique(conn, lambda s: {
                "prefix": s[:PREFIX_LENGTH], "secret_hash": digest(s), "rotated_at": now,
            }, update_id=key.id)
        self._forget(key.id)
        return IssuedKey(key=replace(key, prefix=secret[:PREFIX_LENGTH], rotated_at=now), secret=secret)

    def revoke(self, ref: str) -> ApiKey:
        """Revokes the key ``ref`` names (again: nothing changes). Its jobs keep running."""
        key = self.find(ref)
        if key.revoked_at is not None:
            return key
        now = self.clock()
        with transaction(self._db, write=True) as conn:
            conn.execute(sa.update(table).where(table.c.id == key.id, table.c.revoked_at.is_(None))
                         .values(revoked_at=now))
        self._forget(key.id)
        return replace(key, revoked_at=now)

    def _insert_unique(self, conn: sa.Connection, values: Callable[[str], dict[str, Any]], *,
                       update_id: str | None = None) -> str:
        """Writes a fresh secret's row (or updates ``update_id``'s); a new secret if its prefix is
        taken (48 random bits: practically never). Returns the secret."""
        for _ in range(_PREFIX_TRIES):
            secret = KEY_PREFIX + secrets.token_urlsafe(32)
            try:
                with conn.begin_nested():
                    if update_id is None:
                        conn.execute(sa.insert(table).values(**values(secret)))
                    else:
                        conn.execute(sa.update(table).where(table.c.id == update_id).values(**values(secret)))
                return secret
            except sa.exc.IntegrityError:
                continue
        raise StorageUnavailable("could not make a key with a unique prefix")

    # -- reading ---------------------------------------------------------------------------------

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        query = sa.select(table).order_by(table.c.created_at, table.c.id)
        if not include_revoked:
            query = query.where(table.c.revoked_at.is_(None))
        with transaction(self._db, write=False, single=True) as conn:
            return [_record(row) for row in conn.execute(query)]

    def get(self, key_id: str) -> ApiKey:
        with transaction(self._db, write=False, single=True) as conn:
            row = conn.execute(sa.select(table).where(table.c.id == key_id)).one_or_none()
        if row is None:
            raise NotFound(f"no key {key_id[:60]!r}", field="key")
        return _record(row)

    def find(self, ref: str) -> ApiKey:
        """The key ``ref`` names: its id, its prefix (or the key itself), or its name (when one
        unrevoked key, else one key of any state, has it). ``NotFound``, or ``Conflict`` when a
        name is ambiguous."""
        ref = ref.strip()
        with transaction(self._db, write=False) as conn:
            prefix = ref[:PREFIX_LENGTH] if looks_like_key(ref) else ref
            row = conn.execute(
                sa.select(table).where(sa.or_(table.c.id == ref, table.c.prefix == prefix))
            ).first()
            if row is not None:
                return _record(row)
            rows = conn.execute(sa.select(table).where(table.c.name == ref)).all()
        active = [r for r in rows if r.revoked_at is None]
        named = active or rows
        if len(named) == 1:
            return _record(named[0])
        if len(named) > 1:
            raise Conflict(f"{len(named)} keys are named {ref[:60]!r}: name one by id or prefix", field="key")
        raise NotFound(f"no key with the id, prefix or name {ref[:60]!r}", field="key")

    def any_keys(self) -> bool:
        """Whether any key was ever made (revoked and expired ones count: revoking the last key must
        not open the server; ``--auth auto`` turns keys on with the first)."""
        with transaction(self._db, write=False, single=True) as conn:
            return conn.execute(sa.select(table.c.id).limit(1)).first() is not None

    # -- verifying -------------------------------------------------------------------------------

    def verify(self, secret: str) -> ApiKey:
        """The active key whose secret this is; ``Unauthorized`` saying whether it is unknown,
        revoked or expired."""
        found = self.cached(secret)
        if found is None:
            key = self._lookup(secret) if looks_like_key(secret) else None
            found = _Cached(key, time.monotonic())
            if self.cache_s > 0 and looks_like_key(secret):
                self._remember(digest(secret), found)
        return self._judge(found.key)

    def cached(self, secret: str) -> _Cached | None:
        """The cached answer for ``secret`` while fresh, else ``None`` (no query either way)."""
        if self.cache_s <= 0 or not looks_like_key(secret):
            return None
        with self._lock:
            entry = self._cache.get(digest(secret))
        if entry is None or time.monotonic() - entry.fetched > self.cache_s:
            return None
        return entry

    def verify_cached(self, secret: str) -> ApiKey | None:
        """``verify`` when the answer is cached (a refusal raises), else ``None``: the caller
        verifies off the event loop."""
        entry = self.cached(secret)
        return None if entry is None else self._judge(entry.key)

    def _judge(self, key: ApiKey | None) -> ApiKey:
        if key is None:
            raise Unauthorized("invalid API key")
        state = key.state(self.clock())
        if state == "revoked":
            raise Unauthorized(f"API key {key.prefix}... was revoked")
        if state == "expired":
            assert key.expires_at is not None
            raise Unauthorized(f"API key {key.prefix}... expired at {key.expires_at.isoformat()}")
        return key

    def _lookup(self, secret: str) -> ApiKey | None:
        wanted = digest(secret)
        with transaction(self._db, write=False, single=True) as conn:
            row = conn.execute(sa.select(table).where(table.c.prefix == secret[:PREFIX_LENGTH])).one_or_none()
        if row is None or not secrets.compare_digest(row.secret_hash.encode(), wanted.encode()):
            return None
        key = _record(row)
        if key.state(self.clock()) == "active":
            self._touch(key)
        return key

    def _touch(self, key: ApiKey) -> None:
        """``last_used_at`` = now, when the row's is older than ``LAST_USED_EVERY_S`` (a process
        reads the row once per ``cache_s`` at most, so this is one write a minute per key and node
        at most)."""
        now = self.clock()
        if key.last_used_at is not None and (now - key.last_used_at).total_seconds() < LAST_USED_EVERY_S:
            return
        try:
            with transaction(self._db, write=True) as conn:
                conn.execute(sa.update(table).where(table.c.id == key.id).values(last_used_at=now))
        except StorageUnavailable as exc:  # StorageFull too: a key that works keeps working
            log.debug("could not record when key %s was last used: %s", key.prefix, exc.message)

    def _remember(self, key_digest: str, entry: _Cached) -> None:
        with self._lock:
            self._cache[key_digest] = entry
            self._cache.move_to_end(key_digest)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def _forget(self, key_id: str) -> None:
        with self._lock:
            for d in [d for d, e in self._cache.items() if e.key is not None and e.key.id == key_id]:
                del self._cache[d]


def _record(row: Any) -> ApiKey:
    scopes = row.scopes if isinstance(row.scopes, list) else []
    return ApiKey(
        id=row.id, name=row.name, prefix=row.prefix, scopes=tuple(str(s) for s in scopes),
        limits=KeyLimits.from_dict(row.limits), created_at=row.created_at, expires_at=row.expires_at,
        revoked_at=row.revoked_at, rotated_at=row.rotated_at, last_used_at=row.last_used_at,
    )
