"""The WebSocket codec behind ComfyUI's /ws: handshake checks and frames, as pure functions."""

from __future__ import annotations

import struct

import pytest

from sdgate.client import APIConnectionError, NotFoundError
from sdgate.client._ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameParser,
    accept_key,
    check_handshake,
    decode_message,
    encode_frame,
    handshake,
)


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + struct.pack(">H", n) + payload
    return head + bytes([127]) + struct.pack(">Q", n) + payload


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request() -> None:
    raw, key, host, port, tls = handshake(
        "http://user:pw@h.test:8188/ws?x=1", {"clientId": "abc"}, {"Authorization": "Basic x"}
    )
    text = raw.decode()
    assert text.startswith("GET /ws?x=1&clientId=abc HTTP/1.1\r\n")
    assert "Host: h.test:8188\r\n" in text and f"Sec-WebSocket-Key: {key}\r\n" in text
    assert "Authorization: Basic x\r\n" in text and text.endswith("\r\n\r\n")
    assert (host, port, tls) == ("h.test", 8188, False)
    assert handshake("https://h.test/ws", None, {})[3:] == (443, True)


def test_check_handshake() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    ok = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )
    check_handshake(ok, key)
    with pytest.raises(NotFoundError):
        check_handshake(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0", key)
    with pytest.raises(APIConnectionError, match="Accept"):
        check_handshake(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope", key)
    with pytest.raises(APIConnectionError):
        check_handshake(b"garbage", key)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
def test_client_frames_round_trip_through_the_parser(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = encode_frame(OP_BINARY, payload, mask=b"\x01\x02\x03\x04")
    assert frame[1] & 0x80  # masked, as clients must
    assert FrameParser().feed(frame) == [(OP_BINARY, payload)]


def test_parser_handles_split_reads_fragments_and_control_frames() -> None:
    data = (
        server_frame(OP_TEXT, b'{"type": "prog', fin=False)
        + server_frame(OP_PING, b"hi")
        + server_frame(0x0, b'ress"}', fin=True)
        + server_frame(OP_CLOSE, b"")
    )
    parser = FrameParser()
    out = []
    for i in range(0, len(data), 3):  # three bytes at a time
        out += parser.feed(data[i : i + 3])
    assert out == [(OP_PING, b"hi"), (OP_TEXT, b'{"type": "progress"}'), (OP_CLOSE, b"")]
    assert decode_message(*out[1]) == {"type": "progress"}
    assert decode_message(OP_BINARY, b"\x00\x01") == b"\x00\x01"
    assert decode_message(OP_TEXT, b"not json") == "not json"
