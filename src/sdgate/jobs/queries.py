"""The job store's frequent statements, each built once with named parameters.

Building a SQLAlchemy statement and its cache key costs more Python time than running it (a
fraction of a millisecond each, several times per job); a statement built once memoizes its cache
key, so executing it again only binds the parameters. ``store.py`` runs these with a dict of
parameters (``v_<column>`` for a value written, ``w_<column>`` for one a ``WHERE`` compares:
SQLAlchemy keeps a column's own name for itself); what is not a parameter (the states a change
starts from, whether it names a worker) picks one cached statement.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from sdgate.core.jobs import JobState
from sdgate.jobs.notify import pg_notify_call
from sdgate.jobs.schema import daily_usage, job_events, job_previews, jobs

QUEUED = jobs.c.state == JobState.QUEUED.value
# A literal, not a bound parameter: both databases use a partial index (WHERE state = 'queued')
# only for a query whose condition matches the index's own text.
QUEUED_LITERAL = jobs.c.state == sa.literal_column("'queued'")


def _bind(column: str, name: str | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name or f"v_{column}", type_=jobs.c[column].type)


GET = sa.select(jobs).where(jobs.c.id == sa.bindparam("job_id"))
GET_MANY = sa.select(jobs).where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
CONTROL = sa.select(jobs.c.control).where(jobs.c.id == sa.bindparam("job_id"))
HEARTBEAT = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("job_id"), jobs.c.state == JobState.RUNNING.value,
           jobs.c.worker_id == sa.bindparam("w_worker_id"))
    .values(lease_expires_at=_bind("lease_expires_at"))
)
# The head of the queue: highest priority, then the lowest turn (fair scheduling), then FIFO.
CLAIM_HEAD = (
    sa.select(jobs.c.seq, jobs.c.priority, jobs.c.model, jobs.c.created_at, jobs.c.batch_key)
    .where(QUEUED)
    .order_by(jobs.c.priority.desc(), jobs.c.turn, jobs.c.seq)
    .limit(1)
    .with_for_update(skip_locked=True)
)
# Model affinity: the first job of the head's priority naming one of the worker's models.
CLAIM_PREFERRED = (
    sa.select(jobs.c.seq, jobs.c.model, jobs.c.batch_key)
    .where(QUEUED, jobs.c.priority == sa.bindparam("priority"),
           jobs.c.model.in_(sa.bindparam("models", expanding=True)))
    .order_by(jobs.c.turn, jobs.c.seq)
    .limit(1)
    .with_for_update(skip_locked=True)
)
# The state guard keeps a claim exactly-once even on a backend that did not lock.
CLAIM = (
    sa.update(jobs)
    .where(jobs.c.seq == sa.bindparam("w_seq"), QUEUED)
    .values(
        state=JobState.RUNNING.value,
        worker_id=_bind("worker_id"),
        attempts=jobs.c.attempts + 1,
        started_at=_bind("started_at"),
        updated_at=_bind("updated_at"),
        progress=None,
        lease_expires_at=_bind("lease_expires_at"),
    )
    .returning(*jobs.c)
)


@cache
def group_mates(anonymous_model: bool) -> sa.Executable:
    """Queued jobs that may run with a claimed one (same priority, same model; ``None``: the default
    model), in claim order, ``:limit`` of them, skipping ``:w_seq`` and rows another claim holds."""
    same_model = jobs.c.model.is_(None) if anonymous_model else jobs.c.model == sa.bindparam("model")
    return (
        sa.select(jobs.c.seq)
        .where(QUEUED, jobs.c.priority == sa.bindparam("priority"), same_model,
               jobs.c.seq != sa.bindparam("w_seq"))
        .order_by(jobs.c.turn, jobs.c.seq)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
    )


# A batched claim's mates: queued jobs of the pick's priority and batch key (``core.batching``).
BATCH_MATES = (
    sa.select(jobs.c.seq)
    .where(QUEUED, jobs.c.priority == sa.bindparam("priority"), jobs.c.batch_key == sa.bindparam("batch_key"),
           jobs.c.seq != sa.bindparam("w_seq"))
    .order_by(jobs.c.turn, jobs.c.seq)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)

CLAIM_GROUP = (
    sa.update(jobs)
    .where(jobs.c.seq.in_(sa.bindparam("w_seqs", expanding=True)), QUEUED)
    .values(
        state=JobState.RUNNING.value,
        worker_id=_bind("worker_id"),
        attempts=jobs.c.attempts + 1,
        started_at=_bind("started_at"),
        updated_at=_bind("updated_at"),
        progress=None,
        lease_expires_at=_bind("lease_expires_at"),
    )
    .returning(*jobs.c)
)


def current_turn(priority: sa.ColumnElement[int]) -> sa.Select[tuple[int]]:
    """The lowest turn queued at ``priority`` (NULL: none queued): where the round-robin stands."""
    return sa.select(sa.func.min(jobs.c.turn)).where(QUEUED_LITERAL, jobs.c.priority == priority)


def _turn_for(anonymous: bool) -> sa.ColumnElement[int]:
    """A new job's turn (fair scheduling): the one after its owner's last queued job of the same
    priority, else the queue's current turn, else 0. A claim takes turns in order (then FIFO), so
    owners alternate: an owner's 1,000 queued jobs hold turns ``t .. t+999`` and another owner's
    single job gets ``t``, claimed within one round. Evaluated inside the INSERT: no round trip."""
    priority = sa.bindparam("p_priority", type_=sa.Integer)
    mine = jobs.c.owner.is_(None) if anonymous else jobs.c.owner == sa.bindparam("p_owner", type_=sa.String)
    own_last = (
        sa.select(sa.func.max(jobs.c.turn)).where(QUEUED_LITERAL, jobs.c.priority == priority, mine)
        .scalar_subquery()
    )
    return sa.func.coalesce(own_last + 1, current_turn(priority).scalar_subquery(), 0)


SUBMIT_COLUMNS = ("id", "state", "dialect", "owner", "priority", "request", "model", "batch_key", "meta",
                  "created_at", "updated_at", "attempts", "reserved_images", "reserved_day")


@cache
def submit(anonymous: bool) -> sa.Executable:
    """The INSERT of a new job (parameters ``v_<column>`` for ``SUBMIT_COLUMNS``, ``p_priority``
    and, unless ``anonymous``, ``p_owner``), its turn computed in the statement."""
    values: dict[str, Any] = {name: _bind(name) for name in SUBMIT_COLUMNS}
    values["turn"] = _turn_for(anonymous)
    return sa.insert(jobs).values(values).returning(*jobs.c)


@cache
def base_turn(anonymous: bool) -> sa.Executable:
    """``submit_many``: the turn its first job gets, the one ``submit`` would give it (parameters
    ``p_priority`` and, unless ``anonymous``, ``p_owner``); the next jobs take the turns after it."""
    return sa.select(_turn_for(anonymous))


# ``submit_many``'s INSERT (``SUBMIT_COLUMNS`` and ``turn``, one parameter set per job), run in the
# order given, so the rows' ``seq`` keeps the caller's order (FIFO). Nothing is read back.
SUBMIT_MANY = sa.insert(jobs)


@cache
def change(keys: tuple[str, ...], from_states: tuple[str, ...], held: bool, ending_pg: bool) -> sa.Executable:
    """``UPDATE jobs SET <keys> WHERE id = :job_id AND state IN from_states [AND worker_id =
    :w_worker_id] RETURNING *``, parameters ``v_<key>``. ``ending_pg``: the change ends the job on
    PostgreSQL, and the same statement drops its preview (a data-modifying CTE: one round trip)."""
    where = [jobs.c.id == sa.bindparam("job_id"), jobs.c.state.in_(from_states)]
    if held:
        where.append(jobs.c.worker_id == sa.bindparam("w_worker_id"))
    update = sa.update(jobs).where(*where).values({k: _bind(k) for k in keys}).returning(*jobs.c)
    if not ending_pg:
        return update
    done = update.cte("done")
    gone = (
        sa.delete(job_previews)
        .where(job_previews.c.job_id.in_(sa.select(done.c.id)))
        .returning(job_previews.c.job_id)
        .cte("gone")
    )
    return sa.select(done).add_cte(gone)


DROP_PREVIEW = sa.delete(job_previews).where(job_previews.c.job_id == sa.bindparam("job_id"))

_ISO_UTC = sa.literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'""")


