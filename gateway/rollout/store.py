"""Where rollouts live: their records, every process's figures, and the judge's lease.

- Embedded mode: one JSON file per model under `data_dir/rollouts/` (written, fsynced, renamed),
  figures in memory (one process), and the lease is always this process's.
- Redis (keys internal): `gateway:rollout:{model}` holds the record, replaced by a Lua
  compare-and-set on its `version`; `gateway:rollout:{model}:figures` is a hash of each
  process's cumulative figures (kept a day after the last write); `gateway:rollout:lease` names
  the one process that judges every rollout, set with an expiry that its holder renews. If the
  holder dies, the lease expires and another process takes it within `LEASE_S`.
"""

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.errors import Conflict, Unavailable, redis_errors
from gateway.files import replace_file
from gateway.rollout.figures import Figures
from gateway.rollout.record import Rollout

if TYPE_CHECKING:  # imported only with Redis: gateway.errors.redis_errors
    import redis.asyncio as aioredis

RECORD_KEY = "gateway:rollout:{model}"
FIGURES_KEY = "gateway:rollout:{model}:figures"
LEASE_KEY = "gateway:rollout:lease"
LEASE_S = 3.0  # a dead judge is replaced after this at most
FIGURES_TTL_S = 86_400

_PUT = """
local raw = redis.call('GET', KEYS[1])
local current = 0
if raw then current = cjson.decode(raw)['version'] end
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RolloutStore(Protocol):
    async def get(self, model: str) -> Rollout | None: ...

    async def put(self, rollout: Rollout) -> Rollout:
        """Store `rollout` if the stored version is still its version (0: none), as version
        + 1; Conflict otherwise."""

    async def publish(self, model: str, process: str, figures: Figures) -> None: ...

    async def figures(self, model: str) -> dict[str, Figures]: ...

    async def acquire(self, holder: str) -> bool:
        """Take or renew the judge's lease; whether `holder` has it."""

    async def release(self, holder: str) -> None: ...

    async def holder(self) -> str | None:
        """Who holds the lease now (host:pid:nonce), if anyone."""


class EmbeddedRollouts:
    """One process: records on local disk, figures and lease in memory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._figures: dict[str, dict[str, Figures]] = {}
        self._lock = asyncio.Lock()
        self._holder: str | None = None

    async def get(self, model: str) -> Rollout | None:
        return await asyncio.to_thread(self._read, model)

    async def put(self, rollout: Rollout) -> Rollout:
        async with self._lock:
            stored = await self.get(rollout.model)
            if (stored.version if stored else 0) != rollout.version:
                raise Conflict(f"the rollout of {rollout.model!r} changed meanwhile; try again")
            new = _next_version(rollout)
            await asyncio.to_thread(self._write, new)
            return new

    async def publish(self, model: str, process: str, figures: Figures) -> None:
        self._figures.setdefault(model, {})[process] = figures

    async def figures(self, model: str) -> dict[str, Figures]:
        return dict(self._figures.get(model, {}))

    async def acquire(self, holder: str) -> bool:
        self._holder = holder
        return True

    async def release(self, holder: str) -> None:
        self._holder = None

    async def holder(self) -> str | None:
        return self._holder

    def _file(self, model: str) -> Path:
        return self._directory / f"{model}.json"

    def _read(self, model: str) -> Rollout | None:
        try:
            return Rollout.from_dict(orjson.loads(self._file(model).read_bytes()))
        except FileNotFoundError:
            return None

    def _write(self, rollout: Rollout) -> None:
        replace_file(self._file(rollout.model), orjson.dumps(rollout.to_dict()))


class RedisRollouts:
    """Records, figures and the lease in Redis; a Redis failure is Unavailable (503)."""

    def __init__(self, client: "aioredis.Redis") -> None:
        self._client = client
        self._put = client.register_script(_PUT)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def get(self, model: str) -> Rollout | None:
        raw = await self._call(self._client.get(RECORD_KEY.format(model=model)))
        return None if raw is None else Rollout.from_dict(orjson.loads(raw))

    async def put(self, rollout: Rollout) -> Rollout:
        new = _next_version(rollout)
        args: list[int | bytes] = [rollout.version, orjson.dumps(new.to_dict())]
        if not await self._call(
            self._put(keys=[RECORD_KEY.format(model=rollout.model)], args=args)
        ):
            raise Conflict(f"the rollout of {rollout.model!r} changed meanwhile; try again")
        return new

    async def publish(self, model: str, process: str, figures: Figures) -> None:
        key = FIGURES_KEY.format(model=model)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, process, orjson.dumps(figures))
            pipe.expire(key, int(FIGURES_TTL_S))
            await self._call(pipe.execute())

    async def figures(self, model: str) -> dict[str, Figures]:
        raw = await self._call(self._client.hgetall(FIGURES_KEY.format(model=model)))
        return {process.decode(): orjson.loads(value) for process, value in raw.items()}

    async def acquire(self, holder: str) -> bool:
        return bool(
            await self._call(self._renew(keys=[LEASE_KEY], args=[holder, int(LEASE_S * 1000)]))
        )

    async def release(self, holder: str) -> None:
        await self._call(self._release(keys=[LEASE_KEY], args=[holder]))

    async def holder(self) -> str | None:
        raw = await self._call(self._client.get(LEASE_KEY))
        return None if raw is None else str(raw.decode())

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except redis_errors() as exc:
            raise Unavailable(f"the rollout store (Redis) is unreachable: {exc}") from exc


def _next_version(rollout: Rollout) -> Rollout:
    return replace(rollout, version=rollout.version + 1)
