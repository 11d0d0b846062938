"""``sdgate keys`` (issue 16): create prints the key alone on its last line (or the record with
``--json``), list never shows a secret, revoke and rotate by id, name or prefix, on SQLite and
PostgreSQL, and while a server runs on the same database; the access flags of ``serve`` / ``api``
reach the settings, HTTPS works with a self-signed certificate, and no key reaches the log."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from sdgate import logs
from sdgate.cli import serving
from sdgate.cli.main import app
from sdgate.jobs.database import create_db_engine
from sdgate.jobs.keys import KEY_CACHE_S, KeyStore
from sdgate.settings import Settings
from tests.harness import ThreadServer, free_port
from tests.jobs.conftest import pg_server, services_required  # noqa: F401 - fixtures

runner = CliRunner()


def keys(*args: str) -> Any:
    return runner.invoke(app, ["keys", *args])


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The flags that name the database: --data-dir, or --database postgresql://..."""
    if request.param == "sqlite":
        yield ["--data-dir", str(tmp_path / "data")]
        return
    with request.getfixturevalue("pg_server").database() as url:
        yield ["--database", url]


def store_of(where: list[str]) -> KeyStore:
    url = where[1] if where[0] == "--database" else f"sqlite:///{Path(where[1]) / 'sdgate.db'}"
    return KeyStore(create_db_engine(url))


def test_create_list_rotate_revoke(where: list[str]) -> None:
    made = keys("create", "--name", "app1", "--scopes", "generate,read", "--rate", "60/min",
                "--images-per-day", "500", "--gpu-seconds-per-day", "600", "--max-concurrent", "4",
                "--expires", "90d", *where)
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("sdg_") and " " not in secret
    store = store_of(where)
    key = store.verify(secret)
    assert key.name == "app1" and key.scopes == ("generate", "read") and key.expires_at is not None
    assert key.limits.to_dict() == {"rate_per_min": 60, "images_per_day": 500, "gpu_seconds_per_day": 600,
                                    "max_concurrent": 4}

    listed = keys("list", *where)
    assert listed.exit_code == 0 and "app1" in listed.stdout and key.prefix in listed.stdout
    assert secret not in listed.stdout
    rows = json.loads(keys("list", "--json", *where).stdout)
    assert [r["id"] for r in rows] == [key.id] and "secret_hash" not in rows[0] and secret not in str(rows)

    rotated = keys("rotate", key.prefix, *where)
    assert rotated.exit_code == 0, rotated.output
    new_secret = rotated.stdout.strip().splitlines()[-1]
    assert new_secret != secret and store.verify(new_secret).id == key.id
    with pytest.raises(Exception, match="invalid API key"):
        store.verify(secret)

    revoked = keys("revoke", "app1", *where)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout and new_secret not in revoked.stdout
    with pytest.raises(Exception, match="revoked"):
        store.verify(new_secret)


def test_json_is_the_whole_record_with_the_key(tmp_path: Path) -> None:
    out = keys("create", "--name", "ci", "--scopes", "admin", "--json", "--data-dir", str(tmp_path))
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["key"].startswith("sdg_") and record["prefix"] == record["key"][:12]
    assert record["scopes"] == ["admin"] and record["state"] == "active" and "secret_hash" not in record
    again = json.loads(keys("rotate", record["id"], "--json", "--data-dir", str(tmp_path)).stdout)
    assert again["id"] == record["id"] and again["key"] != record["key"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["create", "--name", "x", "--scopes", "root"], 2, "scopes"),
        (["create", "--name", "x", "--rate", "lots"], 2, "rate"),
        (["create", "--name", "x", "--expires", "yesterday"], 2, "expires"),
        (["revoke", "nobody"], 1, "no key"),
        (["rotate", "nobody"], 1, "no key"),
        (["list", "--database", "mysql://h/db"], 2, "not supported"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    out = keys(*args, "--data-dir", str(tmp_path))
    assert out.exit_code == code, out.output
    assert says in out.output and "Traceback" not in out.output


def test_a_taken_name_is_refused(tmp_path: Path) -> None:
    assert keys("create", "--name", "app1", "--data-dir", str(tmp_path)).exit_code == 0
    out = keys("create", "--name", "app1", "--data-dir", str(tmp_path))
    assert out.exit_code == 1 and "already named" in out.output


@pytest.mark.slow
def test_keys_turn_on_and_off_while_the_server_runs(tmp_path: Path) -> None:
    from tests.fakes import FakeEngine, write_fake_checkpoint

    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu")
    from sdgate.server.app import create_app

    with ThreadServer(create_app(settings, engine=FakeEngine())) as server:
        url = server.url + "/api/v1/jobs"
        assert httpx.get(url).status_code == 200  # --auth auto, no key yet: open
        made = keys("create", "--name", "app1", "--data-dir", str(settings.data_dir))
        secret = made.stdout.strip().splitlines()[-1]
        wait_for(lambda: httpx.get(url).status_code == 401)  # the first key turned keys on
        assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert keys("revoke", "app1", "--data-dir", str(settings.data_dir)).exit_code == 0
        started = time.monotonic()
        wait_for(lambda: httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 401)
        assert time.monotonic() - started < KEY_CACHE_S + 2


def wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# -- serve / api flags ---------------------------------------------------------------------------


def test_access_flags_reach_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Settings] = {}
    monkeypatch.setattr(serving, "_run", lambda _app, settings, *_a, **_k: seen.update(s=settings))
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)  # the root logger stays pytest's
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("badword\n")
    cert, key = self_signed(tmp_path)
    out = runner.invoke(app, [
        "api", "--data-dir", str(tmp_path / "data"), "--auth", "keys", "--public-endpoint", "healthz,metrics",
        "--public-endpoint", "readyz", "--cors-allow-origin", "https://a.example,https://b.example",
        "--audit-prompts", "--content-blocklist", str(blocklist), "--safety-checker", "off",
        "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
    ])
    assert out.exit_code == 0, out.output
    s = seen["s"]
    assert s.auth == "keys" and s.public_endpoints == ["healthz", "metrics", "readyz"]
    assert s.cors_allow_origins == ["https://a.example", "https://b.example"]
    assert s.audit_prompts and s.content_blocklist == blocklist and s.safety_checker == "off"
    assert (s.ssl_certfile, s.ssl_keyfile) == (cert, key)
    closed = runner.invoke(app, ["api", "--data-dir", str(tmp_path / "data"), "--public-endpoint", "none"])
    assert closed.exit_code == 0 and seen["s"].public_endpoints == []


