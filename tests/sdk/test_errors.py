"""The error hierarchy, the status map and reading each service's error body."""

from __future__ import annotations

import httpx
import pytest

import sdgate
from sdgate.client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Client,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SdgateError,
    UnprocessableEntityError,
    status_error_class,
)
from sdgate.client._core import make_status_error


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (418, BadRequestError),
        (500, InternalServerError),
        (503, InternalServerError),
        (507, InternalServerError),
    ],
)
def test_status_map(status: int, cls: type) -> None:
    assert status_error_class(status) is cls
    assert issubclass(cls, APIStatusError) and issubclass(cls, APIError) and issubclass(cls, SdgateError)


def test_tree() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, APIError)
    assert not issubclass(APIConnectionError, APIStatusError)
    assert sdgate.SdgateError is SdgateError


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            {"error": {"code": "invalid_request", "message": "steps: too many", "field": "steps"}},
            "steps: too many",
            "invalid_request",
        ),  # native
        (
            {"error": {"message": "bad size", "type": "invalid_request_error", "param": None, "code": None}},
            "bad size",
            None,
        ),  # OpenAI
        (
            {"error": "NotFound", "detail": "no model x", "body": "", "errors": "no model x"},
            "no model x",
            "NotFound",
        ),  # A1111
        (
            {"detail": [{"loc": ["body", "steps"], "msg": "not an int", "type": "int_parsing"}]},
            "steps: not an int",
            "validation_error",
        ),  # FastAPI
        (
            {"id": "1", "name": "invalid_samples", "message": "too many"},
            "too many",
            "invalid_samples",
        ),  # Stability v1
        ({"id": "1", "name": "bad_request", "errors": ["a", "b"]}, "a; b", "bad_request"),  # Stability v2beta
        (
            {"error": "Model x is currently loading", "estimated_time": 3.0},
            "Model x is currently loading",
            None,
        ),  # HF
        ({"error": ["one", "two"]}, "one; two", None),
    ],
)
def test_error_bodies(body: dict, message: str, code: str | None) -> None:
    err = make_status_error(httpx.Response(400, json=body, headers={"x-request-id": "rid-1"}))
    assert (err.message, err.code, err.request_id, err.body) == (message, code, "rid-1", body)
    assert "rid-1" in str(err)


def test_error_plain_text_and_empty() -> None:
    assert make_status_error(httpx.Response(502, text="bad gateway\n")).message == "bad gateway"
    assert make_status_error(httpx.Response(404)).message == "Not Found"


def test_missing_base_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDGATE_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="SDGATE_BASE_URL"):
        Client()


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDGATE_BASE_URL", "http://example.test:7860")
    monkeypatch.setenv("SDGATE_API_KEY", "sk-env")
    with Client() as client:
        assert client.base_url == "http://example.test:7860"
        assert client.backend.auth_headers() == {"Authorization": "Bearer sk-env"}


def test_unknown_backend_kind() -> None:
    with pytest.raises(ConfigurationError, match="unknown backend"):
        Client("nope+http://x")
