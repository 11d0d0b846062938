"""The asyncio client: the same protocols as ``Client``, driven with httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from sdgate.client._batch import BatchOutput, normalize_requests
from sdgate.client._constants import DEFAULT_BATCH_CONCURRENCY
from sdgate.client._core import (
    BaseClient,
    make_status_error,
    mode_fields,
    translate_transport_error,
    unexpected_answer,
)
from sdgate.client._exceptions import SdgateError
from sdgate.client._ops import Call, Close, Emit, Join, NextEvent, Poll, Sleep, Start, Subscribe
from sdgate.client._sse import ServerSentEvent, SSEDecoder
from sdgate.client._types import (
    BatchItem,
    GenerationResult,
    ImageInput,
    ImageRequest,
    Job,
    JobList,
    Model,
    ProgressEvent,
)
from sdgate.client._ws import AsyncWebSocket
from sdgate.client.backends._base import Backend, Context, Gen

ProgressCallback = Callable[[ProgressEvent], None]


async def _sse_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    decoder = SSEDecoder()
    try:
        async for line in response.aiter_lines():
            event = decoder.feed(line)
            if event is not None:
                yield event
    except httpx.TransportError as exc:
        raise translate_transport_error(exc, response.request.url) from exc
    event = decoder.feed("")
    if event is not None:
        yield event


class _Box:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


class AsyncClient(BaseClient):
    """``AsyncClient(base_url=..., api_key=...)``: use with ``async with``; safe across tasks."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport, **self._http_defaults())
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def with_options(self, **changes: Any) -> AsyncClient:
        clone = AsyncClient(http_client=self._http, **self._option_overrides(**changes))
        clone._sleep = self._sleep
        return clone

    # -- transport ----------------------------------------------------------------------------------

    async def _send(self, call: Call, backend: Backend, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            if backend.limiter is not None:
                delay = backend.limiter.reserve()
                if delay > 0:
                    await self._sleep(delay)
            request = self._http.build_request(
                call.method,
                call.url,
                params=call.params,
                json=call.json,
                content=call.content,
                data=call.data,
                files=call.files,
                headers=self._headers(call, backend),
                timeout=self._timeout(call),
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = translate_transport_error(exc, request.url)
                wait = self._retry_delay(attempt, call, error=error)
                if wait is None:
                    raise error from exc
            else:
                if response.is_success:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                wait = self._retry_delay(attempt, call, response=response)
                if wait is None:
                    raise make_status_error(response)
            await self._sleep(wait)
            attempt += 1

    async def _drive(
        self, gen: Gen, backend: Backend, box: _Box, *, deadline: float | None = None
    ) -> AsyncIterator[Any]:
        """Run a backend protocol; yields ``Emit`` events and leaves its value in ``box``."""
        streams: dict[int, tuple[Callable[[], Awaitable[None]], AsyncIterator[Any]]] = {}
        tasks: dict[int, asyncio.Task[httpx.Response]] = {}
        handles = itertools.count()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = gen.throw(error) if error is not None else gen.send(value)
                except StopIteration as stop:
                    box.value = stop.value
                    return
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    raise unexpected_answer(backend, exc) from exc
                value, error = None, None
                try:
                    if isinstance(op, Call):
                        value = await self._send(op, backend)
                    elif isinstance(op, Emit):
                        yield op.event
                    elif isinstance(op, Sleep):
                        self._check_sleep(op.seconds, deadline)
                        await self._sleep(op.seconds)
                    elif isinstance(op, Subscribe):
                        value = next(handles)
                        streams[value] = await self._subscribe(op, backend)
                    elif isinstance(op, NextEvent):
                        value = await anext(streams[op.handle][1], None)
                    elif isinstance(op, Close):
                        close, events = streams.pop(op.handle)
                        await events.aclose()  # type: ignore[attr-defined]
                        await close()
                    elif isinstance(op, Start):
                        value = next(handles)
                        tasks[value] = asyncio.create_task(self._send(op.call, backend))
                    elif isinstance(op, Poll):
                        value = tasks[op.handle].done()
                    elif isinstance(op, Join):
                        value = await tasks.pop(op.handle)
                    else:  # pragma: no cover - a backend bug
                        raise TypeError(f"unknown op {op!r}")
                except SdgateError as exc:
                    error = exc
        finally:
            gen.close()
            for close, events in streams.values():
                await events.aclose()  # type: ignore[attr-defined]
                await close()
            for task in tasks.values():
                task.cancel()

    async def _subscribe(
        self, op: Subscribe, backend: Backend
    ) -> tuple[Callable[[], Awaitable[None]], AsyncIterator[Any]]:
        """An open event stream: (its async close, an async iterator of its events)."""
        if op.kind == "ws":
            if backend.limiter is not None and (delay := backend.limiter.reserve()) > 0:
                await self._sleep(delay)
            ws = await AsyncWebSocket.connect(op.call.url, **self._ws_options(op.call, backend))
            return ws.close, ws.messages()
        response = await self._send(op.call, backend, stream=True)
        return response.aclose, _sse_events(response)

    async def cluster(self) -> dict[str, Any]:
        """The server's workers and queue depth by state (``GET /api/v1/cluster``); see ``Client.cluster``."""
        backend = self._jobs_backend()
        return await self._run(backend.cluster_status(), backend)  # type: ignore[no-any-return]

    async def _run(
        self,
        gen: Gen,
        backend: Backend,
        on_event: ProgressCallback | None = None,
        *,
        deadline: float | None = None,
    ) -> Any:
        box = _Box()
        async for event in self._drive(gen, backend, box, deadline=deadline):
            if on_event is not None:
                on_event(event)
        return box.value

    # -- generation ---------------------------------------------------------------------------------

    async def _generate_iter(self, request: ImageRequest, box: _Box, *, progress: bool) -> AsyncIterator[Any]:
        cached = self._cache_get(request)
        if cached is not None:
            box.value = cached
            return
        for attempt in self._attempts(request, progress=progress):
            inner = _Box()
            try:
                driver = self._drive(attempt.protocol, attempt.backend, inner, deadline=attempt.deadline)
                async for event in driver:
                    yield event
            except SdgateError as exc:
                if self._falls_back(attempt, exc):
                    continue
                raise
            box.value = self._finish(attempt, request, inner.value)
            return

    async def generate(
        self, request: ImageRequest, *, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        box = _Box()
        async for event in self._generate_iter(request, box, progress=on_progress is not None):
            if on_progress is not None:
                on_progress(event)
        return box.value

    async def stream(self, request: ImageRequest | str, **fields: Any) -> AsyncIterator[ProgressEvent]:
        box = _Box()
        async for event in self._generate_iter(
            self._request(request, mode_fields(**fields)), box, progress=True
        ):
            if not event.terminal:
                yield event
        yield ProgressEvent(kind="succeeded", job_id=box.value.job_id, step=1, total=1, result=box.value)

    async def txt2img(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        n: int | None = None,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        **extra: Any,
    ) -> GenerationResult:
        fields = mode_fields(
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            cfg_scale=cfg_scale,
            sampler=sampler,
            scheduler=scheduler,
            seed=seed,
            n=n,
            model=model,
            **extra,
        )
        return await self.generate(self._request(prompt, fields), on_progress=on_progress)

    async def img2img(
        self,
        prompt: str,
        *,
        init_image: ImageInput,
        denoising_strength: float | None = None,
        on_progress: ProgressCallback | None = None,
        **fields: Any,
    ) -> GenerationResult:
        req = self._request(
            prompt, mode_fields(init_image=init_image, denoising_strength=denoising_strength, **fields)
        )
        return await self.generate(req, on_progress=on_progress)

    async def inpaint(
        self,
        prompt: str,
        *,
        init_image: ImageInput,
        mask: ImageInput,
        denoising_strength: float | None = None,
        on_progress: ProgressCallback | None = None,
        **fields: Any,
    ) -> GenerationResult:
        req = self._request(
            prompt,
            mode_fields(init_image=init_image, mask=mask, denoising_strength=denoising_strength, **fields),
        )
        return await self.generate(req, on_progress=on_progress)

    # -- throughput ---------------------------------------------------------------------------------

    async def map(
        self,
        requests: Iterable[ImageRequest | str | dict[str, Any]],
        *,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        output_dir: str | Path | None = None,
    ) -> AsyncIterator[BatchItem]:
        """Yield a ``BatchItem`` per request as each finishes, ``concurrency`` at a time."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        items = list(enumerate(normalize_requests(requests)))
        out = BatchOutput(output_dir) if output_dir is not None else None
        queue: asyncio.Queue[BatchItem] = asyncio.Queue(maxsize=concurrency)  # backpressure
        pending = iter(items)

        async def work(index: int, request: ImageRequest) -> BatchItem:
            if out is not None and (old := out.existing(index, request)) is not None:
                return old
            try:
                result = await self.generate(request)
                paths = await asyncio.to_thread(out.write, index, request, result) if out is not None else []
            except Exception as exc:  # noqa: BLE001 - one item's failure must not end the batch
                return BatchItem(index=index, request=request, error=exc)
            return BatchItem(index=index, request=request, result=result, paths=paths)

        async def worker() -> None:
            for index, request in pending:
                await queue.put(await work(index, request))

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(1, len(items))))]
        try:
            for _ in range(len(items)):
                yield await queue.get()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def batch(
        self,
        requests: Iterable[ImageRequest | str | dict[str, Any]],
        *,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        output_dir: str | Path | None = None,
    ) -> list[BatchItem]:
        """Like ``Client.batch``: every item, in input order."""
        items = [item async for item in self.map(requests, concurrency=concurrency, output_dir=output_dir)]
        return sorted(items, key=lambda item: item.index)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _run(
        self, gen: Gen, on_event: ProgressCallback | None = None, deadline: float | None = None
    ) -> Any:
        return await self._client._run(gen, self._client._jobs_backend(), on_event, deadline=deadline)

    async def submit(self, request: ImageRequest | str, **fields: Any) -> Job:
        req = self._client._request(request, mode_fields(**fields))
        self._client._jobs_backend().check(req, strict=self._client.strict)
        return await self._run(self._client._jobs_backend().submit(req))

    async def get(self, job_id: str) -> Job:
        return await self._run(self._client._jobs_backend().get_job(job_id))

    async def list(
        self, *, state: str | None = None, limit: int | None = None, cursor: str | None = None, **filters: Any
    ) -> JobList:
        return await self._run(
            self._client._jobs_backend().list_jobs(state=state, limit=limit, cursor=cursor, **filters)
        )

    async def cancel(self, job_id: str) -> Job:
        return await self._run(self._client._jobs_backend().cancel_job(job_id))

    async def delete(self, job_id: str) -> None:
        """Delete a job, its events and the images only it used (a running job is cancelled first)."""
        await self._run(self._client._jobs_backend().delete_job(job_id))

    async def retry(self, job_id: str) -> Job:
        """A new job with an ended job's request (same seeds), priority, metadata and callback."""
        return await self._run(self._client._jobs_backend().retry_job(job_id))

    async def events(self) -> AsyncIterator[ProgressEvent]:
        """Every event of every job of yours, as it happens (WebSocket ``/api/v1/events``):
        ``async for event in client.jobs.events(): ...``; ``break`` (or ``aclose()``) closes it."""
        backend = self._client._jobs_backend()
        async for event in self._client._drive(backend.job_events(), backend, _Box()):
            yield event

    async def wait(
        self, job_id: str, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        return await self._wait(job_id, timeout, on_progress)

    async def _wait(
        self,
        job_id: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        *,
        include_images: bool = False,
    ) -> Job:
        ctx = Context(progress=on_progress is not None, timeout=timeout or self._client.timeout)
        deadline = time.monotonic() + ctx.timeout
        gen = self._client._jobs_backend().wait_job(job_id, ctx, include_images=include_images)
        return await self._run(gen, on_progress, deadline)

    async def result(self, job: Job | str, *, timeout: float | None = None) -> GenerationResult:
        if isinstance(job, str) or not job.done:  # the finished job brings its images where it can
            job = await self._wait(
                job if isinstance(job, str) else job.id, timeout, None, include_images=True
            )
        return await self._run(self._client._jobs_backend().job_result(job))

    async def stream(self, job_id: str) -> AsyncIterator[ProgressEvent]:
        backend = self._client._jobs_backend()
        gen = backend.wait_job(job_id, Context(progress=True, timeout=self._client.timeout))
        async for event in self._client._drive(gen, backend, _Box()):
            yield event


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[Model]:
        return await self._client._run(self._client.backend.list_models(), self._client.backend)
