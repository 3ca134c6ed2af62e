"""Request ids, the same for every transport (README "Asking for predictions").

A request id comes from the caller (HTTP: the `x-request-id` header, else the body's `id`; a
stream message: the same, else the message's own id) and is echoed in the answer, the access
log, the shadow log and the monitor, which joins feedback with it.
"""

import itertools
import os

# A random per-process prefix and a counter. uuid4() reads os.urandom on every call, which
# profiling showed to be a sixth of a small request's cost.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def header_safe(value: str | None) -> str | None:
    """`value` if it can be echoed as a request id, else None.

    An id is echoed in the x-request-id header, the access log and the shadow log only if it is
    safe and short there: visible ASCII (no space), at most 256 characters. Any other gets a
    generated id in its place.
    """
    if value and len(value) <= 256 and value.isascii() and value.isprintable() and " " not in value:
        return value
    return None


def new_request_id() -> str:
    """An id unique across processes and restarts (random prefix), cheap to make."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"
