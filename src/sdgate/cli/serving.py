"""The commands that run sdgate's processes, one per mode (see DESIGN.md, "Modes"):

    sdgate serve    one process: the APIs and a worker per device (embedded mode, the default)
    sdgate api      an API node: every dialect, no engine and no torch; jobs run on workers
    sdgate worker   a worker node: claims jobs from the shared database and runs them; over HTTP
                    only /healthz, /readyz and /metrics

All three take the same store flags (``--database``, ``--storage``, ``--storage-endpoint``) and
check them before serving: a URL sdgate does not speak, a database or bucket it cannot reach, or a
schema it cannot run on is one line and exit code 1 (2 for a usage error), never a traceback.
``--log-format json`` writes one JSON object per log line (``sdgate.logs``).

Access (``serve`` and ``api``; ``--auth`` and ``--public-endpoint`` on ``worker`` too): ``--auth
auto|keys|basic|none`` (auto: API keys once ``sdgate keys create`` made one, else ``--api-auth``'s
Basic, else open), ``--public-endpoint healthz,readyz,metrics``, ``--ssl-certfile/--ssl-keyfile``
(HTTPS, passed to uvicorn), ``--cors-allow-origin`` (off unless given), ``--audit-prompts``,
``--content-blocklist FILE``, ``--safety-checker auto|on|off``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from sdgate import __version__
from sdgate.settings import DEFAULT_PORT, Settings, load_settings

WORKER_PORT = DEFAULT_PORT + 1  # a worker node's health and metrics port
err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Jobs database, images and state. [env: SDGATE_DATA_DIR]")
]
ModelsDirOpt = Annotated[
    Path | None,
    typer.Option("--models-dir", help="A1111 or ComfyUI models folder. [default: <data-dir>/models]"),
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="One checkpoint: .safetensors/.ckpt file or diffusers folder.")
]
HostOpt = Annotated[str | None, typer.Option(help="Address to bind. [default: 127.0.0.1]")]
ListenOpt = Annotated[bool, typer.Option("--listen", help="Bind 0.0.0.0 (all interfaces).")]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(help="sqlite:///path/sdgate.db or postgresql://user:pass@host/db. "
                 "[default: <data-dir>/sdgate.db] [env: SDGATE_DATABASE]"),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Images: a folder, or s3://bucket/prefix (credentials and region from the "
                 "standard AWS variables and files). [default: <data-dir>/images] [env: SDGATE_STORAGE]"),
]
StorageEndpointOpt = Annotated[
    str | None,
    typer.Option("--storage-endpoint", help="s3:// storage on an S3-compatible server (MinIO, "
                 "SeaweedFS, ...): its URL. [default: AWS_ENDPOINT_URL, else AWS]"),
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
EngineOpt = Annotated[
    str | None, typer.Option(help="diffusers, or null (blank images at once, for benchmarks).")
]
ApiAuthOpt = Annotated[
    str | None, typer.Option("--api-auth", help="user:pass[,user2:pass2]: HTTP Basic on every route.")
]
PublicUrlOpt = Annotated[
    str | None, typer.Option("--public-url", help="Base URL for absolute links in responses.")
]
LowvramOpt = Annotated[
    bool, typer.Option("--lowvram", help="CUDA: sequential CPU offload, sliced attention and VAE.")
]
MedvramOpt = Annotated[
    bool, typer.Option("--medvram", help="CUDA: model CPU offload, sliced attention and VAE.")
]
AllowImageUrlsOpt = Annotated[
    bool, typer.Option("--allow-image-urls", help="Accept http(s) URLs (public hosts) as img2img images.")
]
MaxQueuedOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Jobs each --api-auth user (without it: everyone together) may have "
                 "queued or running at once; more is a 429. [default: no limit]"),
]
AuthOpt = Annotated[
    str | None,
    typer.Option("--auth", help="Who may call: auto (API keys once one exists, else --api-auth's Basic, "
                 "else anyone), keys, basic or none. [default: auto]"),
]
PublicEndpointOpt = Annotated[
    list[str] | None,
    typer.Option("--public-endpoint", help="Answered without credentials: healthz, readyz, metrics "
                 "(repeat, or a comma list; none: all closed). [default: healthz,readyz]"),
]
SslCertOpt = Annotated[
    Path | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM): serve HTTPS.")
]
SslKeyOpt = Annotated[Path | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM).")]
CorsOpt = Annotated[
    list[str] | None,
    typer.Option("--cors-allow-origin", help="A browser origin allowed to call the API, e.g. "
                 "https://app.example.com (repeat, or a comma list). [default: none: CORS off]"),
]
AuditPromptsOpt = Annotated[
    bool, typer.Option("--audit-prompts", help="The audit log keeps each call's prompt. [default: never]")
]
BlocklistOpt = Annotated[
    Path | None,
    typer.Option("--content-blocklist", help="A file of blocked words and /regexes/, checked against "
                 "every prompt."),
]
SafetyOpt = Annotated[
    str | None,
    typer.Option("--safety-checker", help="The image safety checker: auto (when its weights are in "
                 "<models>/safety_checker), on, off. [default: auto]"),
]
BatchMaxOpt = Annotated[
    int | None,
    typer.Option("--batch-max", min=1, max=64, help="Compatible jobs run as one GPU batch, at most this "
                 "many (1: off). [default: auto: by free GPU memory; off on CPU]"),
]
BatchWaitOpt = Annotated[
    float | None,
    typer.Option("--batch-wait-ms", min=0, max=1000, help="How long a worker waits for compatible jobs "
                 "to batch with the one it claimed. [default: 15]"),
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="torch.compile the UNet and VAE decoder (CUDA graphs on a GPU).")
]
WarmupOpt = Annotated[
    str | None,
    typer.Option("--warmup", help="Shape buckets compiled at start, e.g. 512x512:1,4,8;768x768:1 "
                 "(size, then batch sizes); other shapes run eager."),
]
PreviewMethodOpt = Annotated[
    str | None,
    typer.Option("--preview-method", help="Progress previews: auto, latent, taesd (TAESD weights in the "
                 "models folder) or none. [default: auto]"),
]
UiOpt = Annotated[
    bool | None, typer.Option("--ui/--no-ui", help="The web UI at /ui (/ redirects there). [default: on]")
]
LogLevelOpt = Annotated[str, typer.Option(help="debug, info, warning, error.")]
LogFormatOpt = Annotated[str, typer.Option("--log-format", help="text, or json (one object per line).")]


def fail(message: str, *, code: int = 1, kind: str = "Error") -> typer.Exit:
    err_console.print(f"[red]{kind}[/red]: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def build_settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise fail(f"{field}: {first['msg']}", code=2, kind="UsageError") from None


def serve(
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help=f"Port. [default: {DEFAULT_PORT}]")] = None,
    listen: ListenOpt = False,
    data_dir: DataDirOpt = None,
    models_dir: ModelsDirOpt = None,
    model: ModelOpt = None,
    database: DatabaseOpt = None,
    storage: StorageOpt = None,
    storage_endpoint: StorageEndpointOpt = None,
    device: DeviceOpt = None,
    engine: EngineOpt = None,
    api_auth: ApiAuthOpt = None,
    public_url: PublicUrlOpt = None,
    lowvram: LowvramOpt = False,
    medvram: MedvramOpt = False,
    allow_image_urls: AllowImageUrlsOpt = False,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Worker threads (one per device); 0: API only, another process on the "
                     "same --data-dir runs the jobs. [default: 1]"),
    ] = None,
    max_queued_per_principal: MaxQueuedOpt = None,
    auth: AuthOpt = None,
    public_endpoint: PublicEndpointOpt = None,
    ssl_certfile: SslCertOpt = None,
    ssl_keyfile: SslKeyOpt = None,
    cors_allow_origin: CorsOpt = None,
    audit_prompts: AuditPromptsOpt = False,
    content_blocklist: BlocklistOpt = None,
    safety_checker: SafetyOpt = None,
    batch_max: BatchMaxOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    compile: CompileOpt = False,
    warmup: WarmupOpt = None,
    preview_method: PreviewMethodOpt = None,
    ui: UiOpt = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Run the server: the AUTOMATIC1111 API on one port, jobs in a durable queue."""
    settings = build_settings(
        host="0.0.0.0" if listen else host, port=port, data_dir=data_dir, models_dir=models_dir,
        model=model, database=database, storage=storage, storage_endpoint=storage_endpoint,
        device=device, engine=engine, api_auth=api_auth, public_url=public_url,
        vram_mode="lowvram" if lowvram else "medvram" if medvram else None,
        allow_image_urls=True if allow_image_urls else None, workers=workers, ui=ui,
        max_queued_per_principal=max_queued_per_principal,
        **access_overrides(auth, public_endpoint, ssl_certfile, ssl_keyfile, cors_allow_origin,
                           audit_prompts, content_blocklist, safety_checker),
        **throughput_overrides(batch_max, batch_wait_ms, compile, warmup, preview_method),
    )
    _prepare(settings, log_level, log_format)
    model_line = _model_line(settings)
    typer.echo(f"sdgate {__version__}: engine {settings.engine} on {settings.device}; {model_line}")
    typer.echo(f"data: {settings.data_dir.resolve()}; models: {settings.resolved_models_dir.resolve()}")
    if settings.workers == 0:
        typer.echo("workers: none (API only: jobs run on the workers of another process on this data dir)")
    from sdgate.server.app import create_app

    _run(create_app(settings), settings, log_level, announce=_announce_api)


