"""Where shadow records are written (CONTRACT §5): a Redis stream or a JSON-lines file per model."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.shadow import Record, background_priority, yield_gil

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
        # Encoding and writing happen on a thread of their own, at background priority like the
        # shadow runs: on the event loop, a batch of a few hundred records stalled callers.
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="gateway-shadow-file", initializer=background_priority
        )

    async def write(self, records: list[tuple[str, Record]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._append, records)

    def _append(self, records: list[tuple[str, Record]]) -> None:
        by_model: dict[str, list[bytes]] = {}
        for model, record in records:
            by_model.setdefault(model, []).append(orjson.dumps(record) + b"\n")
            yield_gil()
        self._directory.mkdir(parents=True, exist_ok=True)
        for model, lines in by_model.items():
            with (self._directory / f"{model}.jsonl").open("ab") as file:
                file.write(b"".join(lines))

    async def close(self) -> None:
        """Every write closes its file; only the thread is left to stop."""
        self._thread.shutdown(wait=True)
