"""Running a script: expand (everything checked), submit every job, wait for all, assemble, render.

A refused script submits nothing. If the queue cannot take every job, none is left queued; if one
job fails, the others are cancelled and the failure is the response, as for a plain request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio.from_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdgate.core.errors import QueueFull, error_from_dict
from sdgate.core.jobs import ControlAction, Job, JobState
from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.core.results import GenerationResult
from sdgate.server import jobflow
from sdgate.server.auth import Principal
from sdgate.server.dialects.a1111 import translate
from sdgate.server.dialects.a1111.scripts.base import (
    Body,
    JobOutput,
    Script,
    ScriptContext,
    ScriptOutput,
    check_total,
    fill_args,
)
from sdgate.server.services import Services

log = logging.getLogger("sdgate.a1111")


async def run_script(
    script: Script,
    ctx: ScriptContext,
    http_request: Request,
    *,
    dialect: str,
    principal: Principal,
) -> dict[str, Any]:
    """The A1111 response (``images``, ``parameters``, ``info``) of ``ctx.body`` run by ``script``."""
    services = ctx.services

    def postprocess(request: PostprocessRequest) -> list[bytes]:
        """From ``expand``'s thread: the extras job on a worker, as this caller's job."""
        from sdgate.server.dialects.a1111.extras import run_postprocess  # extras imports the router

        return anyio.from_thread.run(run_postprocess, services, request, http_request, principal)

    ctx = dataclasses.replace(ctx, postprocess=postprocess)
    args = fill_args(script, ctx.is_img2img, ctx.body.script_args or [])
    plan = await run_in_threadpool(script.expand, ctx, args)
    check_total(script, sum(r.image_count for r in plan.requests), services.settings)
    if ctx.body.save_images:
        log.info("%s: save_images is not applied to script results", script.title)
    log.info("%s: %d job(s)", script.title, len(plan.requests))
    jobs = await _submit_all(services, plan.requests, dialect=dialect, principal=principal)
    done = await _wait_all(services, jobs, http_request)
    outputs = [
        JobOutput(job.request, job.result or GenerationResult(), await jobflow.image_bytes(services, job))
        for job in done
    ]
    output = await run_in_threadpool(plan.assemble, outputs)
    return render(ctx.body, output, done)


async def _submit_all(
    services: Services, requests: Sequence[GenerationRequest], *, dialect: str, principal: Principal
) -> list[Job]:
    limit = services.settings.max_queue
    depth = await run_in_threadpool(services.store.queue_depth)
    if depth + len(requests) > limit:
        raise QueueFull(f"the queue cannot take {len(requests)} more jobs ({depth} of {limit} waiting)")
    jobs: list[Job] = []
    try:
        for request in requests:
            jobs.append(await jobflow.submit(services, request, dialect=dialect, principal=principal))
    except BaseException:
        await _cancel(services, jobs)
        raise
    return jobs


async def _cancel(services: Services, jobs: Sequence[Job]) -> None:
    for job in jobs:
        try:
            await run_in_threadpool(services.store.request_control, job.id, ControlAction.CANCEL)
        except Exception:  # already finished: nothing to cancel
            log.debug("job %s: not cancelled", job.id, exc_info=True)


async def _wait_all(services: Services, jobs: list[Job], http_request: Request) -> list[Job]:
    waiters = {
        asyncio.ensure_future(jobflow.wait_for(services, job, http_request)): i for i, job in enumerate(jobs)
    }
    finished: dict[int, Job] = {}
    pending = set(waiters)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                job = task.result()
                finished[waiters[task]] = job
                failed = job.state == JobState.FAILED
                if failed or (job.state == JobState.CANCELLED and not (job.result and job.result.images)):
                    await _cancel(services, [j for i, j in enumerate(jobs) if i not in finished])
                    error = (
                        job.error
                        if failed
                        else {"code": "job_cancelled", "message": f"job {job.id} was cancelled"}
                    )
                    raise error_from_dict(error or {"code": "internal_error", "message": "job failed"})
    finally:
        for task in pending:
            task.cancel()
    return [finished[i] for i in range(len(jobs))]


def render(body: Body, output: ScriptOutput, jobs: list[Job]) -> dict[str, Any]:
    """A1111's response: ``info`` as a plain job's, over every job's images, with the script's
    own ``infotexts`` and ``index_of_first_image``."""
    results = [job.result or GenerationResult() for job in jobs]
    first = results[0]
    merged = first.model_copy(update={
        "images": tuple(img for r in results for img in r.images),
        "prompts": tuple(p for r in results for p in r.prompts),
        "negative_prompts": tuple(p for r in results for p in r.negative_prompts),
    })  # fmt: skip
    info = json.loads(
        translate.info_json(
            body, jobs[0].request, merged, model_name=first.model_name, created_at=jobs[0].created_at
        )
    )
    info.update(infotexts=output.infotexts, index_of_first_image=output.index_of_first_image, **output.info)
    return {
        "images": [jobflow.b64(data) for data in output.images] if body.send_images else [],
        "parameters": translate.parameters_echo(body),
        "info": json.dumps(info),
    }
