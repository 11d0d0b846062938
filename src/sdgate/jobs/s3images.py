"""Images in an S3-compatible bucket: the cluster mode's ``ImageStore`` (``--storage s3://bucket/prefix``).

    store = S3ImageStore.from_url("s3://sdgate-images/prod")  # checks the bucket answers, or raises
    image_id = store.put(png_bytes)                           # prod/ab/cd/img_abcd....png, image/png
    store.presigned_url(image_id, ttl_s=3600)                 # a GET link that needs no credentials

Where S3 is and who we are come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/config`` and ``credentials``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, instance roles); ``endpoint`` (``--storage-endpoint``)
overrides the endpoint for S3-compatible servers (MinIO, SeaweedFS, Ceph, R2), which are then
addressed path-style (``http://host:port/bucket/key``). Servers that reject boto3's default request
checksums take boto3's own ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``.

The credentials need ``s3:GetObject``, ``s3:PutObject`` and ``s3:DeleteObject`` on the prefix and
``s3:ListBucket`` on the bucket (without it AWS answers 403, not 404, for a missing image).

Ids are the same content addresses as ``LocalImageStore``'s, so keys are
``prefix/ab/cd/img_abcd....png`` with the image's Content-Type. ``put`` HEADs its key first: putting
bytes that are already there writes nothing (a HEAD is cheaper than uploading an image again).

Failures: a missing image is ``NotFound``; an S3 that cannot be reached, times out, answers 5xx or
refuses us (no credentials, access denied, no such bucket) is ``StorageUnavailable`` naming the
bucket and endpoint, remembered as ``storage_fault`` until a write succeeds (``probe_write`` tries
one for ``/readyz``). Each request is bounded: a few seconds to connect and per read, three attempts
in botocore's standard retry mode. One boto3 client serves every thread (clients are thread-safe;
the session that makes it is used once, here).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from sdgate.core.errors import NotFound, StorageUnavailable, StorageUnreachable
from sdgate.jobs.factory import StoreLocationError
from sdgate.jobs.images import _ID, CONTENT_TYPES, EXTENSIONS, extension_for, image_id
from sdgate.jobs.storage import StorageHealth

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
MAX_POOL_CONNECTIONS = 32  # the server's thread pool reads and writes images concurrently
MAX_PRESIGN_TTL_S = 7 * 24 * 3600  # SigV4's limit for a presigned URL
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET = frozenset({"NoSuchBucket"})


class S3ImageStore:
    """``ImageStore`` over one bucket and key prefix; see the module docstring."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.endpoint = str(client.meta.endpoint_url)
        self._health = StorageHealth()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint: str | None = None,
        create_bucket: bool = False,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> S3ImageStore:
        """The store for ``s3://bucket/prefix``, once its bucket answers (``check``). Raises
        ``StoreLocationError`` for a malformed URL, ``StorageUnavailable`` (one line naming the
        endpoint and bucket) when the bucket cannot be reached or does not exist; ``create_bucket``
        (tests, development) makes a missing bucket instead."""
        bucket, prefix = parse_s3_url(url)
        client = make_client(
            endpoint=endpoint,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_attempts=max_attempts,
        )
        store = cls(bucket, prefix, client=client)
        store.check(create_bucket=create_bucket)
        return store

    @property
    def storage_fault(self) -> StorageUnavailable | None:
        """Why the last request failed (unreachable, 5xx, refused), until a write succeeds again."""
        return self._health.fault

    # -- the ImageStore protocol --------------------------------------------------------------

    def put(self, data: bytes, *, content_type: str = "image/png") -> str:
        extension = extension_for(content_type)
        new_id = image_id(data)
        key = self._key(new_id, extension)
        if self._head(key, "write an image to"):
            return new_id
        self._call(
            "write an image to",
            lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type),
        )
        self._health.succeeded()
        return new_id

    def get(self, image_id: str) -> bytes:
        if not _ID.fullmatch(image_id):
            raise NotFound(f"image {image_id} not found")
        # Most images are PNGs: one GET, and a listing only for the others.
        body = self._get_key(self._key(image_id, ".png"))
        if body is None:
            key = self._find(image_id)
            body = None if key is None or key.endswith(".png") else self._get_key(key)
        if body is None:
            raise NotFound(f"image {image_id} not found")
        return body

    def content_type(self, image_id: str) -> str:
        key = self._find(image_id)
        if key is None:
            raise NotFound(f"image {image_id} not found")
        return CONTENT_TYPES[key[key.rindex(".") :]]

    def exists(self, image_id: str) -> bool:
        return self._find(image_id) is not None

    def delete(self, image_id: str) -> None:
        for key in self._keys(image_id):
            remove = functools.partial(self._client.delete_object, Bucket=self.bucket, Key=key)
            self._call("delete an image from", remove)

    # -- health, start-up, links --------------------------------------------------------------

    def probe_write(self) -> None:
        """A real write of a small object that is then removed; raises ``StorageUnavailable``."""
        key = self._join(f".probe/{uuid.uuid4().hex}")
        self._call("write to", lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=bytes(64)))
        self._call("write to", lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        self._health.succeeded()

    def check(self, *, create_bucket: bool = False) -> None:
        """Start-up: the bucket answers (HEAD bucket). A missing bucket is an error naming it,
        unless ``create_bucket``. Raises ``StorageUnavailable`` with one line."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _MISSING | _NO_BUCKET:
                raise self._fault("reach", exc) from None
        except BotoCoreError as exc:
            raise self._fault("reach", exc) from None
        if not create_bucket:
            raise StorageUnavailable(
                f"storage unavailable: the S3 bucket {self.bucket!r} does not exist at {self.endpoint} "
                "(create it, or check --storage)"
            )
        region = self._client.meta.region_name
        options: dict[str, Any] = {}
        if region and region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("create", lambda: self._client.create_bucket(Bucket=self.bucket, **options))

    def presigned_url(self, image_id: str, ttl_s: float) -> str:
        """A GET link to the image, valid ``ttl_s`` seconds (at most 7 days), that needs no
        credentials; for dialects that answer with URLs. Raises ``NotFound``."""
        expires = int(ttl_s)
        if not 1 <= expires <= MAX_PRESIGN_TTL_S:
            raise ValueError(f"ttl_s must be between 1 and {MAX_PRESIGN_TTL_S} seconds, not {ttl_s}")
        key = self._find(image_id)
        if key is None:
            raise NotFound(f"image {image_id} not found")
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    # -- keys and requests --------------------------------------------------------------------

    def _join(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, image_id: str, extension: str) -> str:
        digest = image_id[4:]
        return self._join(f"{digest[:2]}/{digest[2:4]}/{image_id}{extension}")

    def _keys(self, image_id: str) -> list[str]:
        """Every object stored for ``image_id`` (one, unless the same bytes came as two types)."""
        if not _ID.fullmatch(image_id):  # ids come from clients: nothing else may become a key
            return []
        listed = self._call(
            "list images in",
            lambda: self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(image_id, "."), MaxKeys=len(EXTENSIONS) + 1
            ),
        )
        keys = [str(item["Key"]) for item in listed.get("Contents", ())]
        return [k for k in keys if k[k.rfind(".") :] in CONTENT_TYPES]

    def _find(self, image_id: str) -> str | None:
        keys = self._keys(image_id)
        return keys[0] if keys else None

    def _head(self, key: str, action: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise self._fault(action, exc) from None
        except BotoCoreError as exc:
            raise self._fault(action, exc) from None
        return True

    def _get_key(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                return bytes(body.read())
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._fault("read an image from", exc) from None
        except BotoCoreError as exc:
            raise self._fault("read an image from", exc) from None

    def _call(self, action: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except (ClientError, BotoCoreError) as exc:
            raise self._fault(action, exc) from None

    def _fault(self, action: str, exc: ClientError | BotoCoreError) -> StorageUnavailable:
        """``exc`` as one line naming the bucket and endpoint, recorded for ``/readyz``."""
        where = f"S3 bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{error.get('Code') or status}: {error.get('Message') or 'no message'}"
            if _code(exc) in _NO_BUCKET:
                message = f"storage unavailable: the {where} does not exist ({detail})"
            elif status == 403:
                message = f"storage unavailable: the {where} refused access ({detail}; check the credentials)"
            else:
                message = f"storage unavailable: could not {action} the {where} ({detail})"
        elif isinstance(exc, NoCredentialsError):
            message = (
                f"storage unavailable: no S3 credentials for the {where} (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        else:
            message = f"storage unavailable: could not {action} the {where} ({_one_line(exc)})"
        fault = StorageUnreachable(message)
        self._health.failed(fault)
        return fault


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); ``StoreLocationError`` when it is not one."""
    parts = urlsplit(url)
    bucket = parts.netloc
    ok = (
        parts.scheme == "s3"
        and 3 <= len(bucket) <= 63
        and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)
        and bucket[0].isalnum()
        and bucket[-1].isalnum()
        and not parts.query
        and not parts.fragment
    )
    if not ok:
        raise StoreLocationError(
            f"storage: {url!r} is not an S3 location (s3://bucket/prefix; a bucket name is 3-63 "
            "lowercase letters, digits, dots and hyphens)"
        )
    return bucket, parts.path.strip("/")


def make_client(
    *,
    endpoint: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> Any:
    """A boto3 S3 client from the standard chain, ``endpoint`` overriding where it connects."""
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
        "retries": {"mode": "standard", "total_max_attempts": max_attempts},  # the first one included
        "max_pool_connections": MAX_POOL_CONNECTIONS,
        "signature_version": "s3v4",
    }
    # An S3-compatible server at a custom endpoint (often an IP or "localhost") has no per-bucket
    # host names: address it path-style. AWS itself keeps boto3's choice (or the config file's).
    if endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        options["s3"] = {"addressing_style": "path"}
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint or None, config=Config(**options))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
