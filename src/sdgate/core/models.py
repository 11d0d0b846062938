"""The models on disk: what checkpoints exist, what they are, and which one a name means.

Nothing here loads weights or imports torch: the catalog answers ``/sd-models``, resolves names
and gives a model's defaults (native size, VAE factor) from file headers and config files alone,
so API processes without a GPU can do all of it.

Sources, in order: ``<models_dir>/Stable-diffusion/`` (A1111 layout, recursive), then
``<models_dir>/checkpoints/`` (ComfyUI layout), then ``settings.model``, then the built-in demo
model. A folder holding ``model_index.json`` is one diffusers model (never searched inside).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.settings import Settings

log = logging.getLogger("sdgate.models")

Family = Literal["sd1", "sd2", "sdxl"]
ModelFormat = Literal["diffusers", "safetensors", "ckpt"]
Shapes = Mapping[str, tuple[int, ...]]

CHECKPOINT_DIRS = ("Stable-diffusion", "checkpoints")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "demo" / "weights" / "sdgate-demo-shapes"
# The demo's canny ControlNet (a diffusers folder), listed among the ControlNets under this name
# whenever the built-in model is (demo/controlnet_train.py trains it; demo/RESULTS.md).
BUILTIN_CONTROLNET_DIR = BUILTIN_DIR.parent / "sdgate-demo-canny"
BUILTIN_CONTROLNET_NAME = "control_sdgate_demo_canny"
DEFAULT_STEPS = 20
NATIVE_SIZES: dict[str, int] = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024}
# The demo's size when a request leaves size out: trained at 256 and 512, its published evaluation
# (demo/RESULTS.md) is at 512, A1111's own default. Its configs still say 256 (the UNet's
# sample_size), which is what its weights were first trained at, so the default is declared here.
BUILTIN_DEFAULTS: dict[str, int] = {"width": 512, "height": 512}

# Other asset kinds: folder names in the A1111 and ComfyUI layouts, and the files they hold.
ASSET_DIRS: dict[str, tuple[str, ...]] = {
    "lora": ("Lora", "LyCORIS", "loras"),
    "vae": ("VAE", "vae"),
    "embeddings": ("embeddings",),
    "controlnet": ("ControlNet", "controlnet"),
    "esrgan": ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "upscale_models"),  # any spandrel SR
    "face_restorers": ("GFPGAN", "Codeformer", "CodeFormer", "facerestore_models"),
}
ASSET_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "lora": (".safetensors", ".pt", ".ckpt"),
    "vae": (".safetensors", ".pt", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "controlnet": (".safetensors", ".pth", ".ckpt", ".pt"),
    "esrgan": (".pth", ".pt", ".safetensors"),
    "face_restorers": (".pth", ".pt", ".safetensors"),
}


@dataclass(frozen=True)
class ModelInfo:
    """One checkpoint as A1111's ``/sd-models`` shows it, plus what the engine needs to load it."""

    name: str  # A1111's model_name: relpath without extension, "/" -> "_"
    relpath: str  # relative to its models folder, "/"-separated, with extension
    filename: Path  # absolute path of the file or diffusers folder
    format: ModelFormat
    family: Family | None
    sha256: str | None = None  # known once computed (cached in <data_dir>/cache/hashes.json)
    config: Path | None = None  # a .yaml beside the file (A1111 convention)
    builtin: bool = False
    vae_scale_factor: int = 8
    native_width: int = 512  # what the model's configs (or its family) say it was made for
    native_height: int = 512
    default_steps: int = DEFAULT_STEPS
    v_prediction: bool = False
    # The size a request that leaves size out gets (``sdgate.json``, or the demo's declared one);
    # None: the native size. Every dialect reads it through ``default_size`` / ``defaults_for``.
    default_width: int | None = None
    default_height: int | None = None

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) for a request that leaves size out: the one default of this model."""
        return (self.default_width or self.native_width, self.default_height or self.native_height)

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.relpath} [{self.short_hash}]" if self.sha256 else self.relpath

    @property
    def stem(self) -> str:
        """What the infotext's ``Model`` shows: the file name without extension."""
        return Path(self.relpath).stem if self.format != "diffusers" else Path(self.relpath).name


@dataclass(frozen=True)
class AssetFile:
    """A LoRA, VAE, embedding, ControlNet or upscaler file found under the models folder."""

    kind: str
    name: str  # file stem, as A1111 names LoRAs and embeddings
    relpath: str
    path: Path