def api(
    host: HostOpt = None,
    port: Annotated[int | None, typer.Option(help=f"Port. [default: {DEFAULT_PORT}]")] = None,
    listen: ListenOpt = False,
    data_dir: DataDirOpt = None,
    models_dir: ModelsDirOpt = None,
    model: ModelOpt = None,
    database: DatabaseOpt = None,
    storage: StorageOpt = None,
    storage_endpoint: StorageEndpointOpt = None,
    api_auth: ApiAuthOpt = None,
    public_url: PublicUrlOpt = None,
    allow_image_urls: AllowImageUrlsOpt = False,
    max_queued_per_principal: MaxQueuedOpt = None,
    auth: AuthOpt = None,
    public_endpoint: PublicEndpointOpt = None,
    ssl_certfile: SslCertOpt = None,
    ssl_keyfile: SslKeyOpt = None,
    cors_allow_origin: CorsOpt = None,
    audit_prompts: AuditPromptsOpt = False,
    content_blocklist: BlocklistOpt = None,
    safety_checker: SafetyOpt = None,
    ui: UiOpt = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Run an API node: every dialect, no engine (torch is not needed); jobs go to the database
    and run on `sdgate worker` nodes sharing --database and --storage."""
    settings = build_settings(
        host="0.0.0.0" if listen else host, port=port, data_dir=data_dir, models_dir=models_dir,
        model=model, database=database, storage=storage, storage_endpoint=storage_endpoint,
        api_auth=api_auth, public_url=public_url, allow_image_urls=True if allow_image_urls else None,
        max_queued_per_principal=max_queued_per_principal, workers=0, ui=ui,
        **access_overrides(auth, public_endpoint, ssl_certfile, ssl_keyfile, cors_allow_origin,
                           audit_prompts, content_blocklist, safety_checker),
    )
    _prepare(settings, log_level, log_format)
    typer.echo(f"sdgate {__version__} api node: jobs run on the workers of {_where(settings)}")
    from sdgate.server.app import create_app

    _run(create_app(settings, run_workers=False), settings, log_level, announce=_announce_api)


def worker(
    host: HostOpt = None,
    port: Annotated[
        int | None, typer.Option(help=f"Port of /healthz, /readyz and /metrics. [default: {WORKER_PORT}]")
    ] = None,
    listen: ListenOpt = False,
    data_dir: DataDirOpt = None,
    models_dir: ModelsDirOpt = None,
    model: ModelOpt = None,
    database: DatabaseOpt = None,
    storage: StorageOpt = None,
    storage_endpoint: StorageEndpointOpt = None,
    device: DeviceOpt = None,
    engine: EngineOpt = None,
    api_auth: Annotated[
        str | None, typer.Option("--api-auth", help="user:pass[,...]: HTTP Basic on /metrics.")
    ] = None,
    lowvram: LowvramOpt = False,
    medvram: MedvramOpt = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker threads on this device (one is right for one GPU).")
    ] = 1,
    drain_timeout: Annotated[
        float | None,
        typer.Option("--drain-timeout", min=0, help="On SIGTERM: seconds to finish the jobs in hand "
                     "before exiting (an unfinished job is re-run elsewhere once its lease expires). "
                     "[default: 600]"),
    ] = None,
    auth: AuthOpt = None,
    public_endpoint: PublicEndpointOpt = None,
    batch_max: BatchMaxOpt = None,
    batch_wait_ms: BatchWaitOpt = None,
    compile: CompileOpt = False,
    warmup: WarmupOpt = None,
    preview_method: PreviewMethodOpt = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Run a worker node: claim jobs from the shared database, run them on --device, store the
    images; SIGTERM drains it (the job in hand finishes, nothing new is claimed)."""
    settings = build_settings(
        host="0.0.0.0" if listen else host, port=port if port is not None else WORKER_PORT,
        data_dir=data_dir, models_dir=models_dir, model=model, database=database, storage=storage,
        storage_endpoint=storage_endpoint, device=device, engine=engine, api_auth=api_auth,
        vram_mode="lowvram" if lowvram else "medvram" if medvram else None, workers=workers,
        drain_timeout_s=drain_timeout if drain_timeout is not None else 600.0,
        **access_overrides(auth, public_endpoint),
        **throughput_overrides(batch_max, batch_wait_ms, compile, warmup, preview_method),
    )
    _prepare(settings, log_level, log_format)
    model_line = _model_line(settings)
    typer.echo(f"sdgate {__version__} worker node: engine {settings.engine} on {settings.device}; "
               f"{model_line}; jobs from {_where(settings)}")
    from sdgate.server.app import create_worker_app

    _run(create_worker_app(settings), settings, log_level, announce=_announce_worker)


# -- shared steps ------------------------------------------------------------------------------


def _listed(values: list[str] | None) -> list[str] | None:
    """A repeatable flag that also takes comma lists; ``none`` alone: the empty list."""
    if values is None:
        return None
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return [] if items == ["none"] else items


def throughput_overrides(batch_max: int | None = None, batch_wait_ms: float | None = None,
                         compile: bool = False, warmup: str | None = None,
                         preview_method: str | None = None) -> dict[str, object]:
    """The GPU throughput flags as settings overrides (None: the setting's own default)."""
    return {"batch_max": batch_max, "batch_wait_ms": batch_wait_ms, "compile": True if compile else None,
            "warmup": warmup, "preview_method": preview_method}


def access_overrides(
    auth: str | None = None, public_endpoint: list[str] | None = None, ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None, cors_allow_origin: list[str] | None = None,
    audit_prompts: bool = False, content_blocklist: Path | None = None, safety_checker: str | None = None,
) -> dict[str, object]:
    """The access and safety flags as ``Settings`` fields (those given)."""
    given: dict[str, object] = {
        "auth": auth, "public_endpoints": _listed(public_endpoint), "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile, "cors_allow_origins": _listed(cors_allow_origin),
        "audit_prompts": True if audit_prompts else None, "content_blocklist": content_blocklist,
        "safety_checker": safety_checker,
    }
    return {k: v for k, v in given.items() if v is not None}


def _prepare(settings: Settings, log_level: str, log_format: str) -> None:
    """Everything that can be refused before serving, then logging."""
    from sdgate.logs import LOG_FORMATS, configure_logging

    if log_format not in LOG_FORMATS:
        raise fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}", code=2, kind="UsageError")
    try:
        settings.auth_pairs()
    except ValueError as exc:
        raise fail(f"--api-auth: {exc}", code=2, kind="UsageError") from None
    if settings.auth == "basic" and not settings.api_auth:
        raise fail("--auth basic needs --api-auth user:pass[,user2:pass2]", code=2, kind="UsageError")
    for flag, path in (("--ssl-certfile", settings.ssl_certfile), ("--ssl-keyfile", settings.ssl_keyfile),
                       ("--content-blocklist", settings.content_blocklist)):
        if path is not None and not path.is_file():
            raise fail(f"{flag}: {path} is not a file", code=2, kind="UsageError")
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise fail("--ssl-keyfile needs --ssl-certfile", code=2, kind="UsageError")
    if settings.model is not None and not settings.model.exists():
        raise fail(f"--model: {settings.model} does not exist", code=2, kind="UsageError")
    from sdgate.server.content import startup_problem

    filter_problem = startup_problem(settings)
    if filter_problem is not None:  # a blocklist that does not load, --safety-checker on without its files
        raise fail(filter_problem, code=2, kind="UsageError")
    from sdgate.jobs.storage import data_dir_problem

    storage_problem = data_dir_problem(settings.data_dir, settings.database_url)
    if storage_problem is not None:  # before serving: a server that cannot write would fail every submit
        raise fail(storage_problem, code=1, kind="StorageUnavailable")
    _check_stores(settings)
    configure_logging(log_level, log_format)  # type: ignore[arg-type]


