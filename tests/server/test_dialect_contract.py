"""One dialect contract (``server/dialect.py``), one registry, and no dialect importing another.

Read from the source (imports by AST) and from the built app: every dialect package exposes one
``DIALECT`` in the registry; ``app.py`` names no dialect, only the registry; nothing server-wide
imports a dialect; every route the app serves belongs to a registered dialect or to the health
checks; the shared helpers (``LogOnce``, stand-in ids) behave as the dialects rely on.
"""

from __future__ import annotations

import ast
import importlib
import logging
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

import sdgate.server
from sdgate.core.jobs import Job, JobEventKind, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.server.app import create_app
from sdgate.server.dialect import Dialect, job_payloads
from sdgate.server.dialects.registry import DIALECTS
from sdgate.server.errors import DialectRoute
from sdgate.server.imaging import STAND_IN_ID, stand_ins
from sdgate.server.logs import LogOnce
from sdgate.settings import Settings

SERVER = Path(sdgate.server.__file__).parent
DIALECTS_DIR = SERVER / "dialects"
PREFIX = "sdgate.server.dialects"


def _package(path: Path) -> str:
    """The dotted package of a module file under src/sdgate."""
    rel = path.relative_to(SERVER.parent.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1])


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` (of ``package``) imports, relative imports resolved, ``from x import
    y`` as both ``x`` and ``x.y`` (``y`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = package or _package(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def dialect_of(module: str) -> str | None:
    """``a1111`` for ``sdgate.server.dialects.a1111.router``; None outside the dialect packages."""
    if not module.startswith(PREFIX + "."):
        return None
    return module[len(PREFIX) + 1:].split(".")[0]


def dialect_packages() -> list[str]:
    return sorted(p.name for p in DIALECTS_DIR.iterdir() if p.is_dir() and any(p.glob("*.py")))


def test_the_helpers_read_imports() -> None:
    """The AST reader itself: relative imports and ``from package import submodule`` resolve."""
    here = DIALECTS_DIR / "stability" / "router.py"
    found = imported_modules(here)
    assert "sdgate.server.dialects.stability.translate" in found
    assert dialect_of("sdgate.server.dialects.openai.router") == "openai"
    assert dialect_of("sdgate.server.dialects") is None and dialect_of("sdgate.server.imaging") is None


def crossings(dialect: str, path: Path, package: str | None = None) -> list[str]:
    """The imports of ``path`` (a module of ``dialect``) that reach another dialect or the registry."""
    found = []
    for module in sorted(imported_modules(path, package)):
        other = dialect_of(module)
        if other is not None and other != dialect:
            found.append(f"{path.name} imports {module}")
    return found


def test_the_check_catches_a_crossing(tmp_path: Path) -> None:
    module = tmp_path / "router.py"
    module.write_text("from sdgate.server.dialects.stability import images\n"
                      "from ..stability.translate import validate\n"
                      "import sdgate.server.dialects.native.jobs\n"
                      "from . import translate\n")
    found = crossings("openai", module, package=f"{PREFIX}.openai")
    assert found == [
        "router.py imports sdgate.server.dialects.native.jobs",
        "router.py imports sdgate.server.dialects.stability",
        "router.py imports sdgate.server.dialects.stability.images",
        "router.py imports sdgate.server.dialects.stability.translate",
        "router.py imports sdgate.server.dialects.stability.translate.validate",
    ]


@pytest.mark.parametrize("package", dialect_packages())
def test_no_dialect_imports_another(package: str) -> None:
    found = [c for path in sorted((DIALECTS_DIR / package).rglob("*.py")) for c in crossings(package, path)]
    assert found == [], "a dialect imports another (or the registry); move what they share to server/"


def test_nothing_server_wide_imports_a_dialect() -> None:
    """Only ``app.py`` reaches the dialects, and only through the registry."""
    offenders = {}
    for path in sorted(SERVER.rglob("*.py")):
        if DIALECTS_DIR in path.parents:
            continue
        dialects = {m for m in imported_modules(path) if m.startswith(PREFIX)}
        allowed = set()
        if path.name == "app.py":
            allowed = {PREFIX, f"{PREFIX}.registry", f"{PREFIX}.registry.DIALECTS"}
        if dialects - allowed:
            offenders[str(path.relative_to(SERVER))] = sorted(dialects - allowed)
    assert offenders == {}
    assert f"{PREFIX}.registry" in imported_modules(SERVER / "app.py")


def server_routers_of_app() -> list[str]:
    """The server-level modules whose ``router`` ``create_app`` mounts beside the registry's."""
    tree = ast.parse((SERVER / "app.py").read_text(encoding="utf-8"))
    create_app = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_app")
    mounted = [
        ast.unparse(n.args[0]) for n in ast.walk(create_app)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "include_router"
    ]
    return [m.removesuffix(".router") for m in mounted if m != "router"]


def test_app_names_no_dialect_router() -> None:
    """``create_app`` mounts the dialects' routers only by walking the registry; the others it
    mounts are the server's own (health checks, metrics)."""
    source = (SERVER / "app.py").read_text(encoding="utf-8")
    for dialect in DIALECTS:
        assert f"dialects.{dialect.name}" not in source
    tree = ast.parse(source)
    loops = [ast.unparse(n.iter) for n in ast.walk(tree) if isinstance(n, ast.For)]
    assert "DIALECTS" in loops and "dialect.routers" in loops
    others = server_routers_of_app()
    assert "health" in others
    for name in others:
        assert importlib.import_module(f"sdgate.server.{name}").router.routes


@pytest.mark.parametrize("package", dialect_packages())
def test_every_dialect_package_exposes_one_registered_dialect(package: str) -> None:
    module = importlib.import_module(f"{PREFIX}.{package}")
    dialect = module.DIALECT
    assert isinstance(dialect, Dialect) and dialect.name == package
    assert any(d is dialect for d in DIALECTS), f"{package}.DIALECT is not in the registry"
    assert dialect.routers and all(isinstance(r, APIRouter) for r in dialect.routers)
    assert all(c.dialect == package for c in dialect.route_classes)
    # ``from sdgate.server.dialects.<x> import router`` must still be the module, not its APIRouter.
    submodules = [p.stem for p in (DIALECTS_DIR / package).glob("*.py") if p.stem != "__init__"]
    shadowed = [n for n in submodules if not isinstance(getattr(module, n, types), types.ModuleType)]
    assert shadowed == []


def test_the_registry_lists_each_dialect_once() -> None:
    names = [d.name for d in DIALECTS]
    assert sorted(names) == sorted(set(names)) == dialect_packages()


def test_every_route_belongs_to_a_registered_dialect_or_the_server(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, engine="null"))
    served: dict[tuple[str, str], type] = {}
    for path, methods, route in _routes(app.router.routes):
        if isinstance(route, APIRoute) and not path.startswith(("/docs", "/redoc")):  # the docs pages
            served.update({(path, m): type(route) for m in methods})
    server = [importlib.import_module(f"sdgate.server.{name}").router for name in server_routers_of_app()]
    by_dialect: dict[tuple[str, str], type] = {}
    for router in (r for d in DIALECTS for r in d.routers):
        for path, methods, route in _routes(router.routes):
            by_dialect.update({(path, m): type(route) for m in methods})
    declared = dict(by_dialect)
    for router in server:
        for path, methods, route in _routes(router.routes):
            declared.update({(path, m): type(route) for m in methods})
    assert served == declared
    classes = {c for d in DIALECTS for c in d.route_classes}
    assert set(by_dialect.values()) <= classes
    assert {("/healthz", "GET"), ("/readyz", "GET")} <= set(served) - set(by_dialect)