# --- reading tensor shapes without torch ---------------------------------------------------------


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (8-byte length + JSON); the weights are not read."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{path}: safetensors header too large")
        header = json.loads(fh.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


class _Stub:
    """Stands in for every class a torch pickle names, so unpickling runs no foreign code."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _rebuild_tensor(_storage: object, _offset: int, size: tuple[int, ...], *_args: object) -> tuple[int, ...]:
    return tuple(size)


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch zip pickle into nested dicts whose tensors are replaced by their shapes."""

    def find_class(self, module: str, name: str) -> Any:
        if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if name == "_rebuild_parameter":
            return lambda data, *_: data
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        return _Stub

    def persistent_load(self, pid: object) -> object:
        return None


def read_ckpt_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a ``.ckpt`` (torch zip format), reading only its small pickle."""
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError(f"{path}: not a torch zip checkpoint")
        data = _ShapeUnpickler(zf.open(pkl)).load()
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: no state dict inside")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, tuple)}


def detect_family(shapes: Shapes) -> Family | None:
    """SD 1.x / 2.x / XL from the original (LDM) key layout; None for anything else (refiner, ...)."""
    if not any(k.startswith("model.diffusion_model.") for k in shapes):
        return None
    if any(k.startswith("conditioner.embedders.1.model.") for k in shapes):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return "sd1"
    return None


def vae_factor_from_shapes(shapes: Shapes) -> int | None:
    """2 ** (levels - 1), counting the encoder's ``down.N`` levels; None without a VAE inside."""
    levels = {k.split(".")[3] for k in shapes if k.startswith("first_stage_model.encoder.down.")}
    return 2 ** (len(levels) - 1) if levels else None


def yaml_says_v_prediction(path: Path | None) -> bool:
    """An LDM .yaml with ``parameterization: "v"`` (SD 2.x 768-v); read as text, no YAML parser."""
    if path is None:
        return False
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"""parameterization:\s*["']?v["']?\s*$""", text, re.MULTILINE) is not None


# --- describing one model -------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_diffusers(folder: Path, relpath: str, *, builtin: bool = False) -> ModelInfo:
    """A diffusers folder: its own configs give family, VAE factor and native size.

    An optional ``sdgate.json`` (``{"width": .., "height": .., "steps": ..}``) lets a model declare
    defaults its configs cannot say; the built-in demo's are ``BUILTIN_DEFAULTS`` (its folder is
    rewritten by training, so they are not kept in a file there).
    """
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json")
    extra = _read_json(folder / "sdgate.json")
    if builtin and folder.resolve() == BUILTIN_DIR:
        extra = {**BUILTIN_DEFAULTS, **extra}
    cls = str(index.get("_class_name", ""))
    family: Family | None = None
    if cls.startswith("StableDiffusionXL"):
        family = "sdxl"
    elif cls.startswith("StableDiffusion"):
        family = "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    sample = unet.get("sample_size")
    native = sample * factor if isinstance(sample, int) else 512
    steps = extra.get("steps", DEFAULT_STEPS)
    return ModelInfo(
        name=_model_name(relpath),
        relpath=relpath,
        filename=folder.resolve(),
        format="diffusers",
        family=family,
        builtin=builtin,
        vae_scale_factor=factor,
        native_width=native,
        native_height=native,
        default_width=int(extra["width"]) if "width" in extra else None,
        default_height=int(extra["height"]) if "height" in extra else None,
        default_steps=int(steps),
        v_prediction=sched.get("prediction_type") == "v_prediction",
    )


def describe_file(path: Path, relpath: str) -> ModelInfo:
    """A single-file checkpoint, from its header (safetensors) or pickle (ckpt) alone."""
    fmt: ModelFormat = "safetensors" if path.suffix == ".safetensors" else "ckpt"
    try:
        shapes = read_safetensors_shapes(path) if fmt == "safetensors" else read_ckpt_shapes(path)
    except Exception as exc:  # a damaged file is still listed (as A1111 does), just without facts
        log.warning("cannot read %s: %s", path, exc)
        shapes = {}
    yaml = path.with_suffix(".yaml")
    config = yaml if yaml.is_file() else None
    family = detect_family(shapes)
    v_pred = family == "sd2" and yaml_says_v_prediction(config)
    size_key = "sd2-v" if v_pred else (family or "sd1")
    return ModelInfo(
        name=_model_name(relpath),
        relpath=relpath,
        filename=path.resolve(),
        format=fmt,
        family=family,
        config=config.resolve() if config else None,
        vae_scale_factor=vae_factor_from_shapes(shapes) or 8,
        native_width=NATIVE_SIZES[size_key],
        native_height=NATIVE_SIZES[size_key],
        v_prediction=v_pred,
    )


