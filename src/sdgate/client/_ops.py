"""What a backend asks its driver to do. Backends are generators that yield these and receive
the outcome, so every protocol is written once, without I/O, and run by the sync client (threads,
``time.sleep``) or the async one (tasks, ``asyncio.sleep``) alike.

    resp = yield Call("GET", url)            -> httpx.Response (already read; errors raised in)
    yield Sleep(0.5)                         -> None
    h = yield Subscribe(Call(...), "sse")    -> a handle; then
    ev = yield NextEvent(h)                  -> the next event (SSE: ServerSentEvent, WS: dict|bytes),
                                                or None when the stream ended
    yield Close(h)                           -> None (streams still open at the end are closed too)
    t = yield Start(Call(...))               -> a handle to a request running in the background
    done = yield Poll(t)                     -> bool;  resp = yield Join(t) -> httpx.Response
    yield Emit(event)                        -> None; the event goes to whoever streams
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Files = list[tuple[str, tuple[str, bytes, str]]]


@dataclass(slots=True)
class Call:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    data: dict[str, Any] | None = None
    files: Files | None = None
    long: bool = False  # waits for a generation: the generation timeout applies to reading
    retry: bool = True


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Subscribe:
    call: Call
    kind: Literal["sse", "ws"] = "sse"


@dataclass(slots=True)
class NextEvent:
    handle: int


@dataclass(slots=True)
class Close:
    handle: int


@dataclass(slots=True)
class Start:
    call: Call


@dataclass(slots=True)
class Poll:
    handle: int


@dataclass(slots=True)
class Join:
    handle: int


@dataclass(slots=True)
class Emit:
    event: Any


Op = Call | Sleep | Subscribe | NextEvent | Close | Start | Poll | Join | Emit