def _utc_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """A ``timestamptz`` as ISO 8601 text in UTC (``...Z``), whatever the session's time zone."""
    return sa.func.to_char(sa.func.timezone("UTC", column), _ISO_UTC)


def _snapshot(done: Any) -> sa.ColumnElement[Any]:
    """The job of a written row as ``core.jobs.Job`` reads it (the outbox's ``job`` document),
    built by PostgreSQL from the row itself: what ``Job.model_dump(mode="json")`` of the row holds."""
    fields: dict[str, sa.ColumnElement[Any]] = {
        "id": done.c.id, "state": done.c.state, "request": done.c.request, "dialect": done.c.dialect,
        "owner": done.c.owner, "priority": done.c.priority, "metadata": done.c.meta,
        "created_at": _utc_text(done.c.created_at), "started_at": _utc_text(done.c.started_at),
        "finished_at": _utc_text(done.c.finished_at), "attempts": done.c.attempts,
        "worker_id": done.c.worker_id, "control": done.c.control, "progress": done.c.progress,
        "result": done.c.result, "error": done.c.error,
    }
    args: list[sa.ColumnElement[Any]] = []
    for key, value in fields.items():
        args += [sa.literal_column(f"'{key}'"), value]
    return sa.func.jsonb_build_object(*args)


