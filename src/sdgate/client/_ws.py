"""A minimal WebSocket client (RFC 6455), enough to follow ComfyUI's ``/ws``: the handshake and
frame codec are pure functions; ``open_ws`` / ``open_ws_async`` add a socket. Text frames come out
as parsed JSON, binary frames as bytes; pings are answered; fragmented messages are joined.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from sdgate.client._exceptions import APIConnectionError, APITimeoutError, status_error_class

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEADER_BYTES = 65536


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def handshake(
    url: str, params: dict[str, Any] | None, headers: dict[str, str]
) -> tuple[bytes, str, str, int, bool]:
    """The upgrade request for ``url`` (http(s) or ws(s)): (bytes, key, host, port, tls)."""
    parts = urlsplit(url)
    tls = parts.scheme in ("https", "wss")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    query = "&".join(q for q in (parts.query, urlencode(params or {})) if q)
    target = f"{path}?{query}" if query else path
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "connection", "upgrade")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key, host, port, tls


def check_handshake(head: bytes, key: str, body: bytes = b"") -> None:
    """Raise the SDK error a failed upgrade deserves (a 404 is a NotFoundError, ...)."""
    text = head.decode("latin-1")
    status_line, _, rest = text.partition("\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise APIConnectionError(f"websocket: not an HTTP answer: {status_line[:80]!r}") from None
    headers = {}
    for line in rest.split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        raise status_error_class(status)(
            f"websocket upgrade refused ({status_line.strip()})",
            status=status,
            body=body.decode("utf-8", "replace") or None,
        )
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise APIConnectionError("websocket: bad Sec-WebSocket-Accept")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A client frame (clients must mask)."""
    mask = mask if mask is not None else os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class FrameParser:
    """Feed bytes; get whole messages ``(opcode, payload)`` (continuations joined)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        out: list[tuple[int, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode >= 0x8:  # control frames are never fragmented
                out.append((opcode, payload))
                continue
            if opcode != OP_CONT:
                self._opcode, self._parts = opcode, []
            self._parts.append(payload)
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._parts = []

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = struct.unpack(">Q", buf[2:10])[0], 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask, pos = bytes(buf[pos : pos + 4]), pos + 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        del buf[: pos + n]
        return fin, opcode, payload


def decode_message(opcode: int, payload: bytes) -> Any:
    if opcode == OP_TEXT:
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode("utf-8", "replace")
    return payload


class SyncWebSocket:
    def __init__(
        self,
        url: str,
        *,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        request, key, host, port, tls = handshake(url, params, headers)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
            if tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout)
            sock.sendall(request)
        except TimeoutError as exc:
            raise APITimeoutError(f"websocket connect timed out ({url})", url=url) from exc
        except OSError as exc:
            raise APIConnectionError(f"websocket connection error: {exc} ({url})", url=url) from exc
        self.sock = sock
        self.parser = FrameParser()
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = self._recv()
            if not chunk:
                raise APIConnectionError(
                    f"websocket: connection closed during the handshake ({url})", url=url
                )
            head += chunk
            if len(head) > MAX_HEADER_BYTES:
                raise APIConnectionError("websocket: handshake answer too long", url=url)
        raw_head, _, rest = bytes(head).partition(b"\r\n\r\n")
        try:
            check_handshake(raw_head, key, rest)
        except Exception:
            self.close()
            raise
        self.pending = self.parser.feed(rest)

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except TimeoutError as exc:
            raise APITimeoutError("websocket read timed out") from exc
        except OSError as exc:
            raise APIConnectionError(f"websocket connection error: {exc}") from exc

    def messages(self) -> Iterator[Any]:
        while True:
            while self.pending:
                opcode, payload = self.pending.pop(0)
                if opcode == OP_PING:
                    self.sock.sendall(encode_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    return
                elif opcode in (OP_TEXT, OP_BINARY):
                    yield decode_message(opcode, payload)
            chunk = self._recv()
            if not chunk:
                return
            self.pending = self.parser.feed(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack(">H", 1000)))
        self.sock.close()


class AsyncWebSocket:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.parser = FrameParser()
        self.pending: list[tuple[int, bytes]] = []
        self.read_timeout = 600.0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
    ) -> AsyncWebSocket:
        self = cls()
        self.read_timeout = read_timeout
        request, key, host, port, tls = handshake(url, params, headers)
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None),
                connect_timeout,
            )
            self.writer.write(request)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), read_timeout)
        except TimeoutError as exc:
            raise APITimeoutError(f"websocket connect timed out ({url})", url=url) from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise APIConnectionError(f"websocket connection error: {exc} ({url})", url=url) from exc
        try:
            check_handshake(head[:-4], key)
        except Exception:
            await self.close()
            raise
        return self

    async def _recv(self) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.read(65536), self.read_timeout)
        except TimeoutError as exc:
            raise APITimeoutError("websocket read timed out") from exc
        except OSError as exc:
            raise APIConnectionError(f"websocket connection error: {exc}") from exc

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            while self.pending:
                opcode, payload = self.pending.pop(0)
                if opcode == OP_PING:
                    self.writer.write(encode_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    return
                elif opcode in (OP_TEXT, OP_BINARY):
                    yield decode_message(opcode, payload)
            chunk = await self._recv()
            if not chunk:
                return
            self.pending = self.parser.feed(chunk)

    async def close(self) -> None:
        try:
            self.writer.write(encode_frame(OP_CLOSE, struct.pack(">H", 1000)))
            self.writer.close()
            await self.writer.wait_closed()
        except (OSError, RuntimeError):
            pass
