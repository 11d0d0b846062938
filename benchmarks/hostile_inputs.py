"""Hostile input: how ``sdgate serve --engine null`` stands a corpus of hostile requests, per dialect.

    python benchmarks/hostile_inputs.py [--json] [--only a1111,native,...] [--no-big]

It starts the server itself (a subprocess on a free loopback port, a temporary data dir, as
``sdk_overhead.py`` does), then sends, one at a time, requests built from a table per endpoint
(field -> hostile values): NaN, +-Infinity, +-1e308, +-2**70, negatives, bools, strings, nulls,
lists and objects in every numeric field; lone surrogates, NUL, 1 MB and wrong types in text
fields; 500-deep objects; bad, truncated and bomb images (a small PNG that declares 50000x50000,
and a real 1-bit 16384x16384 one); malformed JSON and multipart, wrong content types, odd query
strings, unknown model/LoRA names, wrong methods (a 405 must carry ``Allow``), and one 50 MB
prompt per endpoint (timed).

After every request it reads the newest job (``GET /api/v1/jobs?limit=1``): a refused request
(status >= 400) must leave no job behind. It records per endpoint and per dialect: requests sent,
the status histogram, 5xx (each printed with the request that caused it), jobs before/after and
jobs left by refused requests, the server's VmRSS sampled during the run and its VmHWM at the end.
The run's findings (5xx, left jobs, 405s without ``Allow``, transport errors, a dead server, A1111
options that a hostile value changed) are printed before the table; ``--json`` prints the figures
as one JSON object instead.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import os
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.harness
from tests.harness import ProcessServer, null_server  # noqa: E402

MB = 1024 * 1024
NaN, INF = math.nan, math.inf

# -- hostile values -----------------------------------------------------------------------------------

NESTED_500: Any = {}
_node = NESTED_500
for _ in range(499):
    _node["a"] = {}
    _node = _node["a"]
_node["a"] = 1

# (label, value) for JSON numeric fields: every one of these is wrong for some numeric field.
NUMBERS: list[tuple[str, Any]] = [
    ("NaN", NaN),
    ("Infinity", INF),
    ("-Infinity", -INF),
    ("1e308", 1e308),
    ("-1e308", -1e308),
    ("2**70", 2**70),
    ("-1", -1),
    ("0.5", 0.5),
    ("true", True),
    ('"abc"', "abc"),
    ('"\\u0663" (arabic 3)', "\u0663"),
    ("null", None),
    ("[]", []),
    ("{}", {}),
]

# (label, value) for JSON text fields.
TEXTS: list[tuple[str, Any]] = [
    ('"\\ud800x" lone surrogate', "\ud800x"),
    ('"a\\u0000b" NUL', "a\x00b"),
    ("1 MB", "a" * MB),
    ("30000 tokens in 60 KB", "a " * 30000),
    ("123", 123),
    ("NaN", NaN),
    ("null", None),
    ("[]", []),
    ("{}", {}),
    ("500-deep object", NESTED_500),
]

NAMES: list[tuple[str, Any]] = [
    ('"nope" (unknown)', "nope"),
    ('"../../etc/passwd"', "../../etc/passwd"),
    ('"\\ud800" lone surrogate', "\ud800"),
    ('"a\\u0000b" NUL', "a\x00b"),
    ("5000 chars", "n" * 5000),
    ("123", 123),
    ("[]", []),
    ("{}", {}),
]

BOOLS: list[tuple[str, Any]] = [
    ("2", 2),
    ('"yes"', "yes"),
    ("NaN", NaN),
    ("[]", []),
    ("{}", {}),
]

# (label, value) for multipart text fields: every form value is text on the wire.
FORM_NUMBERS: list[tuple[str, bytes]] = [
    (label, value.encode())
    for label, value in [
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("1e308", "1e308"),
        ("-1e308", "-1e308"),
        ("1e999", "1e999"),
        ("2**70", str(2**70)),
        ("-1", "-1"),
        ("0.5", "0.5"),
        ("true", "true"),
        ("abc", "abc"),
        ("empty", ""),
        ("[]", "[]"),
        ("\\u0663 (arabic 3)", "\u0663"),
        ("' 7 '", " 7 "),
        ("5000 digits", "9" * 5000),
    ]
]
FORM_TEXTS: list[tuple[str, bytes]] = [
    ("surrogate as CESU-8 bytes", b"\xed\xa0\x80x"),
    ("invalid UTF-8", b"\xff\xfe\xfd"),
    ("NUL", b"a\x00b"),
    ("1 MB", b"a" * MB),
    ("empty", b""),
]


# -- images -------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *, bit_depth: int = 8, color: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG: RGB (color 2) or grey (color 0); ``idat`` replaces the (zero) pixel data."""
    if idat is None:
        channels = 3 if color == 2 else 1
        row = b"\0" + b"\0" * ((width * channels * bit_depth + 7) // 8)
        idat = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG64 = png(64, 64)
PNG128 = png(128, 128)
PNG_DECLARED_BOMB = png(50000, 50000, idat=zlib.compress(b"\0" * 1024))  # declares 2.5 GP, holds nothing
PNG_REAL_BOMB = png(16384, 16384, bit_depth=1, color=0)  # 268 MP, ~33 KB: 805 MB once decoded as RGB
PNG_WIDE = png(65535, 1)  # a legal size in bytes, an absurd side

# (label, bytes) for uploaded files.
IMAGE_BYTES: list[tuple[str, bytes]] = [
    ("empty file", b""),
    ("garbage", os.urandom(2048)),
    ("text", b"hello, not an image"),
    ("truncated PNG", PNG64[: len(PNG64) // 2]),
    ("PNG header only", PNG64[:8]),
    ("PNG with a bad CRC", PNG64[:30] + b"\0\0\0\0" + PNG64[34:]),
    ("PNG bomb: declares 50000x50000", PNG_DECLARED_BOMB),
    (f"PNG bomb: 1-bit 16384x16384 in {len(PNG_REAL_BOMB) // 1024} KB", PNG_REAL_BOMB),
    ("PNG 65535x1", PNG_WIDE),
    ("GIF header, garbage", b"GIF89a" + os.urandom(64)),
    ("JPEG header, garbage", b"\xff\xd8\xff\xe0" + os.urandom(64)),
]

# (label, value) for base64 image fields in JSON.
IMAGE_STRINGS: list[tuple[str, Any]] = [
    ("truncated base64", b64(PNG64)[:-5]),
    ("base64 of a truncated PNG", b64(PNG64[: len(PNG64) // 2])),
    ("base64 of garbage", b64(os.urandom(512))),
    ("not base64", "not base64 !!!"),
    ("data: URI, garbage", "data:image/png;base64,@@@@"),
    ("data: URI, no comma", "data:image/png;base64"),
    ("empty string", ""),
    ("base64 PNG bomb 50000x50000", b64(PNG_DECLARED_BOMB)),
    ("base64 real PNG bomb 16384x16384", b64(PNG_REAL_BOMB)),
    ("base64 PNG 65535x1", b64(PNG_WIDE)),
    ("file:///etc/passwd", "file:///etc/passwd"),
    ("http://169.254.169.254/", "http://169.254.169.254/latest/meta-data/"),
    ("123", 123),
    ("NaN", NaN),
    ("null", None),
    ("{}", {}),
    ("[]", []),
]

# -- request bodies that are wrong as a whole --------------------------------------------------------

MALFORMED_JSON: list[tuple[str, bytes]] = [
    ("empty body", b""),
    ("truncated object", b'{"prompt": "x", "width": 6'),
    ("lone {", b"{"),
    ("null", b"null"),
    ("array", b"[]"),
    ("string", b'"hello"'),
    ("number", b"42"),
    ("trailing garbage", b'{"prompt": "x"} garbage'),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}'),
    ("UTF-16 BOM", "\ufeff{}".encode("utf-16")),
    ("single quotes", b"{'prompt': 'x'}"),
    ("duplicate keys", b'{"prompt": "x", "prompt": 1}'),
    ("100000-deep array", b"[" * 100000 + b"]" * 100000),
    ("50000-deep object", b'{"a":' * 50000 + b"1" + b"}" * 50000),
    ("number 1e999999", b'{"prompt": "x", "steps": 1e999999}'),
    ("100000-digit int", b'{"prompt": "x", "seed": ' + b"9" * 100000 + b"}"),
    ("NUL bytes", b"\0" * 64),
]
WRONG_TYPES_FOR_JSON: list[tuple[str, str | None]] = [
    ("no content type", None),
    ("text/plain", "text/plain"),
    ("x-www-form-urlencoded", "application/x-www-form-urlencoded"),
    ("multipart, no boundary", "multipart/form-data"),
    ("json; charset=utf-16", "application/json; charset=utf-16"),
    ("image/png", "image/png"),
    ("garbage content type", "\x01;;;=="),
]


def multipart(
    parts: list[tuple[str, bytes, str | None, str | None]], boundary: str = "hostileboundary"
) -> bytes:
    """A multipart body from (name, value, filename, content type) parts."""
    out = b""
    for name, value, filename, ctype in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MP_TYPE = "multipart/form-data; boundary=hostileboundary"


def malformed_multipart(valid: bytes) -> list[tuple[str, bytes, str | None]]:
    """(label, body, content type) variants of a valid multipart body."""
    return [
        ("truncated multipart", valid[: len(valid) // 2], MP_TYPE),
        ("no closing boundary", valid.replace(b"--hostileboundary--\r\n", b""), MP_TYPE),
        ("boundary mismatch", valid, "multipart/form-data; boundary=otherboundary"),
        ("no boundary parameter", valid, "multipart/form-data"),
        ("empty multipart", b"", MP_TYPE),
        (
            "part without a name",
            b"--hostileboundary\r\nContent-Disposition: form-data\r\n\r\nx\r\n--hostileboundary--\r\n",
            MP_TYPE,
        ),
        ("part without headers", b"--hostileboundary\r\n\r\nx\r\n--hostileboundary--\r\n", MP_TYPE),
        ("5000 fields", multipart([(f"f{i}", b"x", None, None) for i in range(5000)]), MP_TYPE),
        ("2000 files", multipart([(f"f{i}", b"x", f"f{i}.png", "image/png") for i in range(2000)]), MP_TYPE),
        (
            "a 300 KB header",
            b'--hostileboundary\r\nContent-Disposition: form-data; name="'
            + b"n" * 300_000
            + b'"\r\n\r\nx\r\n--hostileboundary--\r\n',
            MP_TYPE,
        ),
        ("JSON sent to a form route", b'{"prompt": "x"}', "application/json"),
        ("urlencoded form", b"prompt=x&seed=NaN", "application/x-www-form-urlencoded"),
    ]


# -- the corpus ---------------------------------------------------------------------------------------


@dataclass
class Case:
    dialect: str
    endpoint: str
    label: str
    method: str
    path: str  # may carry a raw query string
    content: bytes | None = None
    ctype: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    check_allow: bool = False  # a 405 must carry Allow
    big: bool = False  # the 50 MB prompt: timed

    def describe(self) -> str:
        body = ""
        if self.content is not None:
            head = self.content[:160]
            more = f"... ({len(self.content)} bytes)" if len(self.content) > 160 else ""
            body = f" body={head!r}{more}"
        ctype = f" content-type={self.ctype!r}" if self.ctype else ""
        return f"{self.method} {self.path}{ctype}{body}"


def dumps(body: Any) -> bytes:
    # Python's json writes NaN/Infinity as bare words and lone surrogates as \\ud800 escapes: what a
    # hostile client sends.
    return json.dumps(body, allow_nan=True).encode()


def set_path(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    keys = dotted.split(".")
    node: Any = out
    for key in keys[:-1]:
        index: Any = int(key) if key.isdigit() else key
        if isinstance(node, dict) and index not in node:
            node[index] = {}
        node = node[index]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    node[last] = value
    return out


@dataclass
class JsonEndpoint:
    dialect: str
    name: str
    path: str
    base: dict[str, Any]
    table: dict[str, list[tuple[str, Any]]]  # field (dotted) -> hostile values
    specials: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # label -> whole body
    prompt_field: str | None = "prompt"
    malformed: bool = True
    methods: tuple[str, ...] = ("GET", "PUT", "DELETE", "PATCH")

    def cases(self, big: bool) -> Iterator[Case]:
        def case(
            label: str, content: bytes | None, ctype: str | None = "application/json", **kw: Any
        ) -> Case:
            return Case(
                self.dialect,
                self.name,
                label,
                kw.pop("method", "POST"),
                kw.pop("path", self.path),
                content,
                ctype,
                **kw,
            )

        for name, values in self.table.items():
            for label, value in values:
                yield case(f"{name}={label}", dumps(set_path(self.base, name, value)))
        for label, body in self.specials:
            yield case(label, dumps(body))
        if self.malformed:
            for label, raw in MALFORMED_JSON:
                yield case(f"malformed JSON: {label}", raw)
            for label, ctype in WRONG_TYPES_FOR_JSON:
                yield case(f"valid JSON as {label}", dumps(self.base), ctype)
        for method in self.methods:
            yield case(f"wrong method {method}", None, None, method=method, check_allow=True)
        if big and self.prompt_field:
            yield case(f"50 MB {self.prompt_field}", big_json(self.base, self.prompt_field), big=True)


def big_json(base: dict[str, Any], dotted: str) -> bytes:
    marker = "\x01MARK\x01"
    text = dumps(set_path(base, dotted, marker))
    head, tail = text.split(json.dumps(marker).encode())
    return head + b'"' + b"a" * (50 * MB) + b'"' + tail


@dataclass
class FormEndpoint:
    dialect: str
    name: str
    path: str
    base: list[tuple[str, bytes, str | None, str | None]]  # (name, value, filename, content type)
    table: dict[str, list[tuple[str, bytes]]]  # field -> hostile values
    files: dict[str, list[tuple[str, bytes]]]  # file field -> hostile files
    prompt_field: str = "prompt"
    methods: tuple[str, ...] = ("GET", "PUT", "DELETE", "PATCH")
    extra: list[tuple[str, list[tuple[str, bytes, str | None, str | None]]]] = field(default_factory=list)

    def body(self, name: str, value: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
        parts = [p for p in self.base if p[0] != name]
        return multipart([*parts, (name, value, filename, ctype)])

    def cases(self, big: bool) -> Iterator[Case]:
        def case(label: str, content: bytes | None, ctype: str | None = MP_TYPE, **kw: Any) -> Case:
            return Case(
                self.dialect, self.name, label, kw.pop("method", "POST"), self.path, content, ctype, **kw
            )

        for name, values in self.table.items():
            for label, value in values:
                yield case(f"{name}={label}", self.body(name, value))
        for name, files in self.files.items():
            for label, data in files:
                yield case(f"{name}: {label}", self.body(name, data, "image.png", "image/png"))
            yield case(f"{name} sent as a text field", self.body(name, b64(PNG64).encode()))
            yield case(f"{name} missing", multipart([p for p in self.base if p[0] != name]))
        for label, parts in self.extra:
            yield case(label, multipart(parts))
        for label, raw, ctype in malformed_multipart(multipart(self.base)):
            yield case(f"malformed: {label}", raw, ctype)
        for method in self.methods:
            yield case(f"wrong method {method}", None, None, method=method, check_allow=True)
        if big:
            yield case(f"50 MB {self.prompt_field}", self.body(self.prompt_field, b"a" * (50 * MB)), big=True)


@dataclass
class RawEndpoint:
    """Hand-written cases: odd query strings, path parameters, raw uploads."""

    dialect: str
    name: str
    items: list[tuple[str, str, str, bytes | None, str | None]]  # label, method, path, body, ctype

    def cases(self, big: bool) -> Iterator[Case]:
        for label, method, path, content, ctype in self.items:
            yield Case(
                self.dialect,
                self.name,
                label,
                method,
                path,
                content,
                ctype,
                check_allow=label.startswith("wrong method"),
            )


def numbers(*names: str) -> dict[str, list[tuple[str, Any]]]:
    return {name: NUMBERS for name in names}


def form_numbers(*names: str) -> dict[str, list[tuple[str, bytes]]]:
    return {name: FORM_NUMBERS for name in names}


def endpoints() -> list[Any]:
    t2i = {"prompt": "hostile input", "width": 64, "height": 64, "steps": 1}
    hr = {**t2i, "enable_hr": True, "hr_scale": 1.5}
    i2i = {**t2i, "init_images": [b64(PNG64)], "denoising_strength": 0.5}
    native = {"prompt": "hostile input", "width": 64, "height": 64, "steps": 1}
    v1 = {"text_prompts": [{"text": "hostile input"}], "width": 128, "height": 128, "steps": 10}
    oai = {"prompt": "hostile input", "size": "256x256"}
    hf = {"inputs": "hostile input", "parameters": {"width": 64, "height": 64, "num_inference_steps": 1}}
    a1111_text = {
        "prompt": TEXTS,
        "negative_prompt": TEXTS,
        "sampler_name": NAMES,
        "scheduler": NAMES,
        "styles": [*NAMES, ("[nope]", ["nope"])],
        "infotext": TEXTS[:4],
    }
    a1111_bools = {"restore_faces": BOOLS, "tiling": BOOLS, "send_images": BOOLS}
    a1111_dicts = {
        "override_settings": [
            ("500-deep", {"a": NESTED_500}),
            ("CLIP_stop_at_last_layers NaN", {"CLIP_stop_at_last_layers": NaN}),
            ("sd_model_checkpoint nope", {"sd_model_checkpoint": "nope"}),
            ("list", []),
        ],
        "comments": [("500-deep", NESTED_500), ("list", [1])],
        "alwayson_scripts": [("500-deep", NESTED_500), ("unknown script", {"nope": {"args": [NaN]}})],
        "script_name": NAMES[:5],
        "script_args": [("500-deep", [NESTED_500]), ("NaN", [NaN])],
    }
    v1_form = [("text_prompts[0][text]", b"hostile input", None, None)]
    oai_form = [("prompt", b"hostile input", None, None), ("size", b"256x256", None, None)]
    listing = "/api/v1/jobs"
    odd_queries = [
        'metadata=a"b:1',
        "metadata=a\\b:1",
        "metadata=:",
        "metadata=a:%00",
        "metadata=%ED%A0%80:1",
        "metadata=" + "k" * 300 + ":1",
        "&".join(["metadata=a:1"] * 17),
        "limit=NaN",
        "limit=Infinity",
        "limit=1e308",
        "limit=-1",
        "limit=0",
        f"limit={2**70}",
        "limit=abc",
        "limit=",
        "limit=%FF",
        "limit=1&limit=2",
        "state=bogus",
        "&".join(["state=queued"] * 100),
        "state=%00",
        "created_after=garbage",
        "created_after=9999-99-99",
        "created_after=-infinity",
        "created_after=99999-01-01T00:00:00",
        "created_before=0001-01-01T00:00:00+99:00",
        "created_after=2020-01-01T00:00:00%2B25:00",
        "cursor=../../etc",
        "cursor=" + "A" * 64,
        "cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "cursor=%ED%A0%80",
        "cursor=-1",
        "cursor=__",
        "%FF=%FF",
        "a" * 8000 + "=1",
        "&" * 5000,
    ]
    job_ids = ["nope", "..%2F..%2Fetc%2Fpasswd", "%00", "%ED%A0%80", "j" * 5000, "job_" + "0" * 26, "%FF"]
    native_raw = [(f"GET ?{q[:60]}", "GET", f"{listing}?{q}", None, None) for q in odd_queries]
    native_raw += [(f"GET /jobs/{j[:40]}", "GET", f"{listing}/{j}", None, None) for j in job_ids]
    native_raw += [
        (f"POST /jobs/{j[:40]}/cancel", "POST", f"{listing}/{j}/cancel", None, None) for j in job_ids[:4]
    ]
    native_raw += [(f"DELETE /jobs/{j[:40]}", "DELETE", f"{listing}/{j}", None, None) for j in job_ids[:4]]
    native_raw += [
        (f"POST /jobs?{q}", "POST", f"{listing}?{q}", dumps(native), "application/json")
        for q in [
            "wait=NaN",
            "wait=Infinity",
            "wait=-1",
            f"wait={2**70}",
            "wait=1e308",
            "include=nope",
            "include=" + "x" * 5000,
        ]
    ]
    native_raw += [(f"wrong method {m} /jobs", m, listing, None, None) for m in ("PUT", "PATCH", "DELETE")]
    uploads = "/api/v1/uploads"
    upload_raw = [(f"raw {label}", "POST", uploads, data, "image/png") for label, data in IMAGE_BYTES]
    upload_raw += [
        (f"multipart {label}", "POST", uploads, multipart([("file", data, "x.png", "image/png")]), MP_TYPE)
        for label, data in IMAGE_BYTES
    ]
    upload_raw += [
        (f"malformed: {label}", "POST", uploads, raw, ctype)
        for label, raw, ctype in malformed_multipart(multipart([("file", PNG64, "x.png", "image/png")]))
    ]
    upload_raw += [
        ("multipart without a file", "POST", uploads, multipart([("file", b"x", None, None)]), MP_TYPE)
    ]
    upload_raw += [("50 MB garbage", "POST", uploads, b"\0" * (50 * MB), "application/octet-stream")]
    upload_raw += [(f"wrong method {m}", m, uploads, None, None) for m in ("GET", "PUT", "DELETE")]

    return [
        JsonEndpoint(
            "a1111",
            "txt2img",
            "/sdapi/v1/txt2img",
            t2i,
            {
                **numbers(
                    "seed",
                    "subseed",
                    "subseed_strength",
                    "seed_resize_from_h",
                    "seed_resize_from_w",
                    "batch_size",
                    "n_iter",
                    "steps",
                    "cfg_scale",
                    "width",
                    "height",
                    "eta",
                    "denoising_strength",
                    "s_churn",
                    "s_noise",
                    "s_tmin",
                    "s_tmax",
                    "s_min_uncond",
                    "refiner_switch_at",
                ),
                **a1111_text,
                **a1111_bools,
                **a1111_dicts,
                "enable_hr": BOOLS,
            },
            specials=[
                ("4096x4096", {**t2i, "width": 4096, "height": 4096}),
                (
                    "unknown LoRA in the prompt (A1111: runs, info names it)",
                    {**t2i, "prompt": "x <lora:nope:1>"},
                ),
                (
                    "200 LoRAs in the prompt",
                    {**t2i, "prompt": " ".join(f"<lora:l{i}:1>" for i in range(200))},
                ),
                ("refiner_checkpoint nope", {**t2i, "refiner_checkpoint": "nope", "refiner_switch_at": 0.5}),
                ("infotext that does not parse", {**t2i, "infotext": "Steps: NaN, Size: 1e308x-1"}),
            ],
        ),
        JsonEndpoint(
            "a1111",
            "txt2img+hires",
            "/sdapi/v1/txt2img",
            hr,
            {
                **numbers(
                    "hr_scale",
                    "hr_second_pass_steps",
                    "hr_resize_x",
                    "hr_resize_y",
                    "firstphase_width",
                    "firstphase_height",
                ),
                "hr_prompt": TEXTS[:5],
                "hr_upscaler": NAMES,
                "hr_checkpoint_name": NAMES[:3],
            },
            specials=[
                ("hr_scale 64 on 64x64", {**hr, "hr_scale": 64}),
                ("hr_scale 1e6", {**hr, "hr_scale": 1e6}),
                ("hr_resize 65536x65536", {**hr, "hr_resize_x": 65536, "hr_resize_y": 65536}),
                ("hr_resize 4096x4096", {**hr, "hr_resize_x": 4096, "hr_resize_y": 4096}),
            ],
            malformed=False,
            methods=(),
        ),
        JsonEndpoint(
            "a1111",
            "img2img",
            "/sdapi/v1/img2img",
            i2i,
            {
                **numbers(
                    "denoising_strength",
                    "resize_mode",
                    "image_cfg_scale",
                    "mask_blur",
                    "mask_blur_x",
                    "inpainting_fill",
                    "inpaint_full_res_padding",
                    "inpainting_mask_invert",
                    "initial_noise_multiplier",
                    "cfg_scale",
                    "steps",
                    "width",
                    "height",
                ),
                "init_images": [(f"[{label}]", [value]) for label, value in IMAGE_STRINGS]
                + [("[]", []), ("NaN", NaN), ("300 images", [b64(PNG64)] * 300)],
                "mask": IMAGE_STRINGS,
                "latent_mask": IMAGE_STRINGS[:6],
                "prompt": TEXTS[:4],
            },
        ),
        JsonEndpoint(
            "a1111",
            "extra-single-image",
            "/sdapi/v1/extra-single-image",
            {"image": b64(PNG64), "upscaling_resize": 1},
            {
                **numbers(
                    "upscaling_resize",
                    "resize_mode",
                    "gfpgan_visibility",
                    "codeformer_visibility",
                    "codeformer_weight",
                    "extras_upscaler_2_visibility",
                ),
                "image": IMAGE_STRINGS,
                "upscaler_1": NAMES,
                "upscaler_2": NAMES[:3],
            },
            specials=[
                (
                    "resize to 65536x65536",
                    {
                        "image": b64(PNG64),
                        "resize_mode": 1,
                        "upscaling_resize_w": 65536,
                        "upscaling_resize_h": 65536,
                    },
                ),
                (
                    "upscaling_resize_w NaN",
                    {"image": b64(PNG64), "resize_mode": 1, "upscaling_resize_w": NaN},
                ),
                (
                    "upscaling_resize_h 2**70",
                    {"image": b64(PNG64), "resize_mode": 1, "upscaling_resize_h": 2**70},
                ),
            ],
            prompt_field="image",
        ),
        JsonEndpoint(
            "a1111",
            "options",
            "/sdapi/v1/options",
            {},
            {
                **numbers(
                    "CLIP_stop_at_last_layers",
                    "eta_noise_seed_delta",
                    "jpeg_quality",
                    "eta_ancestral",
                    "eta_ddim",
                    "s_churn",
                    "s_noise",
                    "sd_checkpoint_cache",
                    "token_merging_ratio",
                    "img_max_size_mp",
                    "target_side_length",
                ),
                "sd_model_checkpoint": NAMES,
                "samples_format": NAMES,
                "sd_vae": NAMES,
                "outdir_samples": NAMES,
                "live_previews_enable": BOOLS,
                "nope_unknown_key": [("1", 1)],
            },
            prompt_field="sd_model_checkpoint",
            methods=("PUT", "DELETE", "PATCH"),
        ),
        JsonEndpoint(
            "a1111",
            "png-info",
            "/sdapi/v1/png-info",
            {"image": b64(PNG64)},
            {"image": IMAGE_STRINGS},
            prompt_field="image",
        ),
        JsonEndpoint(
            "a1111",
            "interrogate",
            "/sdapi/v1/interrogate",
            {"image": b64(PNG64), "model": "clip"},
            {"image": IMAGE_STRINGS, "model": NAMES},
            prompt_field="image",
        ),
        JsonEndpoint(
            "native",
            "jobs",
            "/api/v1/jobs",
            native,
            {
                **numbers(
                    "width",
                    "height",
                    "steps",
                    "cfg_scale",
                    "seed",
                    "subseed",
                    "subseed_strength",
                    "seed_resize_from_w",
                    "seed_resize_from_h",
                    "batch_size",
                    "n_iter",
                    "clip_skip",
                    "eta",
                    "s_churn",
                    "s_tmin",
                    "s_tmax",
                    "s_noise",
                    "s_min_uncond",
                    "eta_noise_seed_delta",
                    "denoising_strength",
                    "resize_mode",
                    "image_cfg_scale",
                    "mask_blur_x",
                    "inpainting_fill",
                    "inpaint_full_res_padding",
                    "initial_noise_multiplier",
                    "priority",
                    "refiner_switch_at",
                    "hires.scale",
                    "hires.resize_x",
                    "hires.resize_y",
                    "hires.second_pass_steps",
                    "hires.denoising_strength",
                    "loras.0.te_weight",
                ),
                "prompt": TEXTS,
                "negative_prompt": TEXTS,
                "model": NAMES,
                "sampler": NAMES,
                "scheduler": NAMES,
                "vae": NAMES,
                "refiner": NAMES[:3],
                "hires.prompt": TEXTS[:4],
                "hires.upscaler": NAMES,
                "styles": [(f"[{label}]", [v]) for label, v in NAMES],
                "loras": [
                    ("[{name: nope}]", [{"name": "nope"}]),
                    ("33 loras", [{"name": "nope"}] * 33),
                    ("[NaN]", [NaN]),
                    ("{}", {}),
                ],
                "init_image": [*IMAGE_STRINGS, ("upload id nope", "upl_nope")],
                "mask": IMAGE_STRINGS[:6],
                "init_images": [(f"[{label}]", [v]) for label, v in IMAGE_STRINGS[:6]],
                "callback_url": [
                    *NAMES,
                    ("file:///etc/passwd", "file:///etc/passwd"),
                    ("http://169.254.169.254/", "http://169.254.169.254/"),
                ],
                "metadata": [
                    ("500-deep", NESTED_500),
                    ("{k: NaN}", {"k": NaN}),
                    ("{surrogate key}", {"\ud800": 1}),
                    ("1 MB value", {"k": "v" * MB}),
                    ("10000 keys", {f"k{i}": i for i in range(10000)}),
                    ("list", [1]),
                    ("string", "x"),
                ],
                "tiling": BOOLS,
                "inpaint_full_res": BOOLS,
            },
            specials=[
                ("hires resize 65536x65536", {**native, "hires": {"resize_x": 65536, "resize_y": 65536}}),
                (
                    "hires scale 8 on 4096x4096 (max_side)",
                    {**native, "width": 4096, "height": 4096, "hires": {"scale": 8}},
                ),
                ("hires scale 64", {**native, "hires": {"scale": 64}}),
                ("hires scale NaN", {**native, "hires": {"scale": NaN}}),
                ("4096x4096", {**native, "width": 4096, "height": 4096}),
                ("batch 64 x n_iter 64", {**native, "batch_size": 64, "n_iter": 64}),
                ("steps 1000 + hires 1000", {**native, "steps": 1000, "hires": {"second_pass_steps": 1000}}),
                ("unknown field", {**native, "nope": 1}),
            ],
        ),
        RawEndpoint("native", "jobs (query, ids)", native_raw),
        RawEndpoint("native", "uploads", upload_raw),
        JsonEndpoint(
            "stability",
            "v1 text-to-image",
            "/v1/generation/stable-diffusion-v1-6/text-to-image",
            v1,
            {
                **numbers(
                    "cfg_scale", "samples", "seed", "steps", "width", "height", "text_prompts.0.weight"
                ),
                "text_prompts.0.text": TEXTS,
                "sampler": NAMES,
                "style_preset": NAMES,
                "clip_guidance_preset": NAMES,
                "text_prompts": [
                    ("[]", []),
                    ("[NaN]", [NaN]),
                    ("10000 prompts", [{"text": "x"}] * 10000),
                    ("{}", {}),
                ],
                "extras": [("500-deep", NESTED_500), ("list", [])],
            },
            specials=[
                (
                    "two prompts, weight NaN",
                    {**v1, "text_prompts": [{"text": "a"}, {"text": "b", "weight": NaN}]},
                ),
                ("all prompts negative", {**v1, "text_prompts": [{"text": "a", "weight": -1}]}),
            ],
            prompt_field="text_prompts.0.text",
        ),
        RawEndpoint(
            "stability",
            "v1 engine ids",
            [
                (
                    f"engine {label}",
                    "POST",
                    f"/v1/generation/{eid}/text-to-image",
                    dumps(v1),
                    "application/json",
                )
                for label, eid in [
                    ("nope", "nope"),
                    ("5000 chars", "e" * 5000),
                    ("%00", "%00"),
                    ("../..", "..%2F..%2Fetc"),
                    ("%ED%A0%80", "%ED%A0%80"),
                ]
            ],
        ),
        FormEndpoint(
            "stability",
            "v1 image-to-image",
            "/v1/generation/stable-diffusion-v1-6/image-to-image",
            [*v1_form, ("init_image", PNG128, "init.png", "image/png"), ("steps", b"10", None, None)],
            {
                **form_numbers(
                    "image_strength",
                    "cfg_scale",
                    "samples",
                    "seed",
                    "steps",
                    "step_schedule_start",
                    "step_schedule_end",
                    "text_prompts[0][weight]",
                ),
                "text_prompts[0][text]": FORM_TEXTS,
                "init_image_mode": FORM_TEXTS[:3] + [("nope", b"nope")],
                "text_prompts": [
                    ("bad JSON", b"[{"),
                    ("JSON NaN weight", b'[{"text": "x", "weight": NaN}]'),
                    ("JSON 500-deep", dumps([NESTED_500])),
                ],
            },
            {"init_image": IMAGE_BYTES},
            prompt_field="text_prompts[0][text]",
            extra=[
                (
                    "text_prompts[99999999999999999999][text]",
                    [
                        ("text_prompts[99999999999999999999][text]", b"x", None, None),
                        ("init_image", PNG128, "init.png", "image/png"),
                    ],
                ),
                (
                    "text_prompts[-1][text]",
                    [
                        ("text_prompts[-1][text]", b"x", None, None),
                        ("init_image", PNG128, "init.png", "image/png"),
                    ],
                ),
            ],
        ),
        FormEndpoint(
            "stability",
            "v2beta core",
            "/v2beta/stable-image/generate/core",
            [("prompt", b"hostile input", None, None)],
            {
                **form_numbers("seed", "strength", "cfg_scale"),
                "prompt": FORM_TEXTS,
                "negative_prompt": FORM_TEXTS,
                "aspect_ratio": FORM_TEXTS[:3] + [("99:1", b"99:1")],
                "output_format": [("nope", b"nope"), *FORM_TEXTS[:2]],
                "style_preset": [("nope", b"nope")],
                "model": [("nope", b"nope"), ("5000 chars", b"m" * 5000)],
            },
            {"image": IMAGE_BYTES},
        ),
        JsonEndpoint(
            "openai",
            "generations",
            "/v1/images/generations",
            oai,
            {
                **numbers("n", "seed", "steps", "step", "cfg_scale", "output_compression", "partial_images"),
                "prompt": TEXTS,
                "negative_prompt": TEXTS[:5],
                "model": NAMES,
                "quality": NAMES[:3],
                "response_format": NAMES[:3],
                "user": NAMES,
                "sampler": NAMES,
                "stream": BOOLS + [("true", True)],
                "size": [
                    (s, s)
                    for s in [
                        "0x0",
                        "65536x65536",
                        "NaNxNaN",
                        "1e308x1",
                        "-256x-256",
                        "256x",
                        "x",
                        "2048x2048",
                        "256x256x256",
                        "\ud800",
                    ]
                ]
                + [("123", 123), ("null", None)],
            },
            specials=[("unknown model dall-e-9", {**oai, "model": "dall-e-9"})],
        ),
        FormEndpoint(
            "openai",
            "edits",
            "/v1/images/edits",
            [*oai_form, ("image", PNG64, "image.png", "image/png")],
            {
                **form_numbers("n", "strength", "seed", "steps", "cfg_scale", "output_compression"),
                "prompt": FORM_TEXTS,
                "size": [(s, s.encode()) for s in ["0x0", "65536x65536", "NaNxNaN", "1e308x1"]],
                "model": [("nope", b"nope")],
                "response_format": [("nope", b"nope")],
            },
            {"image": IMAGE_BYTES, "mask": IMAGE_BYTES[:8]},
        ),
        JsonEndpoint(
            "hf",
            "models/{id}",
            "/models/runwayml/stable-diffusion-v1-5",
            hf,
            {
                **numbers(
                    "parameters.width",
                    "parameters.height",
                    "parameters.num_inference_steps",
                    "parameters.guidance_scale",
                    "parameters.seed",
                    "parameters.target_size.width",
                ),
                "inputs": TEXTS,
                "parameters.negative_prompt": TEXTS[:6],
                "parameters.scheduler": NAMES,
                "options.use_cache": BOOLS,
                "parameters": [("null", None), ("[]", []), ("500-deep", NESTED_500)],
            },
            prompt_field="inputs",
        ),
        RawEndpoint(
            "hf",
            "model ids",
            [
                (f"model id {label}", "POST", f"/models/{mid}", dumps(hf), "application/json")
                for label, mid in [
                    ("nope/nope", "nope/nope"),
                    ("5000 chars", "m" * 5000),
                    ("%00", "%00"),
                    ("../../etc", "..%2F..%2Fetc"),
                    ("%ED%A0%80", "%ED%A0%80"),
                    ("empty", ""),
                ]
            ],
        ),
    ]


# -- the server ---------------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM), None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = self.window = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            rss = proc_status(self.pid, "VmRSS")
            if rss is None:
                return
            self.peak, self.window = max(self.peak, rss), max(self.window, rss)

    def take_window(self) -> int:
        window, self.window = self.window, 0
        return window


# -- running ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors_5xx: list[tuple[Case, int, str]] = field(default_factory=list)
    left_jobs: list[tuple[Case, int, str, str]] = field(default_factory=list)
    no_allow: list[tuple[Case, int, str]] = field(default_factory=list)
    transport: list[tuple[Case, str]] = field(default_factory=list)
    big: list[tuple[str, int | str, float]] = field(default_factory=list)
    jobs_before: int | None = None
    jobs_after: int | None = None
    accepted: int = 0
    accepted_cases: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rss_peak: int = 0


def count_jobs(client: httpx.Client) -> int | None:
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/jobs", params=params)
        if response.status_code != 200:
            return None
        page = response.json()
        total += len(page["jobs"])
        cursor = page.get("next_cursor")
        if not cursor:
            return total


def newest_job(client: httpx.Client) -> str:
    try:
        response = client.get("/api/v1/jobs", params={"limit": 1})
    except httpx.HTTPError as exc:
        return f"<listing failed: {type(exc).__name__}>"
    if response.status_code != 200:
        return f"<listing answered {response.status_code}: {response.text[:200]}>"
    jobs = response.json()["jobs"]
    return jobs[0]["id"] if jobs else ""


def excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = response.content[:limit].decode("utf-8", "replace")
    return text + ("..." if len(response.content) > limit else "")


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.ctype is not None:
        headers["content-type"] = case.ctype
    request = client.build_request(case.method, case.path, content=case.content, headers=headers)
    if case.ctype is None and case.content is not None:
        request.headers.pop("content-type", None)
    return client.send(request)


def run(server: ProcessServer, only: set[str] | None, big: bool, log: Any) -> dict[str, Any]:
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    tallies: dict[str, Tally] = {}
    dialect_jobs: dict[str, dict[str, int | None]] = {}
    findings: list[str] = []
    slowest: list[tuple[float, str, int]] = []
    started = time.perf_counter()
    timeout = httpx.Timeout(60.0, connect=10.0)
    with (
        httpx.Client(base_url=server.url, timeout=timeout) as client,
        httpx.Client(base_url=server.url, timeout=30) as watcher,
    ):
        options_before = watcher.get("/sdapi/v1/options").json()
        last = newest_job(watcher)
        current_dialect = None
        for endpoint in endpoints():
            if only and endpoint.dialect not in only:
                continue
            if endpoint.dialect != current_dialect:
                if current_dialect is not None:
                    dialect_jobs[current_dialect]["after"] = count_jobs(watcher)
                current_dialect = endpoint.dialect
                dialect_jobs[current_dialect] = {"before": count_jobs(watcher)}
            key = f"{endpoint.dialect} {endpoint.name}"
            tally = tallies[key] = Tally()
            sampler.take_window()
            t0 = time.perf_counter()
            log(f"{key} ...")
            for case in endpoint.cases(big):
                if server.proc.poll() is not None:
                    break
                tally.sent += 1
                start = time.perf_counter()
                try:
                    response = send(client, case)
                except httpx.HTTPError as exc:
                    tally.statuses[type(exc).__name__] += 1
                    tally.transport.append((case, f"{type(exc).__name__}: {exc}"))
                    if case.big:
                        tally.big.append((case.label, type(exc).__name__, time.perf_counter() - start))
                    if server.proc.poll() is not None:
                        findings.append(f"the server died after {case.describe()[:300]}")
                        break
                    continue
                elapsed = time.perf_counter() - start
                status = response.status_code
                tally.statuses[str(status)] += 1
                if case.big:
                    tally.big.append((f"{case.label} ({len(response.content)} B answer)", status, elapsed))
                slowest.append((elapsed, f"{key}: {case.label}", status))
                if status >= 500:
                    tally.errors_5xx.append((case, status, excerpt(response)))
                if status == 405 and case.check_allow and "allow" not in response.headers:
                    tally.no_allow.append((case, status, excerpt(response, 120)))
                newest = newest_job(watcher)
                if newest.startswith("<"):
                    findings.append(f"after [{key}: {case.label}] the job listing broke: {newest}")
                elif newest != last:
                    if status >= 400:
                        tally.left_jobs.append((case, status, excerpt(response), newest))
                    else:
                        tally.accepted += 1
                        tally.accepted_cases.append(f"{case.label} -> {status}")
                last = newest
            tally.seconds = time.perf_counter() - t0
            tally.rss_peak = sampler.take_window()
            if key == "a1111 options":
                changed = {
                    k: v
                    for k, v in watcher.get("/sdapi/v1/options").json().items()
                    if options_before.get(k) != v
                }
                check = watcher.post(
                    "/sdapi/v1/txt2img",
                    json={"prompt": "x", "width": 64, "height": 64, "steps": 1},
                    timeout=60,
                )
                if check.status_code != 200:
                    findings.append(
                        f"with the options the corpus saved a plain A1111 txt2img answers "
                        f"{check.status_code}: {excerpt(check)}"
                    )
                if changed:
                    shown = {
                        k: (repr(v)[:60] + "...") if len(repr(v)) > 60 else v for k, v in changed.items()
                    }
                    findings.append(f"A1111 options saved from hostile values (then restored): {shown}")
                    watcher.post(
                        "/sdapi/v1/options",
                        json={k: options_before[k] for k in changed if k in options_before},
                    )
                last = newest_job(watcher)
            if server.proc.poll() is not None:
                findings.append(f"the server exited with {server.proc.returncode} during {key}")
                break
        if current_dialect is not None and server.proc.poll() is None:
            dialect_jobs[current_dialect]["after"] = count_jobs(watcher)
        health = "dead" if server.proc.poll() is not None else str(watcher.get("/healthz").status_code)
    elapsed = time.perf_counter() - started
    sampler.stopped.set()
    hwm = proc_status(server.proc.pid, "VmHWM")
    sampler.join(1)
    log_text = server.log.read_text(errors="replace")
    return {
        "tallies": tallies,
        "dialect_jobs": dialect_jobs,
        "findings": findings,
        "seconds": elapsed,
        "vm_hwm": hwm,
        "rss_peak": sampler.peak,
        "healthz_after": health,
        "tracebacks_in_log": log_text.count("Traceback (most recent call last)"),
        "exceptions_in_log": exceptions(log_text),
        "slowest": sorted(slowest, reverse=True)[:8],
        "log_tail": log_text[-3000:],
    }


def exceptions(log_text: str) -> list[str]:
    """Each traceback in the server log, as its last frame's two lines and the exception line."""
    out = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            if j < len(lines):
                out.append(f"{lines[j - 2].strip()} | {lines[j - 1].strip()} | {lines[j][:300]}")
    return out


# -- reporting ----------------------------------------------------------------------------------------


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MB:.0f} MiB"


def figures(result: dict[str, Any]) -> dict[str, Any]:
    tallies: dict[str, Tally] = result["tallies"]
    per_dialect: dict[str, dict[str, Any]] = {}
    for key, t in tallies.items():
        dialect = key.split(" ", 1)[0]
        d = per_dialect.setdefault(
            dialect,
            {
                "sent": 0,
                "statuses": Counter(),
                "5xx": 0,
                "left_jobs": 0,
                "no_allow": 0,
                "transport_errors": 0,
                "accepted_jobs": 0,
                "seconds": 0.0,
                "rss_peak_bytes": 0,
                "big_prompt": [],
            },
        )
        d["sent"] += t.sent
        d["statuses"].update(t.statuses)
        d["5xx"] += len(t.errors_5xx)
        d["left_jobs"] += len(t.left_jobs)
        d["no_allow"] += len(t.no_allow)
        d["transport_errors"] += len(t.transport)
        d["accepted_jobs"] += t.accepted
        d["seconds"] += t.seconds
        d["rss_peak_bytes"] = max(d["rss_peak_bytes"], t.rss_peak)
        d["big_prompt"] += [
            {"endpoint": key, "case": label, "status": status, "seconds": round(sec, 2)}
            for label, status, sec in t.big
        ]
    for dialect, d in per_dialect.items():
        d["statuses"] = dict(sorted(d["statuses"].items()))
        d["jobs_before"] = result["dialect_jobs"].get(dialect, {}).get("before")
        d["jobs_after"] = result["dialect_jobs"].get(dialect, {}).get("after")
        d["seconds"] = round(d["seconds"], 1)
    return {
        "requests": sum(d["sent"] for d in per_dialect.values()),
        "5xx": sum(d["5xx"] for d in per_dialect.values()),
        "left_jobs": sum(d["left_jobs"] for d in per_dialect.values()),
        "seconds": round(result["seconds"], 1),
        "server_vm_hwm_bytes": result["vm_hwm"],
        "server_rss_peak_sampled_bytes": result["rss_peak"],
        "healthz_after": result["healthz_after"],
        "tracebacks_in_server_log": result["tracebacks_in_log"],
        "exceptions_in_server_log": result["exceptions_in_log"],
        "slowest_requests": [
            {"seconds": round(sec, 2), "case": label, "status": status}
            for sec, label, status in result["slowest"]
        ],
        "findings": result["findings"],
        "per_dialect": per_dialect,
        "per_endpoint": {
            key: {
                "sent": t.sent,
                "statuses": dict(sorted(t.statuses.items())),
                "5xx": len(t.errors_5xx),
                "left_jobs": len(t.left_jobs),
                "no_allow": len(t.no_allow),
                "accepted_jobs": t.accepted,
                "accepted_cases": t.accepted_cases,
                "seconds": round(t.seconds, 1),
                "rss_peak_bytes": t.rss_peak,
            }
            for key, t in tallies.items()
        },
        "problems": [
            {
                "kind": kind,
                "endpoint": key,
                "case": case.label,
                "request": case.describe()[:400],
                "status": status,
                "response": body,
            }
            for key, t in tallies.items()
            for kind, items in (("5xx", t.errors_5xx), ("405 without Allow", t.no_allow))
            for case, status, body in items
        ]
        + [
            {
                "kind": "job left by a refused request",
                "endpoint": key,
                "case": case.label,
                "request": case.describe()[:400],
                "status": status,
                "response": body,
                "job": job,
            }
            for key, t in tallies.items()
            for case, status, body, job in t.left_jobs
        ]
        + [
            {
                "kind": "transport error",
                "endpoint": key,
                "case": case.label,
                "request": case.describe()[:400],
                "error": error,
            }
            for key, t in tallies.items()
            for case, error in t.transport
        ],
    }


def print_report(result: dict[str, Any], fig: dict[str, Any]) -> None:
    tallies: dict[str, Tally] = result["tallies"]
    for key, t in tallies.items():
        for case, status, body in t.errors_5xx:
            print(
                f"5xx  [{key}] {case.label}\n     request:  {case.describe()[:400]}\n"
                f"     response: {status} {body}"
            )
        for case, status, body, job in t.left_jobs:
            print(
                f"JOB  [{key}] {case.label} left {job}\n     request:  {case.describe()[:400]}\n"
                f"     response: {status} {body}"
            )
        for case, status, body in t.no_allow:
            print(
                f"405  [{key}] {case.label}: no Allow header\n     request:  {case.describe()[:200]}\n"
                f"     response: {status} {body}"
            )
        for case, error in t.transport:
            print(f"ERR  [{key}] {case.label}: {error}\n     request:  {case.describe()[:300]}")
    for finding in result["findings"]:
        print(f"NOTE {finding}")
    for exc in result["exceptions_in_log"]:
        print(f"LOG  {exc}")
    if result["healthz_after"] == "dead":
        print("server log tail:\n" + result["log_tail"])
    print()
    print(
        f"{'endpoint':32} {'sent':>5} {'5xx':>4} {'left':>4} {'noAllow':>7} {'jobs':>5} {'s':>6} {'RSS':>8}"
        "  statuses"
    )
    for key, e in fig["per_endpoint"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in e["statuses"].items())
        print(
            f"{key:32} {e['sent']:5} {e['5xx']:4} {e['left_jobs']:4} {e['no_allow']:7} {e['accepted_jobs']:5}"
            f" {e['seconds']:6.1f} {mib(e['rss_peak_bytes']):>8}  {statuses}"
        )
    print()
    print(
        f"{'dialect':10} {'sent':>5} {'5xx':>4} {'left':>4} {'noAllow':>7} {'jobs before->after':>19}"
        f" {'accepted':>8} {'s':>6} {'RSS':>8}  statuses"
    )
    for dialect, d in fig["per_dialect"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in d["statuses"].items())
        jobs = f"{d['jobs_before']}->{d['jobs_after']}"
        print(
            f"{dialect:10} {d['sent']:5} {d['5xx']:4} {d['left_jobs']:4} {d['no_allow']:7} {jobs:>19}"
            f" {d['accepted_jobs']:8} {d['seconds']:6.1f} {mib(d['rss_peak_bytes']):>8}  {statuses}"
        )
    print()
    print("50 MB prompt refusals:")
    for d in fig["per_dialect"].values():
        for b in d["big_prompt"]:
            print(f"  {b['endpoint']:32} {b['case']:32} -> {b['status']} in {b['seconds']:.2f} s")
    print()
    print("slowest requests:")
    for sec, label, status in result["slowest"]:
        print(f"  {sec:6.2f} s  {status}  {label[:100]}")
    print()
    print(
        f"total: {fig['requests']} requests in {fig['seconds']} s; 5xx {fig['5xx']} (target 0); "
        f"jobs left by refused requests {fig['left_jobs']} (target 0)"
    )
    print(
        f"server memory: VmHWM {mib(fig['server_vm_hwm_bytes'])} (peak RSS), sampled VmRSS peak "
        f"{mib(fig['server_rss_peak_sampled_bytes'])}; /healthz after: {fig['healthz_after']}; "
        f"tracebacks in the server log: {fig['tracebacks_in_server_log']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", help="comma-separated dialects: a1111,native,stability,openai,hf")
    parser.add_argument("--json-file", help="also write the figures as JSON to this file")
    parser.add_argument("--no-big", action="store_true", help="skip the 50 MB prompts")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with null_server() as server:
        result = run(server, only, not args.no_big, log)
    fig = figures(result)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(fig, indent=2, default=str))
    if args.json:
        print(json.dumps(fig, indent=2, default=str))
    else:
        print_report(result, fig)


if __name__ == "__main__":
    main()