@cache
def change_announced(keys: tuple[str, ...], from_states: tuple[str, ...], held: bool, ending: bool
                     ) -> sa.Executable:
    """PostgreSQL: ``change`` and its outbox row in ONE statement (so one round trip, in autocommit):
    the UPDATE, then (``ending``) the preview dropped and the run charged to its owner's day
    (``usage.charge_run``'s rule), then the outbox row (kind ``:e_kind``, origin ``:e_origin``,
    ``:e_created_at``) whose job document PostgreSQL builds from the updated row, and the NOTIFY
    (``:payload``). Returns the updated row (nothing, and no outbox row, when none matched)."""
    where = [jobs.c.id == sa.bindparam("job_id"), jobs.c.state.in_(from_states)]
    if held:
        where.append(jobs.c.worker_id == sa.bindparam("w_worker_id"))
    done = sa.update(jobs).where(*where).values({k: _bind(k) for k in keys}).returning(*jobs.c).cte("done")
    return _announcing(done, _ended(done) if ending else [])


def _ended(done: Any) -> list[Any]:
    """The CTEs that go with rows a statement just ended (``done``): their previews dropped, and
    their runs charged to their owners' days (``usage.charge_run``'s rule), summed per owner and day
    (one statement may not change a ``daily_usage`` row twice)."""
    gone = (
        sa.delete(job_previews).where(job_previews.c.job_id.in_(sa.select(done.c.id)))
        .returning(job_previews.c.job_id).cte("gone")
    )
    ran_for = sa.extract("epoch", done.c.finished_at - done.c.started_at)
    seconds = sa.func.greatest(0.0, sa.cast(ran_for, sa.Float))
    day = sa.func.to_char(sa.func.timezone("UTC", done.c.finished_at), sa.literal_column("'YYYY-MM-DD'"))
    ran = (
        sa.select(done.c.owner, day, sa.literal_column("0"), sa.func.sum(seconds))
        .where(done.c.owner.is_not(None), done.c.started_at.is_not(None), done.c.finished_at.is_not(None))
        .group_by(done.c.owner, day)
    )
    upsert = pg_insert(daily_usage).from_select(["principal", "day", "images", "gpu_seconds"], ran)
    charged = upsert.on_conflict_do_update(
        index_elements=[daily_usage.c.principal, daily_usage.c.day],
        set_={"gpu_seconds": daily_usage.c.gpu_seconds + upsert.excluded.gpu_seconds},
    ).returning(daily_usage.c.principal).cte("charged")
    return [gone, charged]


@cache
def submit_announced(anonymous: bool) -> sa.Executable:
    """PostgreSQL: ``submit``'s INSERT and its outbox row and NOTIFY in one statement (parameters
    as ``submit`` and ``change_announced``): one round trip, in autocommit."""
    done = submit(anonymous).cte("done")  # type: ignore[attr-defined]
    return _announcing(done, [])


def _announcing(done: Any, ctes: list[Any]) -> sa.Executable:
    """``SELECT done.*`` after ``ctes`` and the outbox row of the row ``done`` wrote (its job
    document built from the row), with its NOTIFY: see ``change_announced``."""
    event = sa.select(
        done.c.id,
        sa.bindparam("e_kind", type_=sa.String),
        sa.cast(sa.literal_column("'{}'"), JSONB),
        _snapshot(done),
        sa.bindparam("e_origin", type_=sa.String),
        sa.bindparam("e_created_at", type_=job_events.c.created_at.type),
    )
    appended = (
        sa.insert(job_events).from_select(["job_id", "kind", "data", "job", "origin", "created_at"], event)
        .returning(job_events.c.seq).cte("appended")
    )
    notify = pg_notify_call().label("notified")
    return sa.select(done, notify).add_cte(*ctes, appended)


