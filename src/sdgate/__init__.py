"""sdgate: a self-hosted Stable Diffusion service, its SDK and CLI.

Importing ``sdgate`` never imports torch: the SDK and CLI run on machines without it.
"""

from typing import Any

__version__ = "0.1.0"

# The SDK is exported lazily (PEP 562), so ``import sdgate`` stays cheap for the server and CLI.
_SDK_EXPORTS = (
    "Client",
    "AsyncClient",
    "ImageRequest",
    "GenerationResult",
    "Hires",
    "Lora",
    "SdgateError",
    "APIError",
    "APIStatusError",
    "APIConnectionError",
    "BadRequestError",
    "NotFoundError",
    "RateLimitError",
    "JobFailedError",
)

__all__ = ["__version__", *_SDK_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SDK_EXPORTS:
        import sdgate.client

        return getattr(sdgate.client, name)
    raise AttributeError(f"module 'sdgate' has no attribute {name!r}")