def _check_stores(settings: Settings) -> None:
    """Opens the stores once, as the server will: a URL sdgate cannot use, a database or object
    storage that does not answer, or a schema this code cannot run on is one line and exit."""
    from sdgate.core.errors import StorageUnavailable
    from sdgate.jobs.database import DatabaseUnreachable, SchemaMismatch
    from sdgate.jobs.factory import StoreLocationError, stores_for

    try:
        stores_for(settings).close()
    except StoreLocationError as exc:
        raise fail(f"--{exc}", code=2, kind="UsageError") from None
    except (DatabaseUnreachable, SchemaMismatch) as exc:
        raise fail(str(exc), code=1, kind=type(exc).__name__) from None
    except StorageUnavailable as exc:
        raise fail(exc.message, code=1, kind="StorageUnavailable") from None


def _model_line(settings: Settings) -> str:
    from sdgate.core.errors import ModelNotFound
    from sdgate.core.models import ModelCatalog

    try:
        default = ModelCatalog(settings).resolve(None)
    except ModelNotFound:
        if settings.engine != "null":
            raise fail(
                f"no model found in {settings.resolved_models_dir} and no built-in model; "
                "pass --model PATH or --models-dir DIR",
                code=2,
                kind="UsageError",
            ) from None
        return "model: none (null engine)"
    return f"model: {default.title} ({default.filename})"


