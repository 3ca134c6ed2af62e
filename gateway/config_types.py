"""Field types shared by the config models (gateway.settings, gateway.streams.config)."""

from typing import Annotated

from pydantic import AfterValidator


def _redis_scheme(value: str | None) -> str | None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value or None


# A Redis URL as redis-py's `from_url` takes it (redis://, rediss:// or unix://); an empty
# string is None, as an unset environment variable would be.
RedisUrl = Annotated[str | None, AfterValidator(_redis_scheme)]