# PostgreSQL: a claim and its ``started`` outbox rows (one per claimed job) and NOTIFY, in one
# statement (parameters of ``CLAIM`` / ``CLAIM_GROUP`` and of ``change_announced``'s event).
CLAIM_ANNOUNCED = _announcing(CLAIM.cte("done"), [])
CLAIM_GROUP_ANNOUNCED = _announcing(CLAIM_GROUP.cte("done"), [])


# Queued jobs that may join a running batch: the batch's priority and key, in claim order, with their
# requests (the claim counts each one's image rows), skipping rows another claim holds.
BATCH_CANDIDATES = (
    sa.select(jobs.c.seq, jobs.c.request)
    .where(QUEUED, jobs.c.priority == sa.bindparam("priority"), jobs.c.batch_key == sa.bindparam("batch_key"))
    .order_by(jobs.c.turn, jobs.c.seq)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)


# The columns ``finish_many`` reads back on PostgreSQL: what may have changed since the claim, and
# what the refund of unused images needs; the rest of the job is the worker's own copy.
FINISHED_COLUMNS = ("id", "state", "owner", "priority", "started_at", "finished_at", "attempts", "worker_id",
                    "control", "progress", "reserved_images", "reserved_day")


def _finish_many_announced() -> sa.Executable:
    """PostgreSQL: ``finish_many``'s outcomes in ONE statement (one round trip for a whole group):
    the outcomes come as arrays (``:o_ids``, ``:o_states``, ``:o_results``, ``:o_errors``,
    ``:o_progress``: JSON text, NULL for none; a NULL progress keeps the row's), each row updated
    from running and held by ``:w_worker_id``, previews dropped and runs charged (``_ended``), one
    outbox row per job in the outcomes' order (kind = the new state's, job document built from the
    row), and one NOTIFY per kind (``:channel``; payload ``'<:e_origin> <kind>'``). Returns
    ``FINISHED_COLUMNS``, the number of images the result holds (``delivered``) and the outcome's
    position (``n``)."""
    text_array = ARRAY(sa.Text)
    given = sa.func.unnest(
        sa.bindparam("o_ids", type_=text_array), sa.bindparam("o_states", type_=text_array),
        sa.bindparam("o_results", type_=text_array), sa.bindparam("o_errors", type_=text_array),
        sa.bindparam("o_progress", type_=text_array),
    ).table_valued("id", "state", "result", "error", "progress", with_ordinality="n").render_derived(name="o")
    now = sa.bindparam("v_now", type_=jobs.c.finished_at.type)
    update = (
        sa.update(jobs)
        .where(jobs.c.id == given.c.id, jobs.c.state == JobState.RUNNING.value,
               jobs.c.worker_id == sa.bindparam("w_worker_id"))
        .values(
            state=given.c.state,
            result=sa.cast(given.c.result, JSONB),
            error=sa.cast(given.c.error, JSONB),
            progress=sa.func.coalesce(sa.cast(given.c.progress, JSONB), jobs.c.progress),
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
        )
        .returning(*jobs.c, given.c.n)
    )
    done = update.cte("done")
    event = sa.select(
        done.c.id, done.c.state, sa.cast(sa.literal_column("'{}'"), JSONB), _snapshot(done),
        sa.bindparam("e_origin", type_=sa.String), now,
    ).order_by(done.c.n)
    appended = (
        sa.insert(job_events).from_select(["job_id", "kind", "data", "job", "origin", "created_at"], event)
        .returning(job_events.c.seq).cte("appended")
    )
    kinds = sa.select(done.c.state.label("kind")).distinct().subquery("kinds")
    notified = sa.select(
        sa.func.count(sa.func.pg_notify(sa.bindparam("channel", type_=sa.Text),
                                        sa.bindparam("e_origin", type_=sa.String) + " " + kinds.c.kind))
    ).scalar_subquery()
    delivered = sa.func.coalesce(sa.func.jsonb_array_length(done.c.result["images"]), 0)
    return (
        sa.select(*(done.c[name] for name in FINISHED_COLUMNS), delivered.label("delivered"), done.c.n,
                  notified.label("notified"))
        .add_cte(*_ended(done), appended)
        .order_by(done.c.n)
    )


FINISH_MANY_ANNOUNCED = _finish_many_announced()