def _where(settings: Settings) -> str:
    from sdgate.jobs.database import describe

    return f"{describe(settings.database_url)}; images in {settings.storage_location}"


def _run(app: Any, settings: Settings, log_level: str, *, announce: Any) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=None,  # keep the handlers configure_logging set (text or JSON)
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown for minutes
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=announce, args=(server, settings), daemon=True).start()
    server.run()
    if not server.started:  # the port was taken, or start-up failed: uvicorn has logged why
        raise typer.Exit(1)


def _wait_started(server: object) -> bool:
    while not getattr(server, "started", False):
        if getattr(server, "should_exit", False):
            return False
        time.sleep(0.05)
    return True


def _url(settings: Settings) -> str:
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    scheme = "https" if settings.ssl_certfile is not None else "http"
    return f"{scheme}://{shown}:{settings.port}"


def _announce_api(server: object, settings: Settings) -> None:
    """Print the URL once the port accepts connections (not before: a user who pastes the next
    line at once must not get "connection refused"), then one line to try."""
    if not _wait_started(server):
        return
    url = _url(settings)
    typer.echo(f"listening on {url} (A1111 API at /sdapi/v1, job API at /api/v1, docs at /docs)")
    base = "" if url == f"http://127.0.0.1:{DEFAULT_PORT}" else f"SDGATE_BASE_URL={url} "
    typer.echo(f'try: {base}sdgate generate "a red circle on a blue background" -o out')


def _announce_worker(server: object, settings: Settings) -> None:
    if _wait_started(server):
        typer.echo(f"worker health and metrics on {_url(settings)} (/healthz, /readyz, /metrics)")


def mount(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(api)
    app.command()(worker)
