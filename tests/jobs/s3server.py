"""The S3 fixtures: the SeaweedFS server ``scripts/services.sh start`` runs, a bucket per session and a
key prefix per test, and a TCP proxy in front of the server that tests take down.

The server: ``SDGATE_TEST_S3_ENDPOINT`` / ``_ACCESS_KEY`` / ``_SECRET_KEY`` / ``_REGION`` (what
``source $SDGATE_SERVICES_DIR/env`` sets), else the script's defaults. When it does not answer, the
tests FAIL naming ``scripts/services.sh start`` in CI (``CI`` set) or with
``SDGATE_REQUIRE_SERVICES=1``, and are skipped on a developer's machine otherwise, as the PostgreSQL
ones are (tests/jobs/conftest.py).

``s3_env`` gives the test boto3's standard environment (``AWS_ACCESS_KEY_ID``, ...) and nothing from
the machine's own ``~/.aws``, so ``S3ImageStore.from_url`` finds its credentials as in production.
``FlakyProxy`` stands between a store and the real server: ``down()`` drops every connection
(a stopped server), ``answer_503()`` answers every request 503, ``hang()`` accepts and never
answers; ``up()`` forwards again. No S3 behaviour is faked: the server answers everything else.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from sdgate.jobs.s3images import S3ImageStore

DEFAULT_ENDPOINT = "http://127.0.0.1:58333"
DEFAULT_KEY = "sdgate-test-key"
DEFAULT_SECRET = "sdgate-test-secret"
AWS_VARIABLES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)


def services_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("SDGATE_REQUIRE_SERVICES") == "1"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def client(self) -> Any:
        """An admin client with explicit credentials: for the tests' own checks and clean-up."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=3,
                read_timeout=10,
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )

    def environment(self) -> dict[str, str]:
        """The standard AWS variables for this server (as an operator would set them)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(str(item["Key"]) for page in pages for item in page.get("Contents", ()))

    def remove_bucket(self, bucket: str) -> None:
        client = self.client()
        with suppress(client.exceptions.NoSuchBucket):
            for key in self.keys(bucket):
                client.delete_object(Bucket=bucket, Key=key)
            client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    server = S3Server(
        endpoint=os.environ.get("SDGATE_TEST_S3_ENDPOINT") or DEFAULT_ENDPOINT,
        access_key=os.environ.get("SDGATE_TEST_S3_ACCESS_KEY") or DEFAULT_KEY,
        secret_key=os.environ.get("SDGATE_TEST_S3_SECRET_KEY") or DEFAULT_SECRET,
        region=os.environ.get("SDGATE_TEST_S3_REGION") or "us-east-1",
    )
    try:
        server.client().list_buckets()
    except Exception as exc:  # noqa: BLE001 - any failure to answer means "no server"
        message = (
            f"no S3 at {server.endpoint} ({' '.join(str(exc).split())[:300]}): run "
            "`scripts/services.sh start` and `source /tmp/sdgate-services/env` (see tests/jobs/s3server.py)"
        )
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """One bucket for the session (a SeaweedFS bucket is a collection with its own volumes: one per
    test would be slow); each test keeps to its own prefix."""
    bucket = f"sdgate-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        s3_server.remove_bucket(bucket)


@pytest.fixture
def s3_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/images"


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """boto3's standard environment pointing at the test server's credentials, isolated from the
    machine's own AWS configuration; the endpoint is left to each test."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_server


@pytest.fixture
def s3_images(s3_env: S3Server, s3_bucket: str, s3_prefix: str) -> S3ImageStore:
    return S3ImageStore.from_url(f"s3://{s3_bucket}/{s3_prefix}", endpoint=s3_env.endpoint)


class FlakyProxy:
    """A loopback TCP proxy to ``target`` (host:port) that a test can take down and bring back."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = "up"  # up | down | 503 | hang
        self.connections = 0  # accepted since the start: each is one attempt of a request
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def up(self) -> None:
        self._set("up")

    def down(self) -> None:
        self._set("down")

    def answer_503(self) -> None:
        self._set("503")

    def hang(self) -> None:
        self._set("hang")

    def close(self) -> None:
        self._set("closed")
        self._listener.close()

    def _set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            for sock in self._open:  # kept-alive connections from before the change end too
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                self.connections += 1
                self._open.append(conn)
            if mode == "up":
                threading.Thread(target=self._forward, args=(conn,), daemon=True).start()
            elif mode == "503":
                threading.Thread(target=self._answer_503, args=(conn,), daemon=True).start()
            elif mode != "hang":
                conn.close()

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.append(upstream)
        threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
        _pump(conn, upstream)

    @staticmethod
    def _answer_503(conn: socket.socket) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        with suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        conn.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    for sock in (source, sink):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def flaky_proxy(target: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