def _model_name(relpath: str) -> str:
    stem = relpath
    for ext in CHECKPOINT_EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    return stem.replace("/", "_")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def _walk_checkpoints(root: Path) -> list[tuple[Path, str]]:
    """(path, relpath) of checkpoint files and diffusers folders under ``root``, by relpath."""
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        for d in list(dirnames):
            if is_diffusers_folder(here / d):
                dirnames.remove(d)  # a model, not a folder of models
                found.append((here / d, (here / d).relative_to(root).as_posix()))
        found += [
            (here / f, (here / f).relative_to(root).as_posix())
            for f in filenames
            if f.endswith(CHECKPOINT_EXTENSIONS) and not is_vae_beside_checkpoint(f)
        ]
    return sorted(found, key=lambda item: item[1].lower())


def list_files(models_dir: Path, kind: str) -> list[AssetFile]:
    """Files of one asset kind (``lora``, ``vae``, ``embeddings``, ``controlnet``, ``esrgan``,
    ``face_restorers``)."""
    if kind not in ASSET_DIRS:
        raise ValueError(f"unknown asset kind {kind!r}; one of {sorted(ASSET_DIRS)}")
    found: dict[Path, AssetFile] = {}
    for folder in ASSET_DIRS[kind]:
        root = models_dir / folder
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort(key=str.lower)
            for f in sorted(filenames, key=str.lower):
                path = Path(dirpath) / f
                if path.suffix.lower() in ASSET_EXTENSIONS[kind] and path.resolve() not in found:
                    rel = path.relative_to(root).as_posix()
                    found[path.resolve()] = AssetFile(kind, path.stem, rel, path.resolve())
    return list(found.values())


# --- VAEs ---------------------------------------------------------------------------------------

VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"  # A1111's two sd_vae values that name no file
VAE_SUFFIXES = tuple(f".vae{ext}" for ext in ASSET_EXTENSIONS["vae"])  # model.vae.safetensors


def is_vae_beside_checkpoint(filename: str) -> bool:
    """A1111 keeps ``model.vae.pt`` next to ``model.ckpt``: a VAE, not a checkpoint."""
    return filename.lower().endswith(VAE_SUFFIXES)


def list_vaes(models_dir: Path) -> list[AssetFile]:
    """A1111's ``vae_dict``: the VAE folder(s), plus ``*.vae.*`` files among the checkpoints.

    ``AssetFile.name`` is the file name with its extension (``name.safetensors``), A1111's key for a
    VAE. When two folders hold the same file name the VAE folder's first one wins: one name, one file.
    """
    found = {vae.name: vae for vae in reversed(_vaes_beside_checkpoints(models_dir))}
    for vae in reversed(list_files(models_dir, "vae")):
        found[Path(vae.relpath).name] = replace(vae, name=Path(vae.relpath).name)
    return sorted(found.values(), key=lambda vae: _natural_key(vae.name))


def _vaes_beside_checkpoints(models_dir: Path) -> list[AssetFile]:
    out = []
    for folder in CHECKPOINT_DIRS:
        for path, rel in _walk_files(models_dir / folder):
            if is_vae_beside_checkpoint(path.name):
                out.append(AssetFile("vae", path.name, rel, path.resolve()))
    return out


def _walk_files(root: Path) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort(key=str.lower)
        for f in sorted(filenames, key=str.lower):
            path = Path(dirpath) / f
            found.append((path, path.relative_to(root).as_posix()))
    return found


def _natural_key(text: str) -> list[int | str]:
    """A1111's natural_sort_key: "vae2" before "vae10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def vae_stem(filename: str) -> str:
    """``model.vae.safetensors`` -> ``model``; ``name.pt`` -> ``name``."""
    stem = Path(filename).stem
    return stem[: -len(".vae")] if stem.lower().endswith(".vae") else stem


# --- hashes ---------------------------------------------------------------------------------------


def _fingerprint(path: Path) -> tuple[float, int]:
    """(newest mtime, total size) of a file or of a folder's files: a changed model rehashes."""
    if path.is_file():
        st = path.stat()
        return st.st_mtime, st.st_size
    mtime, size = 0.0, 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        mtime, size = max(mtime, st.st_mtime), size + st.st_size
    return mtime, size


