"""SDK overhead: 200 jobs through ``Client.batch(concurrency=8)`` against ``sdgate serve --engine null``.

    python benchmarks/sdk_overhead.py [--url http://127.0.0.1:7860] [--jobs 200] [--concurrency 8]
                                      [--backend sdgate|a1111] [--size 64] [--progress]

Without ``--url`` it starts the server itself (a subprocess on a free loopback port, a temporary
data dir) and stops it at the end. It prints jobs/s and the client overhead per job, defined as
the wall time of each ``generate()`` minus the time its thread spent blocked in socket I/O
(connect, send, recv: waiting for the server, the network and the kernel). Everything else is
the client's: httpx/httpcore building requests and parsing answers, the SDK's own logic, JSON,
SSE, base64, image headers, and time a ready thread waits for the GIL or a core. (It also prints
the older, looser figure that subtracts all time inside the httpx transport, so HTTP parsing
counted as "server".) On a machine with few cores the wall-clock figures also count time taken by
the server process, so it prints the client process's CPU time per job too, which does not.

``--progress`` gives every ``generate()`` a progress listener (as ``client.stream()`` and the CLI's
progress bar do): the job is then followed over its event stream instead of the one-request long
poll; compare the requests per job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.harness
from sdgate.client import Client, ImageRequest
from tests.harness import null_server  # noqa: E402


class TimedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, add: Callable[[float], None]) -> None:
        self.inner, self.add = inner, add

    def __iter__(self) -> Iterator[bytes]:
        it = iter(self.inner)
        while True:
            start = time.perf_counter()
            try:
                chunk = next(it)
            except StopIteration:
                self.add(time.perf_counter() - start)
                return
            self.add(time.perf_counter() - start)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class TimedSocket(httpcore.NetworkStream):
    """A connection whose blocking calls (send, recv) count as I/O time."""

    def __init__(self, inner: httpcore.NetworkStream, add: Callable[[float], None]) -> None:
        self.inner, self.add = inner, add

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        start = time.perf_counter()
        try:
            return self.inner.read(max_bytes, timeout)
        finally:
            self.add(time.perf_counter() - start)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        start = time.perf_counter()
        try:
            self.inner.write(buffer, timeout)
        finally:
            self.add(time.perf_counter() - start)

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return TimedSocket(self.inner.start_tls(*args, **kwargs), self.add)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class TimedNetwork(httpcore.NetworkBackend):
    def __init__(self, add: Callable[[float], None]) -> None:
        self.inner, self.add = httpcore.SyncBackend(), add

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        start = time.perf_counter()
        try:
            return TimedSocket(self.inner.connect_tcp(*args, **kwargs), self.add)
        finally:
            self.add(time.perf_counter() - start)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return TimedSocket(self.inner.connect_unix_socket(*args, **kwargs), self.add)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PerThread:
    """A seconds counter per thread."""

    def __init__(self) -> None:
        self.local = threading.local()

    def add(self, seconds: float) -> None:
        self.local.seconds = getattr(self.local, "seconds", 0.0) + seconds

    def take(self) -> float:
        seconds = getattr(self.local, "seconds", 0.0)
        self.local.seconds = 0.0
        return seconds


class TimingTransport(httpx.BaseTransport):
    """Counts, per thread, the seconds blocked in socket I/O (``io``) and, more loosely, the
    seconds inside the httpx transport at all (``inside``: I/O plus httpcore's own work)."""

    def __init__(self) -> None:
        self.io, self.inside = PerThread(), PerThread()
        self.inner = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        # httpx takes no network backend argument: hand its connection pool ours.
        self.inner._pool._network_backend = TimedNetwork(self.io.add)
        self.requests = 0  # not locked: an estimate is enough for requests per job

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        start = time.perf_counter()
        response = self.inner.handle_request(request)
        self.inside.add(time.perf_counter() - start)
        response.stream = TimedStream(response.stream, self.inside.add)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self.inner.close()


def run(
    url: str, *, jobs: int, concurrency: int, backend: str, size: int, progress: bool = False
) -> dict[str, float]:
    transport = TimingTransport()
    overheads: list[float] = []
    loose: list[float] = []
    latencies: list[float] = []
    lock = threading.Lock()
    target = url if backend == "sdgate" else f"{backend}+{url}"
    with Client(target, transport=transport) as client:
        original = client.generate

        def timed_generate(request: ImageRequest, **kw: object) -> object:
            transport.io.take(), transport.inside.take()
            start = time.perf_counter()
            if progress:  # a listener, as client.stream() and the CLI's progress bar have
                kw.setdefault("on_progress", lambda event: None)
            result = original(request, **kw)  # type: ignore[arg-type]
            wall = time.perf_counter() - start
            with lock:
                latencies.append(wall)
                overheads.append(wall - transport.io.take())
                loose.append(wall - transport.inside.take())
            return result

        client.generate = timed_generate  # type: ignore[method-assign]
        warm = [ImageRequest(prompt="warm-up", width=size, height=size, steps=1)] * concurrency
        client.batch(warm, concurrency=concurrency)
        overheads.clear()
        loose.clear()
        latencies.clear()
        transport.requests = 0
        requests = [
            ImageRequest(prompt=f"benchmark {i}", width=size, height=size, steps=1, seed=i)
            for i in range(jobs)
        ]
        start, cpu_start = time.perf_counter(), time.process_time()
        items = client.batch(requests, concurrency=concurrency)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    failed = [it for it in items if not it.ok]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed, e.g. {failed[0].error!r}")
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "latency_ms_p50": statistics.median(latencies) * 1000,
        "overhead_ms_mean": statistics.fmean(overheads) * 1000,
        "overhead_ms_p50": statistics.median(overheads) * 1000,
        "overhead_ms_p95": sorted(overheads)[int(len(overheads) * 0.95) - 1] * 1000,
        "outside_transport_ms_p50": statistics.median(loose) * 1000,
        "cpu_ms_per_job": cpu / jobs * 1000,
        "requests_per_job": transport.requests / jobs,
        "httpx_cpu_ms_per_request": httpx_baseline(url),
    }