def _routes(routes: list[Any]) -> list[tuple[str, set[str], Any]]:
    """(full path, methods, route) of every route, where FastAPI keeps included routers nested."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens them
        return [(r.path, set(r.methods or ()), r) for r in routes]
    return [(c.path, set(c.methods or ()), c.route) for c in iter_route_contexts(routes)]


def test_a_router_of_another_dialect_is_refused() -> None:
    class Elsewhere(DialectRoute):
        dialect = "elsewhere"

    with pytest.raises(TypeError, match="elsewhere|Elsewhere"):
        Dialect(name="mine", routers=(APIRouter(route_class=Elsewhere),))
    with pytest.raises(TypeError):
        Dialect(name="mine", routers=(APIRouter(),))  # FastAPI's plain APIRoute renders no dialect


def test_exactly_one_dialect_renders_job_payloads() -> None:
    payloads = job_payloads(DIALECTS)
    assert [d.name for d in DIALECTS if d.job_payloads is payloads] == ["native"]
    plain = Dialect(name="native", routers=())
    with pytest.raises(ValueError, match="exactly one"):
        job_payloads([plain])
    with pytest.raises(ValueError, match="native, native"):
        job_payloads([*DIALECTS, *DIALECTS])


def test_native_payloads_render_a_job_and_its_events() -> None:
    job = Job(id="job_1", state=JobState.QUEUED, request=GenerationRequest(prompt="x"), dialect="a1111",
              created_at=datetime.now(UTC))
    payloads = job_payloads(DIALECTS)
    body = payloads.job(job, base="https://example.test")
    assert body["id"] == "job_1" and body["state"] == "queued"
    event = payloads.event(JobEventKind.QUEUED, job, base="")
    assert event["id"] == "job_1"


def test_log_once_logs_each_name_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("sdgate.test_log_once")
    unknown = LogOnce(log, "ignoring unknown field(s): %s")
    reasons = LogOnce(log, "ignoring %s: %s")
    with caplog.at_level(logging.INFO, logger=log.name):
        unknown.names(["a", "b", "a"])
        unknown.names(["b", "c"])
        unknown.names([])
        reasons.once("x", "x", "no such feature")
        reasons.once("x", "x", "no such feature")
        reasons.forget("x")
        reasons.once("x", "x", "again")
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown field(s): a, b",
        "ignoring unknown field(s): c",
        "ignoring x: no such feature",
        "ignoring x: again",
    ]


def test_stand_ins_are_well_formed_ids_for_every_image() -> None:
    assert stand_ins(0, mask=False) == ((), None)
    assert stand_ins(2, mask=True) == ((STAND_IN_ID, STAND_IN_ID), STAND_IN_ID)
    assert STAND_IN_ID.startswith("img_") and len(STAND_IN_ID) == 28
