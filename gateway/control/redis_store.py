"""Routing history in Redis, shared by every worker and replica, with changes pushed by pub/sub.

Keys (internal, not part of the contract): `gateway:routing:{model}` is a list of JSON history
entries, oldest first; the last one is current. Changes are appended by a Lua script that checks
the current revision is still the one the change was computed from and publishes the model's
name on `gateway:routing`, so the write and the notification are one atomic step. Watchers also
re-read every model after a second without messages, as a safety net for a missed notification
or a reconnect.
"""

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.control.store import HistoryEntry, ModelNames, OnChange, OnReload
from gateway.errors import Conflict, Unavailable

log = logging.getLogger(__name__)

HISTORY_KEY = "gateway:routing:{model}"
CHANNEL = "gateway:routing"
RELOAD_KEY = "gateway:reloads"  # how many reloads were announced: the config's generation
RELOAD_MESSAGE = "\x00reload"  # model names cannot start with a NUL
SAFETY_NET_S = 1.0
RECONNECT_S = 0.5

_APPEND = """
local last = redis.call('LINDEX', KEYS[1], -1)
local current = 0
if last then current = cjson.decode(last)['revision'] end
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class RedisStore:
    """A RoutingStore on Redis; every Redis failure surfaces as Unavailable (503)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._generation: int | None = None  # the config generation this process serves
        self._append = client.register_script(_APPEND)

    async def current(self, model: str) -> HistoryEntry | None:
        raw = await self._call(self._client.lindex(HISTORY_KEY.format(model=model), -1))
        return HistoryEntry.from_dict(orjson.loads(raw)) if raw else None

    async def history(self, model: str) -> list[HistoryEntry]:
        raw = await self._call(self._client.lrange(HISTORY_KEY.format(model=model), 0, -1))
        return [HistoryEntry.from_dict(orjson.loads(item)) for item in raw]

    async def append(self, model: str, entry: HistoryEntry, expected: int) -> None:
        args: list[int | bytes | str] = [
            expected,
            orjson.dumps(entry.to_dict()),
            CHANNEL,
            model,
        ]
        done = await self._call(self._append(keys=[HISTORY_KEY.format(model=model)], args=args))
        if not done:
            raise Conflict(f"routing of {model!r} changed meanwhile; try again")

    async def open(self) -> None:
        """Note the config generation now, before this process reads its models, so a reload
        announced while it starts is not missed."""
        self._generation = int(await self._call(self._client.get(RELOAD_KEY)) or 0)

    async def announce_reload(self) -> None:
        self._generation = int(await self._call(self._client.incr(RELOAD_KEY)))
        await self._call(self._client.publish(CHANNEL, RELOAD_MESSAGE))

    async def watch(self, models: ModelNames, on_change: OnChange, on_reload: OnReload) -> None:
        """Follow changes until cancelled, reconnecting after any Redis failure."""
        while True:
            try:
                await self._follow(models, on_change, on_reload)
            except (RedisError, OSError, Unavailable) as exc:
                log.warning("routing watch lost Redis, serving the last routing: %s", exc)
                await asyncio.sleep(RECONNECT_S)

    async def close(self) -> None:
        """The client belongs to the app's lifespan, which closes it."""

    async def _follow(self, models: ModelNames, on_change: OnChange, on_reload: OnReload) -> None:
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)
            if self._generation is None:  # Redis was down at start: serve what we have as current
                await self.open()
            # Catch up on what was missed while away, then follow; with no message for a
            # second, look again anyway.
            await self._catch_up(models, on_change, on_reload)
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=SAFETY_NET_S
                )
                name = message["data"].decode() if message else None
                if name is None:
                    await self._catch_up(models, on_change, on_reload)
                elif name == RELOAD_MESSAGE:
                    await self._reload_if_behind(on_reload)
                else:
                    await self._sync(lambda: [name], on_change)  # noqa: B023 (called at once)

    async def _catch_up(self, models: ModelNames, on_change: OnChange, on_reload: OnReload) -> None:
        await self._reload_if_behind(on_reload)
        await self._sync(models, on_change)

    async def _reload_if_behind(self, on_reload: OnReload) -> None:
        generation = int(await self._call(self._client.get(RELOAD_KEY)) or 0)
        if self._generation is not None and generation > self._generation:
            self._generation = generation  # set first: our own reload must not announce again
            await on_reload()

    async def _sync(self, models: ModelNames, on_change: OnChange) -> None:
        for model in list(models()):
            entry = await self.current(model)
            if entry is not None:
                on_change(model, entry)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the routing store (Redis) is unreachable: {exc}") from exc
