"""Where shadow records are written (README): a Redis stream or a JSON-lines file per model.

Both sinks encode and write on a thread of their own at background priority, like the shadow
runs: on the event loop, encoding a batch of a few hundred records (JSON, or Redis commands)
stalled every caller for milliseconds. They yield the GIL between short stretches, so a woken
event loop does not wait for a whole batch.
"""

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from gateway.shadow import Record, background_priority, yield_gil

STREAM_KEY = "gateway:shadow:{model}"
# XADDs per pipeline: building and packing one record's command is ~20 µs of Python holding the
# GIL, and a woken event loop may have to wait for a whole chunk (the socket I/O lets go of it).
REDIS_CHUNK = 5


class _BackgroundSink(ABC):
    """Runs `_append` for each batch on one background-priority thread."""

    def __init__(self, name: str) -> None:
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix=f"gateway-shadow-{name}", initializer=background_priority
        )

    async def write(self, records: list[tuple[str, Record]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._append, records)

    @abstractmethod
    def _append(self, records: list[tuple[str, Record]]) -> None:
        """Encode and write one batch (on the sink's thread); raise if it was not written."""

    async def close(self) -> None:
        self._thread.shutdown(wait=True)


class RedisStreamSink(_BackgroundSink):
    """One capped stream per model, written with pipelined `XADD ... MAXLEN ~`.

    A failed batch is retried whole, so an outage in the middle of one may log its first chunks
    twice (each record has its `request_id`); none is lost while the buffer holds it.
    """

    def __init__(self, url: str, maxlen: int) -> None:
        import redis  # only with Redis: it adds about 22 MB to a worker (gateway.errors)

        super().__init__("redis")
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self._maxlen = maxlen

    def _append(self, records: list[tuple[str, Record]]) -> None:
        for start in range(0, len(records), REDIS_CHUNK):
            with self._client.pipeline(transaction=False) as pipe:
                for model, record in records[start : start + REDIS_CHUNK]:
                    pipe.xadd(
                        STREAM_KEY.format(model=model),
                        record,  # type: ignore[arg-type]
                        maxlen=self._maxlen,
                        approximate=True,
                    )
                pipe.execute()  # waits for Redis without the GIL

    async def close(self) -> None:
        await super().close()
        self._client.close()


class JsonLinesSink(_BackgroundSink):
    """An append-only file per model under `data_dir/shadow/`, for embedded mode."""

    def __init__(self, directory: Path) -> None:
        super().__init__("file")
        self._directory = directory

    def _append(self, records: list[tuple[str, Record]]) -> None:
        by_model: dict[str, list[bytes]] = {}
        for model, record in records:
            by_model.setdefault(model, []).append(orjson.dumps(record) + b"\n")
            yield_gil()
        self._directory.mkdir(parents=True, exist_ok=True)
        for model, lines in by_model.items():
            with (self._directory / f"{model}.jsonl").open("ab") as file:
                file.write(b"".join(lines))
