"""The Redis routing store with several control planes at once, as workers and replicas run it."""

import asyncio

import pytest
import redis.asyncio as aioredis
from support import RedisServer

from gateway.control import ControlPlane
from gateway.control.redis_store import RedisStore
from gateway.routing import RoutingState, RoutingTable

pytestmark = pytest.mark.redis

VARIANTS = {"blue", "green"}


def plane(client: aioredis.Redis) -> ControlPlane:
    return ControlPlane(RedisStore(client), RoutingTable({}), lambda model: VARIANTS)


async def test_workers_starting_together_share_one_history(redis_server: RedisServer) -> None:
    """Eight workers adopting routing at the same moment agree on revision 1 and one history entry."""
    client = aioredis.Redis.from_url(redis_server.url)
    planes = [plane(client) for _ in range(8)]
    initial = {"iris": RoutingState("blue")}
    await asyncio.gather(*(p.start(initial) for p in planes))
    assert {p.table.get("iris") for p in planes} == {RoutingState("blue", revision=1)}
    assert len(await planes[0].history("iris")) == 1
    await client.aclose()


async def test_concurrent_changes_never_lose_a_revision(redis_server: RedisServer) -> None:
    """Changes racing from two workers either land as the next revision or are refused (409)."""
    client = aioredis.Redis.from_url(redis_server.url)
    first, second = plane(client), plane(client)
    initial = {"iris": RoutingState("blue")}
    await first.start(initial)
    await second.start(initial)
    results = await asyncio.gather(
        *(
            p.set_canary("iris", "green", w / 10)
            for p, w in zip([first, second] * 5, range(10), strict=True)
        ),
        return_exceptions=True,
    )
    landed = [r for r in results if isinstance(r, RoutingState)]
    history = await first.history("iris")
    assert [h.revision for h in history] == list(range(1, len(landed) + 2))
    assert {h.state for h in history[1:]} == set(landed)
    await client.aclose()


async def test_a_reload_announced_before_a_worker_listens_still_reaches_it(
    redis_server: RedisServer,
) -> None:
    """A worker that was starting (not yet subscribed) when a reload was announced catches up;
    the announcing worker does not reload a second time."""
    client = aioredis.Redis.from_url(redis_server.url)
    announcer, late = RedisStore(client), RedisStore(client)
    await announcer.open()
    await late.open()
    await announcer.announce_reload()  # nobody is listening yet
    reloads = {"announcer": 0, "late": 0}

    def counter(name: str):  # type: ignore[no-untyped-def]
        async def on_reload() -> None:
            reloads[name] += 1

        return on_reload

    watches = [
        asyncio.create_task(store.watch(lambda: [], lambda m, s: None, counter(name)))
        for name, store in (("announcer", announcer), ("late", late))
    ]
    async with asyncio.timeout(10):
        while reloads["late"] == 0:
            await asyncio.sleep(0.01)
    await announcer.announce_reload()  # a second one, while both listen
    async with asyncio.timeout(10):
        while reloads["late"] < 2:
            await asyncio.sleep(0.01)
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    assert reloads == {"announcer": 0, "late": 2}
    await client.aclose()
