"""Every name a native job uses, checked before the job exists: a model, VAE, LoRA or style this
server does not have is a 404 naming it and where the valid ones are listed, never a silent swap.

The other dialects keep their clients' rules (A1111 runs a job whose prompt names a missing LoRA
and says so in ``info``; Stability, OpenAI and Hugging Face map their clients' fixed model ids
through ``server/model_aliases.py``). Embeddings are named by bare words in the prompt, where an
unknown word is just a word, and the native request has no field naming one: nothing to check.
"""

from __future__ import annotations

from sdgate.core import restorers
from sdgate.core.errors import ModelNotFound, NotFound
from sdgate.core.loras import find_lora, list_loras, prompt_lora_names
from sdgate.core.models import VAE_AUTOMATIC, VAE_NONE, ModelCatalog, ModelInfo, list_files
from sdgate.core.styles import STYLES_FILE, PromptStyle, load_styles
from sdgate.server.dialects.native.protocol import JobCreate
from sdgate.settings import Settings

MODELS_HINT = "see GET /api/v1/models or sdgate models"
VAES_HINT = "see GET /api/v1/vaes"
LORAS_HINT = "see GET /api/v1/loras"
STYLES_HINT = "see GET /api/v1/styles"
RESTORERS_HINT = "put its weights in the models folder's GFPGAN/, Codeformer/ or facerestore_models/"


def resolve_model(catalog: ModelCatalog, name: str | None, *, field: str = "model") -> ModelInfo:
    """The model ``name`` means (None: the default); unknown: ``ModelNotFound`` naming it."""
    try:
        return catalog.resolve(name)
    except ModelNotFound:
        if name is None or not name.strip():
            raise  # no models at all: the catalog's own message says where it looked
        raise ModelNotFound(f"{field}: no model named {name!r}; {MODELS_HINT}", field=field) from None


def check_vae(catalog: ModelCatalog, name: str | None) -> None:
    """``None``, "", "None" (the model's own) and "Automatic" name no file; anything else must."""
    if name is None or name.strip() in ("", VAE_NONE, VAE_AUTOMATIC):
        return
    if catalog.find_vae(name) is None:
        raise NotFound(f"vae: no VAE named {name!r}; {VAES_HINT}", field="vae")


def check_loras(catalog: ModelCatalog, body: JobCreate) -> None:
    """The ``loras`` field and the prompt's ``<lora:name:w>`` tags (the ones the engine applies)."""
    asked = [(f"loras.{i}.name", lora.name, "") for i, lora in enumerate(body.loras)]
    asked += [("prompt", name, f" (a <lora:{name}> tag)") for name in prompt_lora_names(body.prompt)]
    if not asked:
        return
    files = list_loras(catalog)
    for field, name, where in asked:
        if find_lora(files, name) is None:
            raise NotFound(f"{field}: no LoRA named {name!r}{where}; {LORAS_HINT}", field=field)


def styles_for(settings: Settings, names: list[str]) -> list[PromptStyle]:
    """The styles ``names`` ask for, in order, from ``<data_dir>/styles.csv``."""
    if not names:
        return []
    styles = load_styles(settings.data_dir / STYLES_FILE)
    for i, name in enumerate(names):
        if name not in styles:
            raise NotFound(f"styles.{i}: no style named {name!r}; {STYLES_HINT}", field=f"styles.{i}")
    return [styles[name] for name in names]


def face_restorer(settings: Settings, name: str | None) -> str | None:
    """The installed face restorer ``name`` means (any case), canonical; None: none asked."""
    if name is None:
        return None
    installed = restorers.available(list_files(settings.resolved_models_dir, "face_restorers"))
    for known in installed:
        if known.lower() == name.strip().lower():
            return known
    have = f"installed: {', '.join(installed)}" if installed else "none is installed"
    raise NotFound(f"restore_faces: no face restorer named {name!r} ({have}); {RESTORERS_HINT}",
                   field="restore_faces")


def check(catalog: ModelCatalog, settings: Settings, body: JobCreate) -> tuple[ModelInfo, list[PromptStyle]]:
    """The job's model and styles, once every name the body uses is known to exist."""
    model = resolve_model(catalog, body.model)
    second = (("refiner", body.refiner), ("hires.checkpoint", body.hires.checkpoint if body.hires else None))
    for field, name in second:
        if name is not None and name.strip():
            resolve_model(catalog, name, field=field)
    check_vae(catalog, body.vae)
    check_loras(catalog, body)
    return model, styles_for(settings, body.styles)
