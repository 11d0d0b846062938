"""What the SDK's commands share: the client flags (``--backend``, ``--api-key``, ``--retries``,
``--timeout``, ``--json``), ``make_client``, ``handle_errors``, ``progress_bar``, and the request
flags ``generate`` and ``batch`` share (``request_options``); and for the commands that work on the
server's job database directly (``keys``, ``audit``): its flags and ``server_database``.

Exit codes: 0 ok, 1 API or network error, 2 usage. Errors go to stderr as one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    import sqlalchemy as sa

from sdgate.client import Client, ConfigurationError, SdgateError, UnsupportedFeatureError
from sdgate.client._constants import DEFAULT_BASE_URL_ENV, DEFAULT_MAX_RETRIES, DEFAULT_PORT

DEFAULT_CLI_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
SIZE_RE = re.compile(r"^(\d+)[xX](\d+)$")
err_console = Console(stderr=True)

BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        help=f"Server URL; kind+URL picks a backend (a1111+, comfyui+, stability+, "
        f"openai+, hf+). [env: {DEFAULT_BASE_URL_ENV}; default: {DEFAULT_CLI_URL}]",
    ),
]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", help="Bearer key. [env: SDGATE_API_KEY]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RetriesOpt = Annotated[int, typer.Option("--retries", help="Retries on network errors, 408, 429, 5xx.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for one generation.")]


@dataclass
class ClientOptions:
    backend: str | None = None
    api_key: str | None = None
    retries: int = DEFAULT_MAX_RETRIES
    timeout: float = 600.0


def make_client(options: ClientOptions) -> Client:
    """The SDK client the commands use (tests replace this to inject a transport)."""
    url = options.backend or os.environ.get(DEFAULT_BASE_URL_ENV) or DEFAULT_CLI_URL
    return Client(url, api_key=options.api_key, max_retries=options.retries, timeout=options.timeout)


def fail(message: str, *, code: int, kind: str) -> NoReturn:
    err_console.print(f"[red]{kind}[/red]: {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


# The server's job database, for the commands that work on it directly (keys, audit, db).
ServerDatabaseOpt = Annotated[
    str | None,
    typer.Option("--database", help="sqlite:///path/sdgate.db or postgresql://user:pass@host/db, as the "
                 "server's. [default: <data-dir>/sdgate.db] [env: SDGATE_DATABASE]"),
]
ServerDataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="The server's data dir. [env: SDGATE_DATA_DIR]")
]


@contextmanager
def server_database(database: str | None, data_dir: Path | None) -> Iterator[sa.Engine]:
    """The job database the server with these flags uses (migrated as it would be); errors as one
    line and an exit code."""
    from pydantic import ValidationError

    from sdgate.core.errors import StorageUnavailable
    from sdgate.jobs.database import DatabaseUnreachable, SchemaMismatch, create_db_engine, ensure_schema
    from sdgate.jobs.factory import StoreLocationError, check_database_url
    from sdgate.settings import load_settings

    try:
        url = check_database_url(load_settings(database=database, data_dir=data_dir).database_url)
    except ValidationError as exc:
        fail(str(exc.errors()[0]["msg"]), code=2, kind="UsageError")
    except StoreLocationError as exc:
        fail(f"--{exc}", code=2, kind="UsageError")
    engine = create_db_engine(url)
    try:
        ensure_schema(engine)
        yield engine
    except (DatabaseUnreachable, SchemaMismatch) as exc:
        fail(str(exc), code=1, kind=type(exc).__name__)
    except StorageUnavailable as exc:
        fail(exc.message, code=1, kind=type(exc).__name__)
    finally:
        engine.dispose()


@contextmanager
def handle_errors() -> Iterator[None]:
    """SDK errors -> one line on stderr and exit 1 (2 for usage errors); never a traceback."""
    try:
        yield
    except (ConfigurationError, UnsupportedFeatureError) as exc:
        fail(exc.message, code=2, kind=type(exc).__name__)
    except SdgateError as exc:
        fail(str(exc), code=1, kind=type(exc).__name__)
    except OSError as exc:
        fail(str(exc), code=1, kind=type(exc).__name__)


@contextmanager
def progress_bar(enabled: bool, description: str, total: float | None = None) -> Iterator[Any]:
    """A rich progress bar on stderr, shown only on a terminal (so scripts and pipes get no noise)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not (enabled and err_console.is_terminal),
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda **kw: progress.update(task, **kw)