def compute_sha256(path: Path) -> str:
    """The file's sha256 (A1111's hash); for a folder, one digest over its files' paths and bytes."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 by absolute path, valid while the model's mtime and size are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = _read_json(path) if path.is_file() else {}

    def get(self, target: Path) -> str | None:
        entry = self._data.get(str(target))
        if not entry:
            return None
        try:
            mtime, size = _fingerprint(target)
        except OSError:
            return None
        if entry.get("mtime") == mtime and entry.get("size") == size:
            return str(entry["sha256"])
        return None

    def put(self, target: Path, sha256: str) -> None:
        mtime, size = _fingerprint(target)
        with self._lock:
            self._data[str(target)] = {"mtime": mtime, "size": size, "sha256": sha256}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.path)


# --- the catalog ----------------------------------------------------------------------------------


class ModelCatalog:
    """Every checkpoint sdgate can offer, found lazily and refreshed on demand (thread-safe)."""

    def __init__(self, settings: Settings, *, builtin_dir: Path | None = BUILTIN_DIR) -> None:
        self.settings = settings
        self.builtin_dir = builtin_dir
        self.hashes = HashCache(settings.data_dir / "cache" / "hashes.json")
        self._lock = threading.RLock()
        self._models: list[ModelInfo] | None = None
        self._old_hashes: dict[str, str] = {}

    def refresh(self) -> None:
        """Scan the folders again (A1111's refresh-checkpoints)."""
        found: dict[Path, ModelInfo] = {}
        names: set[str] = set()

        def add(info: ModelInfo) -> None:
            if info.filename in found:
                return
            if info.name in names:
                log.warning("skipping %s: another model is already named %r", info.filename, info.name)
                return
            found[info.filename] = replace(info, sha256=self.hashes.get(info.filename))
            names.add(info.name)

        for folder in CHECKPOINT_DIRS:
            root = self.settings.resolved_models_dir / folder
            if root.is_dir():
                for path, rel in _walk_checkpoints(root):
                    add(self._describe(path, rel))
        if self.settings.model is not None:
            model = self.settings.model
            if model.exists():
                add(self._describe(model, model.name))
            else:
                log.warning("--model %s does not exist", model)
        if self.builtin_dir is not None and is_diffusers_folder(self.builtin_dir):
            add(describe_diffusers(self.builtin_dir, self.builtin_dir.name, builtin=True))
        with self._lock:
            self._models = list(found.values())
            self._old_hashes = {}

    @staticmethod
    def _describe(path: Path, relpath: str) -> ModelInfo:
        return describe_diffusers(path, relpath) if path.is_dir() else describe_file(path, relpath)

    def list(self) -> list[ModelInfo]:
        with self._lock:
            if self._models is None:
                self.refresh()
            assert self._models is not None
            return list(self._models)

    @property
    def default(self) -> ModelInfo:
        """``default_model``, else ``--model``, else the first checkpoint in the models folder, else
        the built-in demo model: a user who points us at their own models gets one of theirs."""
        models = self.list()
        if self.settings.default_model:
            return self.resolve(self.settings.default_model)
        if self.settings.model is not None:
            wanted = self.settings.model.resolve()
            for info in models:
                if info.filename == wanted:
                    return info
        if not models:
            raise ModelNotFound(
                f"no models in {self.settings.resolved_models_dir} and no built-in model", field="model"
            )
        return next((info for info in models if not info.builtin), models[0])

    def resolve(self, name: str | None) -> ModelInfo:
        """The model a client's name means; None means the default. Unknown: ``ModelNotFound``.

        Matches, in order: title, model_name, relpath, name with extension, file stem, short hash,
        sha256, then A1111's old titles ("name.safetensors [anyhash]") and old 8-character hashes.
        A miss rescans once, so a file dropped in the folder works without a refresh call.
        """
        if name is None or not name.strip():
            return self.default
        for attempt in range(2):
            found = self._match(name.strip().replace("\\", "/"))
            if found is not None:
                return found
            if attempt == 0:
                self.refresh()
        raise ModelNotFound(f"model '{name}' not found", field="model")

    def _match(self, name: str) -> ModelInfo | None:
        models = self.list()
        bare = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", name)  # an old or stale title's hash
        for candidate in dict.fromkeys((name, bare)):
            for keys in (_exact_keys, _loose_keys, _folded_keys):
                key = candidate.casefold() if keys is _folded_keys else candidate
                for info in models:
                    if key in keys(info):
                        return info
        if re.fullmatch(r"[0-9a-fA-F]{8}", name):
            for info in models:
                if self._old_hash(info) == name.lower():
                    return info
        return None

    def _old_hash(self, info: ModelInfo) -> str | None:
        """A1111's pre-sha256 "model hash": sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
        key = str(info.filename)
        if key not in self._old_hashes and info.filename.is_file():
            with info.filename.open("rb") as fh:
                fh.seek(0x100000)
                self._old_hashes[key] = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
        return self._old_hashes.get(key)

    def ensure_hash(self, info: ModelInfo) -> ModelInfo:
        """``info`` with its sha256, computing (and caching) it if needed; A1111 does this on load."""
        if info.sha256:
            return info
        sha = self.hashes.get(info.filename)
        if sha is None:
            log.info("computing sha256 of %s", info.filename)
            sha = compute_sha256(info.filename)
            self.hashes.put(info.filename, sha)
        updated = replace(info, sha256=sha)
        with self._lock:
            if self._models is not None:
                self._models = [updated if m.filename == info.filename else m for m in self._models]
        return updated

    def defaults_for(self, info: ModelInfo) -> ModelDefaults:
        """What every dialect fills in when a request leaves size or steps out."""
        width, height = info.default_size
        return ModelDefaults(
            name=info.name,
            width=width,
            height=height,
            steps=info.default_steps,
            vae_scale_factor=info.vae_scale_factor,
        )

    def list_files(self, kind: str) -> builtins.list[AssetFile]:
        if kind == "vae":
            return self.vaes()
        found = list_files(self.settings.resolved_models_dir, kind)
        builtin = BUILTIN_CONTROLNET_DIR
        if kind == "controlnet" and self.builtin_dir is not None and (builtin / "config.json").is_file():
            name = BUILTIN_CONTROLNET_NAME
            found.append(AssetFile("controlnet", name, name, builtin))
        return found

    def vaes(self) -> builtins.list[AssetFile]:
        """Every VAE file, scanned on each call (cheap), so ``/refresh-vae`` has nothing to reset."""
        return list_vaes(self.settings.resolved_models_dir)

    def find_vae(self, name: str) -> AssetFile | None:
        """The VAE a client's name means: file name (A1111's key), relative path, or bare stem."""
        wanted = name.strip().replace("\\", "/")
        vaes = self.vaes()
        for keys in (lambda v: {v.name, v.relpath}, lambda v: {Path(v.name).stem, vae_stem(v.name)}):
            for vae in vaes:
                if wanted in keys(vae):
                    return vae
        folded = wanted.casefold()
        for vae in vaes:
            if folded in {v.casefold() for v in (vae.name, vae.relpath, vae_stem(vae.name))}:
                return vae
        return None

    def choose_vae(self, choice: str | None, model: ModelInfo, *, field: str) -> AssetFile | None:
        """The VAE file A1111's ``sd_vae`` value means for ``model``: None, "" or "None" -> the
        model's own (no file), "Automatic" -> a VAE named like the checkpoint if there is one,
        else a name from ``/sd-vae``; an unknown name is an ``InvalidRequest`` naming ``field``."""
        if choice is None or choice.strip() in ("", VAE_NONE):
            return None
        if choice.strip() == VAE_AUTOMATIC:
            return self.vae_beside(model)
        found = self.find_vae(choice)
        if found is None:
            raise InvalidRequest(
                f"{field}: VAE '{choice}' not found; GET /sdapi/v1/sd-vae lists them", field=field
            )
        return found

    def vae_beside(self, model: ModelInfo) -> AssetFile | None:
        """A1111's "Automatic": a VAE named like the checkpoint (``model.vae.safetensors``)."""
        if model.builtin:
            return None
        stem = model.stem
        return next((vae for vae in self.vaes() if vae_stem(vae.name) == stem), None)

    def file_sha256(self, path: Path) -> str:
        """sha256 of any file, cached like the checkpoints' (A1111 hashes VAEs for the infotext)."""
        sha = self.hashes.get(path)
        if sha is None:
            sha = compute_sha256(path)
            self.hashes.put(path, sha)
        return sha


def _exact_keys(info: ModelInfo) -> set[str]:
    keys = {info.title, info.name, info.relpath}
    if info.sha256:
        keys |= {info.sha256, info.sha256[:10]}
    return keys


def _folded_keys(info: ModelInfo) -> set[str]:
    return {k.casefold() for k in _exact_keys(info) | _loose_keys(info)}


def _loose_keys(info: ModelInfo) -> set[str]:
    """Names clients also send: the bare stem, the name with its extension."""
    keys = {info.stem, Path(info.relpath).name}
    if info.format != "diffusers":
        keys.add(info.name + Path(info.relpath).suffix)
    return keys
