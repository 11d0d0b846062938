"""What the ComfyUI dialect keeps while a server runs (``services.state``): its file and prompt
names (``jobs/comfy_files.py``, in the job database, so every API node agrees) and this process's
sockets; and the reads its routes make of them (history, object_info, model folders, uploads)."""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from sdgate.core import images as core_images
from sdgate.core.comfy.validate import Choices, GraphLimits, object_info
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.jobs import Job, JobState
from sdgate.jobs.comfy_files import ComfyFiles, PromptRow
from sdgate.server.auth import Principal
from sdgate.server.dialects.comfy import files, translate
from sdgate.server.dialects.comfy.ws import DIALECT, ComfySockets
from sdgate.server.runtime import ServerRuntime
from sdgate.server.services import Services

MAX_FORM_FIELDS = 16


class ComfyState:
    # ComfyUI's model folder names -> the catalog's asset kinds ("checkpoints": the models).
    FOLDERS: ClassVar[dict[str, str]] = {
        "checkpoints": "checkpoints",
        "loras": "lora",
        "vae": "vae",
        "embeddings": "embeddings",
        "controlnet": "controlnet",
        "upscale_models": "esrgan",
    }

    def __init__(self, services: Services) -> None:
        self.services = services
        self.files = ComfyFiles(services.database)
        self.sockets = ComfySockets(services)

    # -- names ----------------------------------------------------------------------------------------

    def folder_files(self, folder: str) -> list[str]:
        """File names of a model folder as ComfyUI lists them (relative paths, with extension)."""
        catalog = self.services.catalog
        if folder == "checkpoints":
            return [info.relpath for info in catalog.list()]
        return [f.relpath for f in catalog.list_files(self.FOLDERS[folder])]

    def choices(self, principal: Principal) -> Choices:
        inputs = self.files.names(principal.id, "input")
        return Choices(
            checkpoints=tuple(self.folder_files("checkpoints")),
            loras=tuple(self.folder_files("loras")),
            vae=tuple(self.folder_files("vae")),
            upscale_models=tuple(self.folder_files("upscale_models")),
            controlnet=tuple(self.folder_files("controlnet")),
            input_images=tuple(inputs),
            image_sizes={name: size for name, size in inputs.items() if size is not None},
        )

    def object_info(self, principal: Principal, class_type: str | None) -> dict[str, Any]:
        limits = GraphLimits.from_settings(self.services.settings)
        return object_info(self.choices(principal), class_type, limits=limits)

    def job_of(self, prompt_id: str, principal: Principal) -> str | None:
        """The job of the caller's prompt ``prompt_id``, or None."""
        job = self._job(prompt_id, principal)
        return job.id if job is not None else None

    def _job(self, prompt_id: str, principal: Principal, *, shown: bool = False) -> Job | None:
        """The caller's job of ``prompt_id`` (``shown``: not deleted from /history), or None. A
        prompt whose row does not name its job yet (``POST /prompt`` records it just after the
        submit, and a quick job may end first) is found by the job itself."""
        row = self.files.prompt(prompt_id)
        if row is not None and (row.hidden and shown):
            return None
        try:
            if row is not None and row.job_id is not None:
                job: Job | None = self.services.store.get(row.job_id)
            elif row is not None:  # the client's own id, not yet attached: the job carries it
                owner = principal.owner_filter
                found, _ = self.services.store.page(owner=owner, metadata={"comfy_prompt_id": prompt_id},
                                                    limit=1)
                job = found[0] if found else None
            elif prompt_id.startswith("job_"):  # our id, the row still under its placeholder
                job = self.services.store.get(prompt_id)
            else:
                job = None
        except NotFound:
            return None
        if job is None or job.dialect != DIALECT or not principal.owns(job.owner):
            return None
        return job

    # -- history ----------------------------------------------------------------------------------------

    def _entry(self, prompt_id: str, job: Job | None) -> tuple[str, dict[str, Any]] | None:
        if job is None or not job.state.terminal:
            return None
        if job.state is JobState.CANCELLED and job.started_at is None:
            return None  # deleted from the queue before it ran: ComfyUI never lists those
        return prompt_id, translate.history_entry(job, prompt_id)

    def _row_job(self, row: PromptRow, principal: Principal) -> Job | None:
        try:
            job = self.services.store.get(row.job_id) if row.job_id else None
        except NotFound:
            return None
        return job if job is not None and principal.owns(job.owner) else None

    def history(self, principal: Principal, max_items: int, offset: int | None) -> dict[str, Any]:
        """The caller's finished prompts in submission order: the last ``max_items``, or, with an
        ``offset``, ``max_items`` from that place counted from the oldest (ComfyUI's reading)."""
        rows = self.files.prompts(principal.id, every_owner=principal.is_admin, limit=max_items,
                                  offset=offset or 0, oldest_first=offset is not None)
        if offset is None:
            rows.reverse()
        found = (self._entry(row.prompt_id, self._row_job(row, principal)) for row in rows)
        return dict(entry for entry in found if entry is not None)

    def history_entry(self, principal: Principal, prompt_id: str) -> dict[str, Any]:
        entry = self._entry(prompt_id, self._job(prompt_id, principal, shown=True))
        return dict([entry]) if entry is not None else {}

    # -- uploads ----------------------------------------------------------------------------------------

    async def upload(self, request: Request, principal: Principal, *, mask: bool,
                     limits: core_images.ImageLimits) -> dict[str, str]:
        try:
            form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS)
        except Exception as exc:  # a body that is not a form: ComfyUI's 400
            raise InvalidRequest(f"body: a multipart form is needed ({type(exc).__name__})",
                                 field="body") from None
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("image: a file is needed", field="image")
            name = files.clean_name(upload.filename, field="image")
            kind = files.image_type(_text(form.get("type")), default="input")
            subfolder = files.clean_subfolder(_text(form.get("subfolder")))
            overwrite = (_text(form.get("overwrite")) or "").lower() in ("true", "1")
            original = files.original_ref(_text(form.get("original_ref"))) if mask else None
            data = await upload.read()
        finally:
            await form.close()

        def store() -> str:
            if original is not None:
                source = files.find_image(self.files, self.services.store, principal, original)
                stored, size = files.mask_onto(self.services.images.get(source), data, limits)
                content_type = "image/png"
            else:
                stored, content_type, size = files.stored_bytes(data, limits, field="image")
            image_id = self.services.images.put(stored, content_type=content_type)
            runtime = self.services.state.find(ServerRuntime)
            if runtime is not None:
                runtime.uploads.record(image_id, owner=principal.id, content_type=content_type,
                                       size=len(stored))
            try:
                return self.files.add(principal.id, kind, subfolder, name, image_id, overwrite=overwrite,
                                      size=size)
            except ValueError as exc:
                raise InvalidRequest(f"image: {exc}", field="image") from None

        filed = await run_in_threadpool(store)
        return {"name": filed, "subfolder": subfolder, "type": kind}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def comfy_state(services: Services) -> ComfyState:
    return services.state.setdefault(ComfyState, lambda: ComfyState(services))
