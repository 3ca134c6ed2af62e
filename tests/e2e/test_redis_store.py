"""The Redis routing store with several control planes at once, as workers and replicas run it."""

import asyncio

import pytest
import redis.asyncio as aioredis
from support import RedisServer

from gateway.control import ControlPlane, RedisStore
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
