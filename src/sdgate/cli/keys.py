"""``sdgate keys``: the server's API keys, in its job database (works while the server runs).

    sdgate keys create --name app1 --scopes generate,read --rate 60/min --expires 90d
    sdgate keys list [--json]
    sdgate keys revoke ID|NAME|PREFIX
    sdgate keys rotate ID|NAME|PREFIX

``create`` and ``rotate`` print the key alone on the last line of standard output (``KEY=$(sdgate
keys create ... | tail -n 1)``), or the whole record with it as ``key`` under ``--json``; it is
never shown again, nor written to any log. A server with ``--auth auto`` (the default) turns keys
on within seconds of the first one; a revoked or rotated key is refused by every running node
within ``jobs.keys.KEY_CACHE_S`` seconds.

Exit codes: 0 done, 1 the database could not be reached (or no such key, a name taken), 2 a usage
error (a bad scope, rate or expiry).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sdgate.cli.common import JsonOpt, ServerDatabaseOpt, ServerDataDirOpt, fail, server_database

if TYPE_CHECKING:
    from sdgate.jobs.keys import IssuedKey, KeyStore

app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)
RefArg = Annotated[str, typer.Argument(help="The key's id, name or prefix.")]


@contextmanager
def _keys(database: str | None, data_dir: Path | None) -> Iterator[KeyStore]:
    """The key store of the database the server with these flags uses (migrated as it would be);
    errors as one line and an exit code."""
    from sdgate.core.errors import Conflict, InvalidRequest, NotFound
    from sdgate.jobs.keys import KeyStore

    with server_database(database, data_dir) as engine:
        try:
            yield KeyStore(engine)
        except InvalidRequest as exc:
            fail(exc.message, code=2, kind="UsageError")
        except (NotFound, Conflict) as exc:
            fail(exc.message, code=1, kind=type(exc).__name__)


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what it is for (unique among active keys).")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma list of generate, read, admin.")]
    = "generate,read",
    rate: Annotated[str | None, typer.Option("--rate", help="Requests, e.g. 60/min, 2/s, 1000/h.")] = None,
    rate_burst: Annotated[
        int | None, typer.Option("--rate-burst", min=1, help="Requests at once. [default: a minute's]")
    ] = None,
    images_per_day: Annotated[
        int | None, typer.Option("--images-per-day", min=0, help="Images per UTC day.")
    ] = None,
    gpu_seconds_per_day: Annotated[
        float | None, typer.Option("--gpu-seconds-per-day", min=0, help="GPU seconds per UTC day.")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=0, help="Jobs queued or running at once.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="A duration (90d, 12h, 30m, 2w) or an ISO date.")
    ] = None,
    database: ServerDatabaseOpt = None,
    data_dir: ServerDataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a key; it is printed once, on the last line (or as "key" with --json)."""
    from sdgate.jobs.keys import KeyLimits, parse_expiry, parse_rate

    with _keys(database, data_dir) as keys:
        limits = KeyLimits(
            rate_per_min=parse_rate(rate) if rate is not None else None, rate_burst=rate_burst,
            images_per_day=images_per_day, gpu_seconds_per_day=gpu_seconds_per_day,
            max_concurrent=max_concurrent,
        )
        expires_at = parse_expiry(expires, keys.clock()) if expires is not None else None
        issued = keys.create(name, scopes=scopes.split(","), limits=limits, expires_at=expires_at)
    _print_issued(issued, as_json, "created")


@app.command("list")
def list_keys(
    database: ServerDatabaseOpt = None, data_dir: ServerDataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Every key (never a secret): id, name, prefix, scopes, state, limits, expiry, last use."""
    with _keys(database, data_dir) as keys:
        found = keys.list()
        now = keys.clock()
    if as_json:
        typer.echo(json.dumps([key.public(now) for key in found], indent=2))
        return
    if not found:
        typer.echo("no keys (sdgate keys create --name NAME)")
        return
    for key in found:
        typer.echo(_line(key.public(now)))


@app.command()
def revoke(ref: RefArg, database: ServerDatabaseOpt = None, data_dir: ServerDataDirOpt = None,
           as_json: JsonOpt = False) -> None:
    """Revoke a key: refused by every node within seconds; its queued and running jobs go on."""
    with _keys(database, data_dir) as keys:
        key = keys.revoke(ref)
        record = key.public(keys.clock())
    typer.echo(json.dumps(record, indent=2) if as_json else f"revoked {_line(record)}")


@app.command()
def rotate(ref: RefArg, database: ServerDatabaseOpt = None, data_dir: ServerDataDirOpt = None,
           as_json: JsonOpt = False) -> None:
    """A new secret for a key (same id, scopes, limits and jobs); the old one stops working."""
    with _keys(database, data_dir) as keys:
        issued = keys.rotate(ref)
    _print_issued(issued, as_json, "rotated")


def _print_issued(issued: IssuedKey, as_json: bool, verb: str) -> None:
    record: dict[str, Any] = issued.key.public()
    if as_json:
        typer.echo(json.dumps({**record, "key": issued.secret}, indent=2))
        return
    typer.echo(f"{verb} {_line(record)}")
    typer.echo("the key follows; it is shown this once and stored only as a hash:")
    typer.echo(issued.secret)


def _line(record: dict[str, Any]) -> str:
    limits = ", ".join(f"{k}={v:g}" for k, v in record["limits"].items())
    parts = [record["id"], repr(record["name"]), record["prefix"] + "...", ",".join(record["scopes"]),
             record["state"]]
    if limits:
        parts.append(limits)
    if record["expires_at"]:
        parts.append(f"expires {record['expires_at']}")
    parts.append(f"last used {record['last_used_at'] or 'never'}")
    return "  ".join(parts)

