"""What each variant answered, kept for `feedback_ttl_s`, and the scores that feedback adds up.

README "Monitoring". Feedback (`POST /v2/models/{model}/feedback`) joins a true label or value
with the predictions kept under its request id: one per variant that answered it (the live or
canary variant, and every shadow). A joined prediction is removed, so the same feedback twice
scores once (the second is unmatched). Scores are sums (rows, correct rows, absolute and squared
errors) per variant: every worker and replica adds into the same ones, so the online metrics
(accuracy, MAE, RMSE) are exact over all of them.

- Embedded mode: kept in this process's memory, at most `feedback_max_predictions`, oldest
  dropped first; scores are this process's (lost at a restart).
- Redis: predictions in one hash per minute and model (expiring after the TTL), scores in a hash
  per model, both written in batches off the request path.
"""

import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # imported only with Redis: gateway.errors.redis_errors
    import redis.asyncio as aioredis

PREDICTIONS_KEY = "gateway:feedback:{model}:predictions:{minute}"
SCORES_KEY = "gateway:feedback:{model}:scores"
SCORES = ("rows", "correct", "absolute_error", "squared_error", "joined")
UNMATCHED = "unmatched"

Scores = dict[str, dict[str, float]]  # variant -> score name -> sum; "" -> {"unmatched": n}


class FeedbackStore(Protocol):
    async def keep(
        self, model: str, variant: str, request_ids: list[str], predictions: list[bytes]
    ) -> None:
        """Keep each request's predictions by `variant` (one float64 per row) for the TTL."""

    async def take(
        self, model: str, request_ids: list[str], variants: list[str]
    ) -> list[dict[str, bytes]]:
        """Per request id, the predictions kept for it by variant; they are removed."""

    async def add(self, model: str, scores: Scores) -> None: ...

    async def scores(self, model: str) -> Scores: ...


class MemoryFeedback:
    """Embedded mode: everything in this process (see the module docstring). A dict per model
    and variant maps each request id to its answer's predictions; a queue of (time, that dict,
    ids) per keep call lets expiry and the cap drop the oldest answers by id, without
    scanning. Nothing else is kept per answer: at the default cap the store is most of a
    worker's growth under load (docs/benchmarks.md, "Memory")."""

    def __init__(self, ttl_s: float, max_predictions: int) -> None:
        self.ttl_s = ttl_s
        self.max_predictions = max_predictions
        self._kept: dict[tuple[str, str], dict[str, bytes]] = {}  # (model, variant) -> id ->
        self._order: deque[tuple[float, dict[str, bytes], list[str]]] = deque()
        self._count = 0  # ids in _order (a reused request id is counted again)
        self._scores: dict[str, Scores] = {}

    async def keep(
        self, model: str, variant: str, request_ids: list[str], predictions: list[bytes]
    ) -> None:
        now = time.time()
        kept = self._kept.setdefault((model, variant), {})
        kept.update(zip(request_ids, predictions, strict=True))
        self._order.append((now, kept, request_ids))
        self._count += len(request_ids)
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Drop what is past the TTL, then the oldest while over the cap (a reused request id
        keeps its first place in the queue, so it may go early)."""
        order = self._order
        while order and (order[0][0] < now - self.ttl_s or self._count > self.max_predictions):
            _, kept, request_ids = order.popleft()
            self._count -= len(request_ids)
            for request_id in request_ids:
                kept.pop(request_id, None)

    async def take(
        self, model: str, request_ids: list[str], variants: list[str]
    ) -> list[dict[str, bytes]]:
        self._trim(time.time())  # what is left is within the TTL
        kept = [(variant, self._kept.get((model, variant), {})) for variant in variants]
        found = []
        for request_id in request_ids:
            answers = {}
            for variant, by_id in kept:
                prediction = by_id.pop(request_id, None)
                if prediction is not None:
                    answers[variant] = prediction
            found.append(answers)
        return found

    async def add(self, model: str, scores: Scores) -> None:
        totals = self._scores.setdefault(model, {})
        for variant, values in scores.items():
            total = totals.setdefault(variant, {})
            for name, value in values.items():
                total[name] = total.get(name, 0.0) + value

    async def scores(self, model: str) -> Scores:
        return {variant: dict(values) for variant, values in self._scores.get(model, {}).items()}


class RedisFeedback:
    """With Redis: shared by every worker and replica (see the module docstring)."""

    def __init__(self, client: "aioredis.Redis", ttl_s: float) -> None:
        self._client = client
        self.ttl_s = ttl_s

    async def keep(
        self, model: str, variant: str, request_ids: list[str], predictions: list[bytes]
    ) -> None:
        now = time.time()
        key = PREDICTIONS_KEY.format(model=model, minute=int(now // 60))
        stamp = b"%.3f\x1f" % now  # the TTL holds to the second, not to the hash's minute
        mapping = {
            f"{request_id}\x1f{variant}": stamp + value
            for request_id, value in zip(request_ids, predictions, strict=True)
        }
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
            pipe.expire(key, int(self.ttl_s) + 60)
            await pipe.execute()

    async def take(
        self, model: str, request_ids: list[str], variants: list[str]
    ) -> list[dict[str, bytes]]:
        now = time.time()
        newest = int(now // 60)
        minutes = range(newest, int((now - self.ttl_s) // 60) - 1, -1)
        fields = [
            f"{request_id}\x1f{variant}" for request_id in request_ids for variant in variants
        ]
        keys = [PREDICTIONS_KEY.format(model=model, minute=minute) for minute in minutes]
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            answers = await pipe.execute()
        found: dict[str, tuple[str, bytes]] = {}  # field -> (key, value), the newest minute first
        for key, values in zip(keys, answers, strict=True):
            for name, value in zip(fields, values, strict=True):
                if value is not None and name not in found:
                    stamp, _, prediction = value.partition(b"\x1f")
                    if now - float(stamp) <= self.ttl_s:
                        found[name] = (key, prediction)
        if found:
            async with self._client.pipeline(transaction=False) as pipe:
                for name, (key, _) in found.items():
                    pipe.hdel(key, name)
                await pipe.execute()
        return [
            {
                variant: found[name][1]
                for variant in variants
                if (name := f"{request_id}\x1f{variant}") in found
            }
            for request_id in request_ids
        ]

    async def add(self, model: str, scores: Scores) -> None:
        key = SCORES_KEY.format(model=model)
        async with self._client.pipeline(transaction=False) as pipe:
            for variant, values in scores.items():
                for name, value in values.items():
                    pipe.hincrbyfloat(key, f"{variant}\x1f{name}", value)
            await pipe.execute()

    async def scores(self, model: str) -> Scores:
        raw = await self._client.hgetall(SCORES_KEY.format(model=model))
        scores: Scores = {}
        for field, value in raw.items():
            text = field.decode() if isinstance(field, bytes) else field
            variant, _, name = text.partition("\x1f")
            scores.setdefault(variant, {})[name] = float(value)
        return scores
