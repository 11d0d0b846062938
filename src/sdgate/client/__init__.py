"""sdgate's Python SDK: one client for sdgate and the Stable Diffusion services people already use.

    from sdgate import Client
    with Client(base_url="http://127.0.0.1:7860") as client:
        result = client.txt2img("a red circle", steps=20, seed=42)
        result.save("out/")

Backends: sdgate native (``/api/v1``), AUTOMATIC1111 (``/sdapi/v1``), ComfyUI, Stability (v1 and
v2beta), OpenAI-compatible images, Hugging Face Inference; see ``sdgate.client.backends``.
"""

from sdgate.client._async_client import AsyncClient
from sdgate.client._cache import ImageCache
from sdgate.client._client import Client
from sdgate.client._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SdgateError,
    UnprocessableEntityError,
    UnsupportedFeatureError,
    status_error_class,
)
from sdgate.client._ratelimit import TokenBucket
from sdgate.client._types import (
    BatchItem,
    GenerationResult,
    Hires,
    ImageRequest,
    Job,
    JobList,
    Lora,
    Model,
    Progress,
    ProgressEvent,
)
from sdgate.client.backends import (
    A1111Backend,
    Backend,
    ComfyUIBackend,
    HuggingFaceBackend,
    NativeBackend,
    OpenAIBackend,
    StabilityBackend,
    StabilityV2Backend,
    resolve_backend,
)

__all__ = [
    "A1111Backend",
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "BatchItem",
    "Client",
    "ComfyUIBackend",
    "ConfigurationError",
    "ConflictError",
    "GenerationResult",
    "Hires",
    "HuggingFaceBackend",
    "ImageCache",
    "ImageRequest",
    "InternalServerError",
    "Job",
    "JobList",
    "JobFailedError",
    "Lora",
    "Model",
    "NativeBackend",
    "NotFoundError",
    "OpenAIBackend",
    "PermissionDeniedError",
    "Progress",
    "ProgressEvent",
    "RateLimitError",
    "SdgateError",
    "StabilityBackend",
    "StabilityV2Backend",
    "TokenBucket",
    "UnprocessableEntityError",
    "UnsupportedFeatureError",
    "resolve_backend",
    "status_error_class",
]
