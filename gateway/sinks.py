"""Where shadow records are written (CONTRACT §5): a Redis stream or a JSON-lines file per model."""

import asyncio
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.shadow import Record

STREAM_KEY = "gateway:shadow:{model}"


class RedisStreamSink:
    """One capped stream per model, written with pipelined `XADD ... MAXLEN ~`."""

    def __init__(self, client: aioredis.Redis, maxlen: int) -> None:
        self._client = client
        self._maxlen = maxlen

    async def write(self, records: list[tuple[str, Record]]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for model, record in records:
                pipe.xadd(
                    STREAM_KEY.format(model=model),
                    record,  # type: ignore[arg-type]
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()

    async def close(self) -> None:
        """The client belongs to the app's lifespan, which closes it."""


class JsonLinesSink:
    """An append-only file per model under `data_dir/shadow/`, for embedded mode."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    async def write(self, records: list[tuple[str, Record]]) -> None:
        await asyncio.to_thread(self._append, records)

    def _append(self, records: list[tuple[str, Record]]) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        by_model: dict[str, list[bytes]] = {}
        for model, record in records:
            by_model.setdefault(model, []).append(orjson.dumps(record) + b"\n")
        for model, lines in by_model.items():
            with (self._directory / f"{model}.jsonl").open("ab") as file:
                file.write(b"".join(lines))

    async def close(self) -> None:
        """Every write closes its file; nothing is held open."""
