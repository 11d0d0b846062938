"""Signed image links: HMAC over id and expiry, a persisted key, expiry enforced."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sdgate.server.signing import SIGNED_PATH, UrlSigner, signing_key
from sdgate.settings import Settings


def parts(path: str) -> tuple[str, int, str]:
    url = urlsplit(path)
    query = parse_qs(url.query)
    return url.path.rsplit("/", 1)[1], int(query["expires"][0]), query["signature"][0]


def test_link_verifies_until_it_expires() -> None:
    signer = UrlSigner(b"k", ttl_s=60)
    path = signer.path("img_abc", now=1000)
    assert path.startswith(SIGNED_PATH + "/img_abc?")
    image_id, expires, signature = parts(path)
    assert expires == 1060
    assert signer.verify(image_id, expires, signature, now=1059)
    assert not signer.verify(image_id, expires, signature, now=1061)
    assert not signer.verify("img_other", expires, signature, now=1001)
    assert not signer.verify(image_id, expires + 3600, signature, now=1001)  # a stretched expiry
    assert not UrlSigner(b"other", ttl_s=60).verify(image_id, expires, signature, now=1001)


def test_key_from_settings_or_persisted_file(tmp_path: Path) -> None:
    assert signing_key(Settings(data_dir=tmp_path, url_signing_secret="s3cret")) == b"s3cret"
    first = signing_key(Settings(data_dir=tmp_path))
    assert len(first) == 64 and signing_key(Settings(data_dir=tmp_path)) == first  # survives a restart
    assert (tmp_path / "url-signing.key").stat().st_mode & 0o077 == 0
