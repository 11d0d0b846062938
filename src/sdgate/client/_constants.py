"""Every default of the SDK, in one place."""

from __future__ import annotations

DEFAULT_PORT = 7860
DEFAULT_BASE_URL_ENV = "SDGATE_BASE_URL"
DEFAULT_API_KEY_ENV = "SDGATE_API_KEY"

# Timeouts (seconds). Connecting should fail fast; a generation may legitimately take minutes.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_GENERATION_TIMEOUT = 600.0
DEFAULT_WRITE_TIMEOUT = 60.0
DEFAULT_POOL_TIMEOUT = 60.0

# Retries: attempts after the first one; exponential backoff with jitter between them.
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
JITTER_FRACTION = 0.25  # a delay is shortened by up to this fraction, at random
MAX_RETRY_AFTER = 60.0  # a server asking for a longer wait is not waited for: the error is raised
RETRYABLE_STATUSES = frozenset({408, 429})  # plus every 5xx

# Connection pool.
MAX_CONNECTIONS = 64
MAX_KEEPALIVE_CONNECTIONS = 32

# Polling a job or a blocking service for progress.
POLL_INITIAL_S = 0.02
POLL_MAX_S = 1.0
POLL_FACTOR = 1.5
# sdgate's long poll: one request submits, waits up to this long and brings the images back.
LONG_POLL_S = 30.0
# Uploaded init images and masks a client remembers (content hash -> upload id).
MAX_REMEMBERED_UPLOADS = 1024

DEFAULT_BATCH_CONCURRENCY = 4
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "x-request-id"
USER_AGENT = "sdgate-python"
