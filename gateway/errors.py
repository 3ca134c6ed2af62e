"""The gateway's exception tree.

Every error a client can cause is a `GatewayError` subclass that knows its HTTP status; the web
layer maps them to `{"error": message}` responses in one place. Nothing here imports the web
framework, so the service and runtime layers raise these freely.
"""

import sys


class GatewayError(Exception):
    """Base class: an error with a message a user can act on and an HTTP status."""

    status_code = 500
    headers: tuple[tuple[str, str], ...] = ()  # response headers the answer must carry

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    """The request is malformed: not JSON, wrong input names, datatypes, shapes or data."""

    status_code = 400


class ModelRefused(BadRequest):
    """The inputs matched the model's declared metadata, but its nodes refused them at run time
    (a data-dependent shape or index). A 400 as in Triton; a rollout counts it as the variant's
    error, since the variant it replaces may accept the same inputs."""


class Unauthorized(GatewayError):
    """The admin API was called without the right bearer token."""

    status_code = 401


class Forbidden(GatewayError):
    """The admin API is switched off (no token configured)."""

    status_code = 403


class NotFound(GatewayError):
    """Unknown model, variant or revision."""

    status_code = 404


class Conflict(GatewayError):
    """A routing change that contradicts the current state (canary == live, nothing to promote)."""

    status_code = 409


class PayloadTooLarge(GatewayError):
    """The request body is over `max_body_bytes`."""

    status_code = 413


class UnsupportedMediaType(GatewayError):
    """The request body comes in a Content-Encoding the gateway cannot decode."""

    status_code = 415


class QueueFull(GatewayError):
    """The variant's queue holds `max_queue_size` requests already (README "Batching and
    admission"); Retry-After says in how many seconds the queue should have room (RFC 9110
    section 10.2.3)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = (("retry-after", str(retry_after_s)),)


class Unavailable(GatewayError):
    """Not ready yet, or the routing store (Redis) cannot be reached for a change."""

    status_code = 503


class InferenceTimeout(GatewayError):
    """The request could not be answered within its deadline (`request_timeout_s`, or its own
    `timeout` parameter): it waited or ran too long, or the work ahead of it would take longer."""

    status_code = 504


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the field and the problem."""


def redis_errors() -> tuple[type[Exception], ...]:
    """What a call to Redis may raise, for an `except` clause: redis-py's RedisError and OSError.

    redis is imported only when the gateway uses Redis (the import adds about 22 MB to each
    worker); until then none of its errors can be raised, so OSError alone is matched. The
    clause calls this only when an exception is being matched, never on the way through.
    """
    exceptions = sys.modules.get("redis.exceptions")
    return (OSError,) if exceptions is None else (exceptions.RedisError, OSError)