@pytest.mark.parametrize(
    "args",
    [["--auth", "basic"], ["--auth", "sometimes"], ["--ssl-certfile", "/nonexistent.pem"],
     ["--public-endpoint", "docs"], ["--safety-checker", "maybe"], ["--content-blocklist", "/nonexistent"]],
)
def test_bad_access_flags_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           args: list[str]) -> None:
    monkeypatch.setattr(serving, "_run", lambda *_a, **_k: None)
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)
    out = runner.invoke(app, ["api", "--data-dir", str(tmp_path / "data"), *args])
    assert out.exit_code == 2, out.output


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (``cryptography``, else ``openssl``)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


@pytest.mark.slow
def test_https_and_no_key_in_the_log(tmp_path: Path) -> None:
    """``sdgate api`` over TLS with keys on: a client that trusts the certificate gets in with a key
    sent as ``?token=``; the access log shows the request without the key."""
    cert, key_file = self_signed(tmp_path)
    data = tmp_path / "data"
    made = keys("create", "--name", "app1", "--data-dir", str(data))
    secret = made.stdout.strip().splitlines()[-1]
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdgate", "api", "--port", str(port), "--data-dir", str(data),
             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key_file), "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = f"https://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/healthz", verify=str(cert), timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90)
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert httpx.get(base + "/api/v1/jobs", verify=str(cert)).status_code == 401
        ok = httpx.get(base + "/api/v1/jobs", params={"token": secret, "state": "queued"}, verify=str(cert))
        assert ok.status_code == 200
        bearer = httpx.get(base + "/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"},
                           verify=str(cert))
        assert bearer.status_code == 200
        wait_for(lambda: "state=queued" in log.read_text(), timeout=10)
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "https://127.0.0.1" in text  # the announced URL
    assert "token=[redacted]" in text and secret not in text and secret[12:] not in text


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_blocklist_that_does_not_load_is_one_line_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    ran: list[object] = []
    monkeypatch.setattr(serving, "_run", lambda *_a, **_k: ran.append(1))
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("fine words\n/(a+)+/\n")
    engine = ["--engine", "null"] if command == "serve" else []
    out = runner.invoke(app, [command, "--data-dir", str(tmp_path / "data"), *engine,
                              "--content-blocklist", str(blocklist)])
    assert out.exit_code == 2 and not ran
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--content-blocklist" in lines[0] and "blocked.txt:2" in lines[0], out.output


def test_safety_checker_on_without_its_files_is_one_line_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[object] = []
    monkeypatch.setattr(serving, "_run", lambda *_a, **_k: ran.append(1))
    monkeypatch.setattr(logs, "configure_logging", lambda *_a: None)
    out = runner.invoke(app, ["serve", "--data-dir", str(tmp_path / "data"), "--engine", "null",
                              "--models-dir", str(tmp_path / "models"), "--safety-checker", "on"])
    assert out.exit_code == 2 and not ran
    assert "safety" in out.output.lower() and len(out.output.strip().splitlines()) == 1, out.output
