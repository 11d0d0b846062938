"""A1111's global options over a queue: saved in the data dir, read when a job is submitted.

``GET /options`` lists every setting of A1111 1.10.1 (``option_table``) with A1111's defaults,
serialised as A1111 does (an int option with a non-zero default is a float: ``1.0``). The values
sdgate acts on are live: ``sd_model_checkpoint`` set here applies to A1111 jobs submitted afterwards
(jobs already queued keep the model they were submitted with: the model name is part of their stored
request) and ``sd_checkpoint_hash`` is that model's; ``sd_vae`` works the same way ("Automatic",
"None" or a file name from ``/sd-vae``); ``CLIP_stop_at_last_layers``, ``eta_noise_seed_delta``, the
sampler parameters and the saving options are read by every job. A request's ``override_settings``
with ``override_settings_restore_afterwards: false`` are saved here too.

``POST /options`` checks every key before it changes anything: each value against the type and
range of A1111's settings UI (numbers finite, booleans booleans, radio choices among their entries).
One bad value, or a key A1111 1.10 does not have, refuses the whole request with a 422 in FastAPI's
validation body (``{"detail": [{"loc": ["body", key], "msg": ...}]}``), naming every bad key, and
saves nothing. A1111 itself saves anything, and answers an unknown key with a 500 (a ``KeyError``,
code reading); we answer 422 instead because the request, not the server, is at fault: a 5xx invites
a retry, and 422 is what A1111 clients already handle for a refused body (a missing script, a bad
field). Keys A1111 ignores over the API (``restrict_api``, and the output folders, which here stay
under the data dir) and the settings page's explanation texts are accepted and ignored, so the
whole ``GET`` dict posts back unchanged (Open WebUI does exactly that).

A saved file that does not validate (hand-edited, or from an older sdgate) is repaired at start:
each bad or unknown key goes back to its default, the log says which, and the file is rewritten.

Options are per principal. The file holds the server's defaults, which an admin (or everyone, on a
server without credentials) reads and changes; every other principal (a Basic user, a key without
the admin scope) sees those defaults under its own overrides and saves only its own
(``PrincipalView``, over ``jobs/principal_options.py``), so one user's Clip skip or checkpoint never
changes another's images:

    options.for_principal(principal, store)   # A1111Options itself for an admin, else a view
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError

from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.models import VAE_AUTOMATIC, VAE_NONE, ModelCatalog, ModelInfo
from sdgate.jobs.principal_options import PrincipalOptions
from sdgate.server.auth import Principal
from sdgate.server.dialects.a1111.option_table import (
    DEFAULTS,
    MAX_NAME,
    OPTIONS,
    SPECS,
    Kind,
    check_value,
    normalise,
    wire_value,
)

__all__ = ["DEFAULTS", "RESTRICTED", "A1111Options", "OptionsView", "PrincipalView"]

log = logging.getLogger("sdgate.a1111")

# Options not changed over the API: A1111's ``restrict_api`` ones, and the output folders, which
# sdgate keeps under its data dir (A1111 restricts them only with --hide-ui-dir-config).
RESTRICTED = frozenset(
    {
        *(spec.key for spec in OPTIONS if spec.restrict_api),
        "outdir_samples",
        "outdir_grids",
        "outdir_txt2img_samples",
        "outdir_img2img_samples",
        "outdir_txt2img_grids",
        "outdir_img2img_grids",
    }
)
# Accepted and ignored: explanation texts (never saved in A1111 either) and the current model's
# hash, which follows ``sd_model_checkpoint``.
_IGNORED = frozenset({*(spec.key for spec in OPTIONS if spec.kind is Kind.HTML), "sd_checkpoint_hash"})
# Checked by looking them up (``update``): an unknown checkpoint is a 404, an unknown VAE a 400.
_RESOLVED = frozenset({"sd_model_checkpoint", "sd_vae"})

def _check_name(value: Any) -> str | None:
    """A name to look up: the lookup answers for an unknown one, but a huge one is refused first."""
    if value is not None and not isinstance(value, str):
        return "must be a string"
    if value is not None and len(value) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters"
    return None


def ignored_keys() -> frozenset[str]:
    """Keys ``POST /options`` accepts with any value and does not save."""
    return RESTRICTED | _IGNORED


class OptionsView:
    """The options one caller reads and saves: ``saved()`` (what differs from A1111's defaults),
    and ``save(changes)`` for checked changes. The reading and checking live here, once."""

    catalog: ModelCatalog

    def saved(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, changes: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- reading --------------------------------------------------------------------------------

    def current_model(self) -> ModelInfo:
        """The checkpoint A1111 jobs use now; falls back to the default if the saved one is gone."""
        name = self.saved().get("sd_model_checkpoint")
        if name:
            try:
                return self.catalog.resolve(name)
            except ModelNotFound:
                log.warning("saved sd_model_checkpoint %r is gone; using the default model", name)
        return self.catalog.resolve(None)

    def resolve_checkpoint(self, name: Any, *, field: str) -> ModelInfo:
        if not isinstance(name, str) or not name:
            raise ModelNotFound(f"{field}: must be a checkpoint title or name", field=field)
        try:
            return self.catalog.resolve(name)
        except ModelNotFound:
            raise ModelNotFound(f"{field}: model '{name}' not found", field=field) from None

    def vae_for(self, overrides: dict[str, Any] | None, model: ModelInfo) -> str | None:
        """The VAE file name a job on ``model`` uses: ``override_settings.sd_vae`` (an unknown name
        is a 400 naming it), else the saved ``sd_vae`` (gone since: "Automatic", logged)."""
        if overrides and overrides.get("sd_vae") is not None:
            field = "override_settings.sd_vae"
            choice = _vae_choice(overrides["sd_vae"], field=field)
            found = self.catalog.choose_vae(choice, model, field=field)
        else:
            saved = self.saved().get("sd_vae") or DEFAULTS["sd_vae"]
            try:
                found = self.catalog.choose_vae(saved, model, field="sd_vae")
            except InvalidRequest:
                log.warning("saved sd_vae %r is gone; using Automatic", saved)
                found = self.catalog.choose_vae(VAE_AUTOMATIC, model, field="sd_vae")
        return found.name if found else None

    def effective(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The options one job runs with: the saved ones under its ``override_settings``."""
        return {**DEFAULTS, **self.saved(), **(overrides or {})}

    def snapshot(self) -> dict[str, Any]:
        """Every A1111 1.10 option, in A1111's order and serialisation, with our live values."""
        values = self.saved()
        data = {spec.key: wire_value(spec, values.get(spec.key, spec.default)) for spec in OPTIONS}
        try:
            model = self.current_model()
        except ModelNotFound:
            return data
        data["sd_model_checkpoint"] = model.title
        data["sd_checkpoint_hash"] = model.sha256
        return data

    # --- writing --------------------------------------------------------------------------------

    def update(self, values: dict[str, Any], *, field_prefix: str = "") -> None:
        """Apply a (possibly whole, round-tripped) options dict, all or nothing; unchanged values are
        no-ops. With ``field_prefix`` (``override_settings`` kept after a job), keys A1111 1.10 does
        not have are skipped rather than refused: there they ride along with a generation request."""
        changes = self._checked(values, field_prefix=field_prefix)
        if "sd_model_checkpoint" in changes:
            info = self.resolve_checkpoint(changes["sd_model_checkpoint"], field="sd_model_checkpoint")
            changes["sd_model_checkpoint"] = info.title
        if "sd_vae" in changes:
            choice = _vae_choice(changes["sd_vae"], field="sd_vae")
            if choice not in (VAE_AUTOMATIC, VAE_NONE):
                found = self.catalog.find_vae(choice)
                if found is None:
                    raise InvalidRequest(f"sd_vae: VAE '{choice}' not found", field="sd_vae")
                choice = found.name
            changes["sd_vae"] = choice
        self.save(changes)

    def _checked(self, values: dict[str, Any], *, field_prefix: str) -> dict[str, Any]:
        """The changes ``values`` asks for, normalised; every bad key at once as a 422."""
        errors: list[dict[str, Any]] = []
        changes: dict[str, Any] = {}
        loc: tuple[str, ...] = ("body", field_prefix) if field_prefix else ("body",)
        for key, value in values.items():
            if key in RESTRICTED or key in _IGNORED:
                continue
            spec = SPECS.get(key)
            if spec is None:
                if field_prefix:
                    log.info("not saving %s.%s: AUTOMATIC1111 1.10 has no such option", field_prefix, key)
                    continue
                msg = f"unknown option '{key}': AUTOMATIC1111 1.10 has no such setting"
                errors.append(_error("extra_forbidden", (*loc, key), msg, value))
                continue
            why = _check_name(value) if key in _RESOLVED else check_value(spec, value)
            if why is not None:
                errors.append(_error("value_error", (*loc, key), f"{key}: {why}", value))
                continue
            changes[key] = normalise(spec, value)
        if errors:
            raise RequestValidationError(errors)
        return changes


class A1111Options(OptionsView):
    """The server's defaults, in ``a1111-options.json`` in the data dir: what an admin reads and
    sets, and what every other principal's overrides lie over."""

    def __init__(self, path: Path, catalog: ModelCatalog) -> None:
        self.path = path
        self.catalog = catalog
        self._lock = threading.Lock()
        self._values: dict[str, Any] = self._load()

    def saved(self) -> dict[str, Any]:
        return self._values

    def save(self, changes: dict[str, Any]) -> None:
        with self._lock:
            merged = {**self._values, **changes}
            if merged == self._values:
                return
            self._write(merged)
            self._values = merged

    def for_principal(self, principal: Principal, store: PrincipalOptions) -> OptionsView:
        """The options ``principal`` reads and saves: these (the server's defaults) for an admin
        and for the anonymous principal of a server without credentials; a ``PrincipalView`` over
        them for everyone else, its overrides read once, now."""
        if principal.is_admin or principal.id is None:
            return self
        return PrincipalView(self, store, principal.id)

    def _load(self) -> dict[str, Any]:
        """The saved options; a file that does not validate is repaired (never an outage)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("%s is unreadable (%s); moved to %s, using the defaults", self.path, exc, aside)
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            return {}
        values, problems = _repaired(data)
        if problems:
            log.warning("%s: reset to their defaults: %s", self.path, "; ".join(problems))
            try:
                self._write(values)
            except OSError as exc:
                log.warning("could not rewrite %s: %s", self.path, exc)
        return values

    def _write(self, values: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)


class PrincipalView(OptionsView):
    """One principal's options: the server's defaults (live) under its own overrides, read once
    when the view is made (one request); ``save`` merges changes into its overrides only."""

    def __init__(self, server: A1111Options, store: PrincipalOptions, principal_id: str) -> None:
        self.catalog = server.catalog
        self._server = server
        self._store = store
        self._principal = principal_id
        self._overrides = store.get(principal_id)

    def saved(self) -> dict[str, Any]:
        return {**self._server.saved(), **self._overrides}

    def save(self, changes: dict[str, Any]) -> None:
        if all(k in self._overrides and self._overrides[k] == v for k, v in changes.items()):
            return
        self._overrides = self._store.update(self._principal, changes)


def _repaired(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        spec = SPECS.get(key)
        if key in _IGNORED:
            continue
        if spec is None:
            problems.append(f"{key} (no such option)")
            continue
        why = check_value(spec, value)
        if why is not None:
            problems.append(f"{key} ({why}; was {_jsonable(value)!r})")
            continue
        values[key] = normalise(spec, value)
    return values, problems


def _error(kind: str, loc: tuple[str, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg, "input": _jsonable(value)}


def _jsonable(value: Any) -> Any:
    """``value`` if it serialises as strict JSON, else its repr (NaN and Infinity do not)."""
    if value is None or isinstance(value, str | bool | int):
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."
    if isinstance(value, float) and math.isfinite(value):
        return value
    return repr(value)[:200]


def _vae_choice(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f'{field}: must be "Automatic", "None" or a VAE file name', field=field)
    return value.strip()