def on_event(update: Callable[..., None]) -> Callable[[Any], None]:
    def handle(event: Any) -> None:
        if event.total:
            update(completed=event.step, total=event.total, description=event.kind)
        else:
            update(description=event.kind)

    return handle


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    match = SIZE_RE.match(size.strip())
    if not match:
        fail(f"--size: expected WIDTHxHEIGHT such as 768x512, got {size!r}", code=2, kind="UsageError")
    return int(match.group(1)), int(match.group(2))


def result_json(result: Any, paths: list[Path]) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "backend": result.backend,
        "images": [str(p) for p in paths],
        "seeds": result.seeds,
        "infotexts": result.infotexts,
        "timings": result.timings,
        "ignored_fields": list(result.ignored_fields),
        "cached": result.cached,
    }


# -- the request flags: one definition, shared by generate and batch --------------------------------


def _flag(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


REQUEST_FLAGS: tuple[inspect.Parameter, ...] = (
    _flag(
        "n",
        Annotated[int, typer.Option("-n", "--n", "--batch", min=1, help="Images per batch (batch_size).")],
        1,
    ),
    _flag(
        "n_iter",
        Annotated[
            int, typer.Option("--n-iter", min=1, help="Batches, one after another: n x n-iter images.")
        ],
        1,
    ),
    _flag("negative", Annotated[str, typer.Option("--negative", help="Negative prompt.")], ""),
    _flag(
        "steps",
        Annotated[int | None, typer.Option("--steps", min=1, help="Sampling steps. [default: the model's]")],
    ),
    _flag(
        "size",
        Annotated[
            str | None,
            typer.Option(
                "--size",
                help="WIDTHxHEIGHT, e.g. 768x512; each side a multiple of the model's VAE factor (8 for "
                "Stable Diffusion, 16 for the demo model; GET /api/v1/models shows it), else the "
                "server refuses it (400). Left out: the model's own default size (512x512 for SD 1.x "
                "and the demo model).",
            ),
        ],
    ),
    _flag("seed", Annotated[int | None, typer.Option("--seed", min=0, help="Fixed seed. [default: random]")]),
    _flag("cfg", Annotated[float | None, typer.Option("--cfg", help="Guidance scale.")]),
    _flag(
        "sampler",
        Annotated[str | None, typer.Option("--sampler", help="An A1111 sampler name, e.g. 'DPM++ 2M'.")],
    ),
    _flag(
        "scheduler",
        Annotated[
            str | None,
            typer.Option("--scheduler", help="Noise schedule, e.g. karras. [default: the sampler's]"),
        ],
    ),
    _flag("subseed", Annotated[int | None, typer.Option("--subseed", min=0, help="Variation seed.")]),
    _flag(
        "subseed_strength",
        Annotated[
            float | None,
            typer.Option("--subseed-strength", min=0.0, max=1.0, help="How far towards the variation seed."),
        ],
    ),
    _flag(
        "hires",
        Annotated[
            float | None,
            typer.Option("--hires", min=1.0, help="Hires fix: a second pass at this scale, e.g. 2.0."),
        ],
    ),
    _flag(
        "hires_steps",
        Annotated[
            int | None, typer.Option("--hires-steps", min=0, help="Second-pass steps (0: as the first).")
        ],
    ),
    _flag(
        "hires_strength",
        Annotated[
            float | None,
            typer.Option("--hires-strength", min=0.0, max=1.0, help="Second-pass denoising. [default: 0.7]"),
        ],
    ),
    _flag(
        "hires_upscaler",
        Annotated[str | None, typer.Option("--hires-upscaler", help="Upscaler. [default: Latent]")],
    ),
    _flag(
        "lora",
        Annotated[
            list[str] | None,
            typer.Option(
                "--lora",
                help="A LoRA as NAME or NAME:WEIGHT, e.g. detail:0.7 (GET /api/v1/loras); repeat for more.",
            ),
        ],
    ),
    _flag(
        "vae",
        Annotated[str | None, typer.Option("--vae", help="VAE name on the server (unknown: an error).")],
    ),
    _flag(
        "style",
        Annotated[
            list[str] | None,
            typer.Option("--style", help="A saved style (GET /api/v1/styles); repeat for more."),
        ],
    ),
    _flag(
        "clip_skip",
        Annotated[int | None, typer.Option("--clip-skip", min=1, max=12, help="CLIP layers to skip.")],
    ),
    _flag("tiling", Annotated[bool, typer.Option("--tiling", help="Make a seamlessly tiling image.")], False),
    _flag(
        "model",
        Annotated[
            str | None,
            typer.Option("--model", help="Model name on the server (sdgate models); unknown: an error."),
        ],
    ),
)


def request_fields(flags: dict[str, Any]) -> dict[str, Any]:
    """The request flags as ``ImageRequest`` fields: only those that differ from the request's own
    defaults (left out: the server's default, or in a batch the line's own value)."""
    from sdgate.client import ImageRequest

    width, height = parse_size(flags["size"])
    fields: dict[str, Any] = {
        "negative_prompt": flags["negative"],
        "batch_size": flags["n"],
        "n_iter": flags["n_iter"],
        "steps": flags["steps"],
        "width": width,
        "height": height,
        "seed": flags["seed"],
        "cfg_scale": flags["cfg"],
        "sampler": flags["sampler"],
        "scheduler": flags["scheduler"],
        "subseed": flags["subseed"],
        "subseed_strength": flags["subseed_strength"],
        "hires": hires_settings(
            flags["hires"], flags["hires_steps"], flags["hires_strength"], flags["hires_upscaler"]
        ),
        "loras": tuple(flags["lora"] or ()),
        "vae": flags["vae"],
        "styles": tuple(flags["style"] or ()),
        "clip_skip": flags["clip_skip"],
        "tiling": flags["tiling"],
        "model": flags["model"],
    }
    defaults = {f.name: f.default for f in dataclasses.fields(ImageRequest)}
    return {k: v for k, v in fields.items() if v is not None and v != defaults[k]}


def request_options(command: Callable[..., None]) -> Callable[..., None]:
    """Gives a command the request flags (``REQUEST_FLAGS``) where its ``fields`` parameter is, and
    calls it with ``fields=request_fields(...)``: one definition and one mapping for every command
    that builds requests (``generate``, and ``batch`` as defaults for each line)."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == "fields":
            params.extend(REQUEST_FLAGS)
        else:  # typer passes everything by name: keyword-only keeps the order legal
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = [flag.name for flag in REQUEST_FLAGS]

    @functools.wraps(command)
    def with_request_flags(**kwargs: Any) -> None:
        flags = {name: kwargs.pop(name) for name in names}
        command(fields=request_fields(flags), **kwargs)

    with_request_flags.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return with_request_flags


def hires_settings(
    scale: float | None, steps: int | None, strength: float | None, upscaler: str | None
) -> Any:
    """``--hires`` and its companions as a ``Hires`` (``None`` without ``--hires``)."""
    if scale is None:
        if steps is not None or strength is not None or upscaler is not None:
            fail(
                "--hires-steps, --hires-strength and --hires-upscaler need --hires SCALE",
                code=2,
                kind="UsageError",
            )
        return None
    from sdgate.client import Hires

    given: dict[str, Any] = {"second_pass_steps": steps, "denoising_strength": strength, "upscaler": upscaler}
    return Hires(scale=scale, **{k: v for k, v in given.items() if v is not None})
