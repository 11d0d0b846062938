"""ComfyUI's names for things, kept in the job database so every API node of a cluster agrees:

- ``comfy_files``: a principal's uploaded files by ComfyUI's (type, subfolder, name), each naming
  the stored image (``ImageStore``, local or S3) that holds its bytes;
- ``comfy_prompts``: each prompt's id (the client's own ``prompt_id``, or the job id), its job, its
  queue number (the row's ``seq``) and whether ``/history`` still shows it.

    files = ComfyFiles(database)
    name = files.add("alice", "input", "", "cat.png", image_id, overwrite=False, size=(512, 512))
    files.find("alice", "input", "", name)            # -> image id, or None
    number = files.reserve_prompt("alice", "my-id")   # None: that prompt id is taken
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

import sqlalchemy as sa

from sdgate.jobs.database import transaction
from sdgate.jobs.schema import comfy_files, comfy_prompts

MAX_RENAMES = 1000  # "name (1).png" ... this many; then the upload is refused


def owner_key(owner: str | None) -> str:
    """The anonymous principal (a server without credentials) is stored as ""."""
    return owner or ""


@dataclass(frozen=True)
class PromptRow:
    seq: int
    prompt_id: str
    job_id: str | None
    owner: str
    hidden: bool


def _prompt(row: sa.Row[tuple[int, str, str | None, str, bool]]) -> PromptRow:
    return PromptRow(seq=row.seq, prompt_id=row.prompt_id, job_id=row.job_id, owner=row.owner,
                     hidden=bool(row.hidden))


class ComfyFiles:
    def __init__(self, database: sa.Engine) -> None:
        self._db = database

    # -- files ------------------------------------------------------------------------------------

    def find(self, owner: str | None, kind: str, subfolder: str, name: str) -> str | None:
        """The image id of ``owner``'s file, or None."""
        if any("\x00" in v for v in (owner_key(owner), kind, subfolder, name)):
            return None
        query = sa.select(comfy_files.c.image_id).where(
            comfy_files.c.owner == owner_key(owner), comfy_files.c.type == kind,
            comfy_files.c.subfolder == subfolder, comfy_files.c.name == name,
        )
        with transaction(self._db, write=False, single=True) as conn:
            return conn.execute(query).scalar_one_or_none()

    def names(self, owner: str | None, kind: str = "input") -> dict[str, tuple[int, int] | None]:
        """``owner``'s files of ``kind`` as LoadImage lists them (``sub/name`` in a subfolder), with
        each picture's (width, height) where it is known."""
        query = (
            sa.select(comfy_files.c.subfolder, comfy_files.c.name, comfy_files.c.width, comfy_files.c.height)
            .where(comfy_files.c.owner == owner_key(owner), comfy_files.c.type == kind)
            .order_by(comfy_files.c.subfolder, comfy_files.c.name)
        )
        with transaction(self._db, write=False, single=True) as conn:
            rows = conn.execute(query).all()
        return {
            (f"{r.subfolder}/{r.name}" if r.subfolder else r.name):
                (r.width, r.height) if r.width and r.height else None
            for r in rows
        }

    def add(self, owner: str | None, kind: str, subfolder: str, name: str, image_id: str, *,
            overwrite: bool, size: tuple[int, int] | None = None, now: datetime | None = None) -> str:
        """Files ``image_id`` as ``name`` (ComfyUI's rules): overwriting names the new bytes; else a
        taken name holding the same bytes is reused and another becomes ``name (1).ext``, ... The
        name given back is the one filed. ``ValueError`` past ``MAX_RENAMES``."""
        now = now or datetime.now(UTC)
        key = owner_key(owner)
        width, height = size if size is not None else (None, None)
        where = (comfy_files.c.owner == key, comfy_files.c.type == kind, comfy_files.c.subfolder == subfolder)
        with transaction(self._db, write=True) as conn:
            taken = dict(conn.execute(  # a writer's transaction: the names cannot change under it
                sa.select(comfy_files.c.name, comfy_files.c.image_id).where(*where)
            ).all())
            chosen = name if overwrite else _free_name(name, taken, image_id)
            if chosen in taken:
                if taken[chosen] != image_id:
                    conn.execute(sa.update(comfy_files).where(*where, comfy_files.c.name == chosen)
                                 .values(image_id=image_id, width=width, height=height, created_at=now))
                return chosen
            conn.execute(sa.insert(comfy_files).values(owner=key, type=kind, subfolder=subfolder, name=chosen,
                                                       image_id=image_id, width=width, height=height,
                                                       created_at=now))
        return chosen

    # -- prompts ------------------------------------------------------------------------------------

    def reserve_prompt(self, owner: str | None, prompt_id: str, *, now: datetime | None = None) -> int | None:
        """A new prompt row for ``prompt_id`` (no job yet); its number, or None when that id is
        already someone's."""
        now = now or datetime.now(UTC)
        try:
            with transaction(self._db, write=True) as conn:
                row = conn.execute(
                    sa.insert(comfy_prompts)
                    .values(prompt_id=prompt_id, owner=owner_key(owner), created_at=now, hidden=False)
                    .returning(comfy_prompts.c.seq)
                ).one()
        except sa.exc.IntegrityError:
            return None
        return int(row.seq)

    def attach_job(self, seq: int, job_id: str, *, prompt_id: str | None = None) -> None:
        """Records the job of the prompt reserved as ``seq`` (and its final id, when it is the
        job id: the reservation held a placeholder)."""
        values = {"job_id": job_id, **({"prompt_id": prompt_id} if prompt_id else {})}
        with transaction(self._db, write=True) as conn:
            conn.execute(sa.update(comfy_prompts).where(comfy_prompts.c.seq == seq).values(**values))

    def drop_prompt(self, seq: int) -> None:
        """Gives back a reservation whose job was refused."""
        with transaction(self._db, write=True) as conn:
            conn.execute(sa.delete(comfy_prompts).where(comfy_prompts.c.seq == seq,
                                                        comfy_prompts.c.job_id.is_(None)))

    def prompt(self, prompt_id: str) -> PromptRow | None:
        if "\x00" in prompt_id:
            return None
        with transaction(self._db, write=False, single=True) as conn:
            row = conn.execute(sa.select(comfy_prompts).where(comfy_prompts.c.prompt_id == prompt_id)).first()
        return _prompt(row) if row is not None else None

    def prompts(self, owner: str | None, *, every_owner: bool = False, limit: int = 100,
                offset: int = 0, oldest_first: bool = False) -> list[PromptRow]:
        """Visible prompts with a job, newest first (``oldest_first``: the other way; ``every_owner``:
        an admin's view)."""
        query = sa.select(comfy_prompts).where(comfy_prompts.c.hidden.is_(False),
                                               comfy_prompts.c.job_id.is_not(None))
        if not every_owner:
            query = query.where(comfy_prompts.c.owner == owner_key(owner))
        order = comfy_prompts.c.seq.asc() if oldest_first else comfy_prompts.c.seq.desc()
        query = query.order_by(order).offset(offset).limit(limit)
        with transaction(self._db, write=False, single=True) as conn:
            return [_prompt(r) for r in conn.execute(query).all()]

    def hide(self, owner: str | None, prompt_ids: Iterable[str] | None, *, every_owner: bool = False) -> int:
        """Hides prompts from ``/history`` (None: all of ``owner``'s); how many."""
        query = sa.update(comfy_prompts).where(comfy_prompts.c.hidden.is_(False))
        if not every_owner:
            query = query.where(comfy_prompts.c.owner == owner_key(owner))
        if prompt_ids is not None:
            ids = [p for p in prompt_ids if "\x00" not in p]
            if not ids:
                return 0
            query = query.where(comfy_prompts.c.prompt_id.in_(ids))
        with transaction(self._db, write=True) as conn:
            return conn.execute(query.values(hidden=True)).rowcount or 0


def _free_name(name: str, taken: dict[str, str], image_id: str) -> str:
    """``name``, or the first ``stem (n).ext`` not taken; a taken name with these bytes is reused."""
    path = PurePosixPath(name)
    stem, suffix = path.stem, path.suffix
    for n in range(MAX_RENAMES + 1):
        candidate = name if n == 0 else f"{stem} ({n}){suffix}"
        if candidate not in taken or taken[candidate] == image_id:
            return candidate
    raise ValueError(f"too many files named like {name!r}")
