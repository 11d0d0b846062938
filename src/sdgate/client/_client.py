"""The synchronous client: a thin shell that drives the core's protocols with httpx.Client."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
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
from sdgate.client._ws import SyncWebSocket
from sdgate.client.backends._base import Backend, Context, Gen

ProgressCallback = Callable[[ProgressEvent], None]


def _sse_events(response: httpx.Response) -> Iterator[ServerSentEvent]:
    decoder = SSEDecoder()
    try:
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                yield event
    except httpx.TransportError as exc:
        raise translate_transport_error(exc, response.request.url) from exc
    event = decoder.feed("")
    if event is not None:
        yield event


class Client(BaseClient):
    """``Client(base_url=..., api_key=...)``; see ``BaseClient`` for every option.

    Thread-safe: one client (one connection pool) can serve many threads.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(transport=transport, **self._http_defaults())
        self._executor: ThreadPoolExecutor | None = None
        self._sleep: Callable[[float], None] = time.sleep
        self.jobs = Jobs(self)
        self.models = Models(self)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_options(self, **changes: Any) -> Client:
        """A client with some options changed, sharing this one's connections and rate limits."""
        clone = Client(http_client=self._http, **self._option_overrides(**changes))
        clone._sleep = self._sleep
        return clone

    # -- transport ----------------------------------------------------------------------------------

    def _send(self, call: Call, backend: Backend, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            if backend.limiter is not None:
                backend.limiter.acquire(self._sleep)
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
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = translate_transport_error(exc, request.url)
                delay = self._retry_delay(attempt, call, error=error)
                if delay is None:
                    raise error from exc
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                delay = self._retry_delay(attempt, call, response=response)
                if delay is None:
                    raise make_status_error(response)
            self._sleep(delay)
            attempt += 1

    def _drive(
        self, gen: Gen, backend: Backend, *, deadline: float | None = None
    ) -> Generator[Any, None, Any]:
        """Run a backend protocol: perform each op, yield ``Emit`` events, return its value."""
        streams: dict[int, tuple[Any, Iterator[Any]]] = {}
        tasks: dict[int, Future[httpx.Response]] = {}
        handles = itertools.count()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = gen.throw(error) if error is not None else gen.send(value)
                except StopIteration as stop:
                    return stop.value
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    raise unexpected_answer(backend, exc) from exc
                value, error = None, None
                try:
                    if isinstance(op, Call):
                        value = self._send(op, backend)
                    elif isinstance(op, Emit):
                        yield op.event
                    elif isinstance(op, Sleep):
                        self._check_sleep(op.seconds, deadline)
                        self._sleep(op.seconds)
                    elif isinstance(op, Subscribe):
                        value = next(handles)
                        streams[value] = self._subscribe(op, backend)
                    elif isinstance(op, NextEvent):
                        value = next(streams[op.handle][1], None)
                    elif isinstance(op, Close):
                        response, _ = streams.pop(op.handle)
                        response.close()
                    elif isinstance(op, Start):
                        value = next(handles)
                        tasks[value] = self._pool().submit(self._send, op.call, backend)
                    elif isinstance(op, Poll):
                        value = tasks[op.handle].done()
                    elif isinstance(op, Join):
                        value = tasks.pop(op.handle).result()
                    else:  # pragma: no cover - a backend bug
                        raise TypeError(f"unknown op {op!r}")
                except SdgateError as exc:
                    error = exc
        finally:
            gen.close()
            for response, _ in streams.values():
                response.close()
            for task in tasks.values():
                task.cancel()

    def _subscribe(self, op: Subscribe, backend: Backend) -> tuple[Any, Iterator[Any]]:
        """An open event stream: (something with ``close()``, an iterator of its events)."""
        if op.kind == "ws":
            if backend.limiter is not None:
                backend.limiter.acquire(self._sleep)
            ws = SyncWebSocket(op.call.url, **self._ws_options(op.call, backend))
            return ws, ws.messages()
        response = self._send(op.call, backend, stream=True)
        return response, _sse_events(response)

    def cluster(self) -> dict[str, Any]:
        """The server's workers (device, loaded models, free memory, current job, stale) and queue
        depth by state: ``GET /api/v1/cluster`` (sdgate servers only), what ``sdgate status`` shows."""
        backend = self._jobs_backend()
        return self._run(backend.cluster_status(), backend)  # type: ignore[no-any-return]

    def _run(
        self,
        gen: Gen,
        backend: Backend,
        on_event: ProgressCallback | None = None,
        *,
        deadline: float | None = None,
    ) -> Any:
        driver = self._drive(gen, backend, deadline=deadline)
        while True:
            try:
                event = next(driver)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sdgate-client")
        return self._executor

    # -- generation ---------------------------------------------------------------------------------

    def _generate_iter(
        self, request: ImageRequest, *, progress: bool
    ) -> Generator[ProgressEvent, None, GenerationResult]:
        cached = self._cache_get(request)
        if cached is not None:
            return cached
        for attempt in self._attempts(request, progress=progress):
            try:
                result: GenerationResult = yield from self._drive(
                    attempt.protocol, attempt.backend, deadline=attempt.deadline
                )
            except SdgateError as exc:
                if self._falls_back(attempt, exc):
                    continue
                raise
            return self._finish(attempt, request, result)
        raise AssertionError("unreachable")  # pragma: no cover

    def generate(
        self, request: ImageRequest, *, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """Run one request to the end (with the fallback chain and the cache)."""
        driver = self._generate_iter(request, progress=on_progress is not None)
        while True:
            try:
                event = next(driver)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(event)

    def stream(self, request: ImageRequest | str, **fields: Any) -> Iterator[ProgressEvent]:
        """Progress events of one generation; the last one (``succeeded``) carries ``.result``."""
        driver = self._generate_iter(self._request(request, mode_fields(**fields)), progress=True)
        while True:
            try:
                event = next(driver)
            except StopIteration as stop:
                yield ProgressEvent(
                    kind="succeeded", job_id=stop.value.job_id, step=1, total=1, result=stop.value
                )
                return
            if not event.terminal:
                yield event

    def txt2img(
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
        return self.generate(self._request(prompt, fields), on_progress=on_progress)

    def img2img(
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
        return self.generate(req, on_progress=on_progress)

    def inpaint(
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
        return self.generate(req, on_progress=on_progress)

    # -- throughput ---------------------------------------------------------------------------------

    def batch(
        self,
        requests: Iterable[ImageRequest | str | dict[str, Any]],
        *,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        output_dir: str | Path | None = None,
        on_item: Callable[[BatchItem], None] | None = None,
    ) -> list[BatchItem]:
        """Run many requests, ``concurrency`` at a time; errors are kept per item, never raised.

        With ``output_dir``, results are written as they arrive and items already there are skipped.
        Returns the items in input order; ``on_item`` sees them in completion order.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        items = normalize_requests(requests)
        out = BatchOutput(output_dir) if output_dir is not None else None
        done: list[BatchItem | None] = [None] * len(items)

        def work(index: int, request: ImageRequest) -> BatchItem:
            if out is not None and (old := out.existing(index, request)) is not None:
                return old
            try:
                result = self.generate(request)
                paths = out.write(index, request, result) if out is not None else []
            except Exception as exc:  # noqa: BLE001 - one item's failure must not end the batch
                return BatchItem(index=index, request=request, error=exc)
            return BatchItem(index=index, request=request, result=result, paths=paths)

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sdgate-batch") as pool:
            futures = [pool.submit(work, i, r) for i, r in enumerate(items)]
            for future in as_completed(futures):
                item = future.result()
                done[item.index] = item
                if on_item is not None:
                    on_item(item)
        return [item for item in done if item is not None]


class Jobs:
    """``client.jobs``: the native job API (sdgate servers only)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _run(self, gen: Gen, on_event: ProgressCallback | None = None, deadline: float | None = None) -> Any:
        return self._client._run(gen, self._client._jobs_backend(), on_event, deadline=deadline)

    def submit(self, request: ImageRequest | str, **fields: Any) -> Job:
        req = self._client._request(request, mode_fields(**fields))
        self._client._jobs_backend().check(req, strict=self._client.strict)
        return self._run(self._client._jobs_backend().submit(req))

    def get(self, job_id: str) -> Job:
        return self._run(self._client._jobs_backend().get_job(job_id))

    def list(
        self, *, state: str | None = None, limit: int | None = None, cursor: str | None = None, **filters: Any
    ) -> JobList:
        return self._run(
            self._client._jobs_backend().list_jobs(state=state, limit=limit, cursor=cursor, **filters)
        )

    def cancel(self, job_id: str) -> Job:
        return self._run(self._client._jobs_backend().cancel_job(job_id))

    def delete(self, job_id: str) -> None:
        """Delete a job, its events and the images only it used (a running job is cancelled first)."""
        self._run(self._client._jobs_backend().delete_job(job_id))

    def retry(self, job_id: str) -> Job:
        """A new job with an ended job's request (same seeds), priority, metadata and callback."""
        return self._run(self._client._jobs_backend().retry_job(job_id))

    def events(self) -> Iterator[ProgressEvent]:
        """Every event of every job of yours, as it happens (WebSocket ``/api/v1/events``), until
        you stop iterating: ``for event in client.jobs.events(): ...``; ``break`` closes it."""
        backend = self._client._jobs_backend()
        yield from self._client._drive(backend.job_events(), backend)

    def wait(
        self, job_id: str, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        """Block until the job is succeeded, failed or cancelled; return it."""
        return self._wait(job_id, timeout, on_progress)

    def _wait(
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
        return self._run(gen, on_progress, deadline)

    def result(self, job: Job | str, *, timeout: float | None = None) -> GenerationResult:
        """The images of a job (waiting for it first); ``JobFailedError`` if it did not succeed."""
        if isinstance(job, str) or not job.done:  # the finished job brings its images where it can
            job = self._wait(job if isinstance(job, str) else job.id, timeout, None, include_images=True)
        return self._run(self._client._jobs_backend().job_result(job))

    def stream(self, job_id: str) -> Iterator[ProgressEvent]:
        """The job's events as they happen, ending with its terminal event."""
        backend = self._client._jobs_backend()
        driver = self._client._drive(
            backend.wait_job(job_id, Context(progress=True, timeout=self._client.timeout)), backend
        )
        yield from driver


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[Model]:
        return self._client._run(self._client.backend.list_models(), self._client.backend)
