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
        # Encode here, and leave the thread only the file calls, which release the GIL: a thread
        # running Python holds the GIL when a model run on the event loop wants it back, and
        # that wait (up to the 5 ms switch interval) landed on callers' requests.
        by_model: dict[str, list[bytes]] = {}
        for model, record in records:
            by_model.setdefault(model, []).append(orjson.dumps(record) + b"\n")
        await asyncio.to_thread(self._append, {m: b"".join(lines) for m, lines in by_model.items()})

    def _append(self, chunks: dict[str, bytes]) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        for model, chunk in chunks.items():
            with (self._directory / f"{model}.jsonl").open("ab") as file:
                file.write(chunk)

    async def close(self) -> None:
        """Every write closes its file; nothing is held open."""
