"""Redis Streams consumer: a consumer group, at-least-once, poison messages set aside.

Redis' own consumer-group recipe (redis.io, "Redis Streams" and the XREADGROUP, XAUTOCLAIM
pages), step by step:

- the group is created with `XGROUP CREATE input group 0|$ MKSTREAM` (`start: earliest|latest`);
  an existing group is kept as it is;
- a batch is read with `XREADGROUP GROUP group consumer COUNT count BLOCK 1000 STREAMS input >`
  (the consumer is `<host>-<pid>`, so every process is its own consumer in the group);
- its predictions and dead letters are written and the batch acknowledged in one MULTI/EXEC
  transaction (`XADD output`, `XADD dead_letter`, `XACK`): an acknowledged message always has
  its answer written, and a batch whose answer was not written stays pending;
- every `claim_idle_ms / 2`, `XAUTOCLAIM` takes the messages that some consumer (a dead
  process, or this one when Redis died while the batch's reply was on its way) has kept pending
  longer than `claim_idle_ms`, and answers them; one delivered more than `max_deliveries` times
  (XPENDING's delivery count) goes to the dead-letter stream unanswered, since answering it may
  be what kills its consumers;
- a Redis outage (connection refused or lost, a timeout) pauses the consumer, which tries again
  with a growing pause; a batch already answered keeps its records and is written once Redis
  answers, so nothing is answered twice unless it was claimed meanwhile (at-least-once). A Redis
  that comes back without the group (no persistence) gets the group again.
- a clean stop finishes and writes the batch in hand, then leaves the group
  (`XGROUP DELCONSUMER`) when it has nothing pending.
"""

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.streams.consumer import Outage, StreamConsumer
from gateway.streams.predict import Message, Record, dead_letter

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # how long one read waits for messages
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
Entry = tuple[bytes, dict[bytes, bytes] | None]


class RedisConsumer(StreamConsumer):
    source = "redis"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        url = self.config.redis_url or self.settings.redis_url
        assert url is not None  # the settings' validation made sure
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=BLOCK_MS / 1000 + 5.0, socket_connect_timeout=1.0
        )
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._has_group = False
        self._cursor = b"0-0"  # XAUTOCLAIM's: where the next scan of pending messages starts
        self._next_claim = time.monotonic() + self.config.claim_idle_ms / 1000
        self._outage = Outage(f"Redis of consumer {self.config.name!r}")

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self._step()
                self._outage.over()
            except DOWN as exc:
                await self._outage.wait(exc)
            except ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "ERR no such key")):
                    raise
                self._has_group = False  # Redis lost it (no persistence) or the stream went

    async def close(self) -> None:
        try:
            if self._has_group and not await self._pending_here():
                await self.client.xgroup_delconsumer(
                    self.config.input, self.config.group_name, self.consumer
                )
        except (*DOWN, ResponseError) as exc:
            log.info("consumer %s not removed from its group: %s", self.consumer, exc)
        await self.client.aclose()

    async def _step(self) -> None:
        await self.wait_ready()
        if not self._has_group:
            await self._create_group()
        if self.lag_due():
            await self._report_lag()
        entries = await self._claim() if time.monotonic() >= self._next_claim else []
        if not entries:
            entries = await self._read()
        if entries:  # in hand: answered and written even when stopping
            await self._handle(entries)

    async def _create_group(self) -> None:
        config = self.config
        start = "0" if config.start == "earliest" else "$"
        try:
            await self.client.xgroup_create(config.input, config.group_name, start, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):  # BUSYGROUP: it exists, as wanted
                raise
        self._has_group = True

    async def _read(self) -> list[Entry]:
        config = self.config
        reply: Any = await self.client.xreadgroup(
            config.group_name, self.consumer, {config.input: ">"}, config.count, BLOCK_MS
        )
        return list(reply[0][1]) if reply else []

    async def _claim(self) -> list[Entry]:
        """Messages pending longer than claim_idle_ms, now this consumer's; the poison ones
        (delivered too often) already dead-lettered and acknowledged."""
        config = self.config
        self._next_claim = time.monotonic() + config.claim_idle_ms / 2000
        self._cursor, claimed, *_ = await self.client.xautoclaim(
            config.input, config.group_name, self.consumer, config.claim_idle_ms,
            start_id=self._cursor, count=config.count,
        )  # fmt: skip
        entries = [(entry_id, fields) for entry_id, fields in claimed if entry_id is not None]
        if entries:
            log.info("consumer %s claimed %d pending messages", self.consumer, len(entries))
            return await self._set_poison_aside(entries)
        return []

    async def _set_poison_aside(self, entries: list[Entry]) -> list[Entry]:
        config = self.config
        pending = await self.client.xpending_range(
            config.input, config.group_name, min=entries[0][0], max=entries[-1][0],
            count=len(entries), consumername=self.consumer,
        )  # fmt: skip
        deliveries = {item["message_id"]: int(item["times_delivered"]) for item in pending}
        poison = [e for e in entries if deliveries.get(e[0], 0) > config.max_deliveries]
        if poison:
            records = [self._poison_record(entry, deliveries[entry[0]]) for entry in poison]
            await self._write([entry_id for entry_id, _ in poison], records)
        return [e for e in entries if deliveries.get(e[0], 0) <= config.max_deliveries]

    def _poison_record(self, entry: Entry, deliveries: int) -> Record:
        error = (
            f"delivered {deliveries} times without an answer (max_deliveries "
            f"{self.config.max_deliveries}): answering it may crash or stall the consumer"
        )
        return dead_letter(_message(entry), self.config.model, 500, error, None)

    async def _handle(self, entries: Sequence[Entry]) -> None:
        """Answer a batch, then write it; a Redis outage meanwhile waits, records kept."""
        self.busy = True
        try:
            records = await self.answer_all([_message(entry) for entry in entries])
            while True:
                try:
                    await self._write([entry_id for entry_id, _ in entries], records)
                    return
                except DOWN as exc:
                    if self.stopping:
                        raise
                    await self._outage.wait(exc)
        finally:
            self.busy = False

    async def _write(self, ids: Sequence[bytes], records: Sequence[Record]) -> None:
        config = self.config
        maxlen = config.output_maxlen
        async with self.client.pipeline(transaction=True) as pipe:
            for record in records:
                stream = config.dead_letter_stream if record.dead_letter else config.output
                fields = {"body": record.body, **record.headers}
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.xack(config.input, config.group_name, *ids)
            await pipe.execute()

    async def _report_lag(self) -> None:
        try:
            groups = await self.client.xinfo_groups(self.config.input)
        except ResponseError as exc:  # NOPERM, say: consuming goes on
            self.lag_unknown(exc)
            return
        for group in groups:
            if group["name"].decode() == self.config.group_name:
                lag = group.get("lag")
                self.set_lag(None if lag is None else lag + group["pending"])

    async def _pending_here(self) -> bool:
        config = self.config
        mine = await self.client.xpending_range(
            config.input, config.group_name, min="-", max="+", count=1,
            consumername=self.consumer,
        )  # fmt: skip
        return bool(mine)


def _message(entry: Entry) -> Message:
    """A stream entry as a Message: its `body` field is the body, the others its headers."""
    entry_id, fields = entry
    headers = {name.lower(): value for name, value in (fields or {}).items() if name != b"body"}
    body = (fields or {}).get(b"body")
    return Message(entry_id.decode(), body, headers)