def httpx_baseline(url: str, n: int = 200) -> float:
    """CPU ms of one plain httpx GET on this machine: the floor under any HTTP client here."""
    with httpx.Client() as plain:
        for _ in range(10):
            plain.get(url + "/healthz")
        cpu = time.process_time()
        for _ in range(n):
            plain.get(url + "/healthz")
        return (time.process_time() - cpu) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="an already running server (default: start `sdgate serve --engine null`)"
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=["sdgate", "a1111"], default="sdgate")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--progress", action="store_true", help="give every generate() a progress listener (SSE path)"
    )
    args = parser.parse_args()
    options = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "backend": args.backend,
        "size": args.size,
        "progress": args.progress,
    }
    if args.url:
        stats = run(args.url, **options)
    else:
        with null_server() as server:
            stats = run(server.url, **options)
    s = stats
    listeners = ", with progress listeners" if args.progress else ""
    print(
        f"backend {args.backend}: {s['jobs']:.0f} jobs, concurrency {args.concurrency}, size {args.size}"
        f"{listeners}"
    )
    print(f"  {s['jobs_per_s']:.1f} jobs/s ({s['seconds']:.2f} s); latency p50 {s['latency_ms_p50']:.1f} ms")
    print(
        f"  client overhead per job: mean {s['overhead_ms_mean']:.2f} ms, p50 {s['overhead_ms_p50']:.2f} ms,"
        f" p95 {s['overhead_ms_p95']:.2f} ms (target < 5 ms; wall time not blocked in socket I/O)"
    )
    print(f"  (looser: wall time outside the httpx transport, p50 {s['outside_transport_ms_p50']:.2f} ms)")
    own = s["cpu_ms_per_job"] - s["requests_per_job"] * s["httpx_cpu_ms_per_request"]
    print(
        f"  client process CPU per job: {s['cpu_ms_per_job']:.2f} ms = {s['requests_per_job']:.2f} requests"
        f" x {s['httpx_cpu_ms_per_request']:.2f} ms (plain httpx here) + {own:.2f} ms SDK's own"
    )


if __name__ == "__main__":
    main()
