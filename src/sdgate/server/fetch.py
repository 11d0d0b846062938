"""Fetching http(s) init images (A1111's ``api_enable_requests``), off unless ``allow_image_urls``.

The host is resolved first and every address must be public (no loopback, private, link-local,
reserved or multicast address); the connection then goes to the checked address itself, so a
DNS answer that changes between check and connect (rebinding) cannot reach inside. Redirects are
not followed; the body is capped at the image byte limit and the whole fetch has a timeout.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from sdgate.core.errors import InvalidRequest
from sdgate.settings import Settings

TIMEOUT_S = 10.0
MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def checked_address(url: str, *, resolve: Resolver = _resolve) -> tuple[str, str, int, str]:
    """(scheme, host, port, address) of ``url`` if it may be fetched, else ``ValueError``."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("only absolute http:// and https:// URLs are fetched")
    if parts.username or parts.password:
        raise ValueError("URLs with credentials are not fetched")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError):
            raise ValueError(f"cannot resolve host {host!r}") from None
    if not addresses or not all(is_public(a) for a in addresses):
        raise ValueError("the URL points at a loopback, private or reserved address")
    return parts.scheme, host, port, addresses[0]


def fetch_image(
    url: str, max_bytes: int, *, resolve: Resolver = _resolve, timeout: float = TIMEOUT_S
) -> bytes:
    """GET ``url`` (checked as above) and return at most ``max_bytes`` of body, else ``ValueError``."""
    scheme, host, port, address = checked_address(url, resolve=resolve)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = _PinnedHTTPS(host, port, address, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = _PinnedHTTP(host, port, address, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"})
        response = conn.getresponse()
        if response.status != 200:
            raise ValueError(f"the server answered HTTP {response.status}")
        data = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise ValueError(f"fetching failed ({exc.__class__.__name__})") from None
    finally:
        conn.close()
    if len(data) > max_bytes:
        raise ValueError(f"the image is larger than {max_bytes} bytes")
    return data


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, *, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, *, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def make_fetcher(settings: Settings, field: str) -> Callable[[str, int], bytes] | None:
    """The ``fetch_url`` seam of ``core.images`` for ``field`` when URLs are allowed, else None."""
    if not settings.allow_image_urls:
        return None

    def fetch(url: str, max_bytes: int) -> bytes:
        try:
            return fetch_image(url, max_bytes)
        except ValueError as exc:
            raise InvalidRequest(f"{field}: cannot fetch {url[:200]}: {exc}", field=field) from None

    return fetch
