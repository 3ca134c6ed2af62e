"""Kafka consumer, through confluent-kafka (librdkafka), the optional extra `kafka`.

Threads. confluent-kafka is a blocking client: every call to it runs on one thread of this
consumer's own (a one-thread executor), and the event loop awaits it. `consume` waits there in
librdkafka for up to a second, so the loop never waits for a broker and keeps answering HTTP
and the other consumers. Polling with `poll(0)` from the loop instead would need a timer loop
that either adds latency (a pause between polls) or burns a core (no pause); a thread waiting in
librdkafka costs neither. One thread, not a pool: the Consumer and the Producer are never called
from two threads at once.

At-least-once, as Kafka's consumer groups give it (Kafka docs, "Consumer groups" and "Message
delivery semantics"):

- `group.id` is the group, `enable.auto.commit` false, `auto.offset.reset` is `start`; the
  consumer subscribes to `input`, so the group's processes share its partitions;
- a batch is `consume(count, 1 s)`; its messages are answered concurrently; each record is
  produced to `output` or `dead_letter` with the request's key (predictions land in partitions
  as requests did), its body as the value and its headers as Kafka headers; `flush` waits until
  every one is delivered (acks=all, and an idempotent producer unless `kafka` says otherwise);
- only then are the batch's offsets committed, synchronously. When a record is not delivered,
  nothing is committed and the partitions are rewound (seek) to the batch's first offsets, so
  the batch is read and answered again;
- lag: over every partition of `input`, the high watermark minus the group's committed offset
  (with nothing committed yet: minus the low watermark when `start` is earliest, else 0),
  asked of the brokers by an AdminClient in one request each (ListOffsets, OffsetFetch): its
  futures are awaited on the loop, so the consumer's thread never waits for them (the
  Consumer's own `get_watermark_offsets` asks partition by partition, 0.5 s each against
  librdkafka's mock cluster).

The client is made when the gateway starts; without confluent-kafka installed that is a
ConfigError naming the extra.
"""

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.errors import ConfigError
from gateway.streams.consumer import Outage, StreamConsumer
from gateway.streams.predict import Message, Record

log = logging.getLogger(__name__)

CONSUME_TIMEOUT_S = 1.0  # how long one read waits for messages
REQUEST_TIMEOUT_S = 10.0  # offsets and metadata asked of the brokers
T = TypeVar("T")


def kafka_module() -> Any:
    """confluent_kafka, imported on first use; ConfigError when the extra is not installed."""
    try:
        import confluent_kafka
        import confluent_kafka.admin  # the lag's AdminClient and OffsetSpec
    except ImportError:
        raise ConfigError(
            "consumers with source kafka need confluent-kafka: pip install 'model-gateway[kafka]'"
        ) from None
    return confluent_kafka


class KafkaConsumer(StreamConsumer):
    source = "kafka"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kafka = self.kafka = kafka_module()
        config = self.config
        common = {
            **config.kafka,
            "bootstrap.servers": config.bootstrap_servers,
            "logger": logging.getLogger(f"{__name__}.{config.name}"),
        }
        self.consumer = kafka.Consumer({
            **common, "group.id": config.group_name, "enable.auto.commit": False,
            "auto.offset.reset": config.start,
        })  # fmt: skip
        self.producer = kafka.Producer({"enable.idempotence": True, **common})
        self.admin = kafka.admin.AdminClient(common)  # offsets for the lag, without blocking
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{config.name}")
        self._outage = Outage(f"Kafka of consumer {config.name!r}")

    async def run(self) -> None:
        await self._call(self.consumer.subscribe, [self.config.input])
        while not self.stopping:
            try:
                await self._step()
                self._outage.over()
            except self.kafka.KafkaException as exc:
                await self._outage.wait(exc)

    async def close(self) -> None:
        await self._call(self.consumer.close)  # leaves the group: its partitions move at once
        await self._call(self.producer.flush, REQUEST_TIMEOUT_S)
        self._thread.shutdown(wait=False)

    async def _step(self) -> None:
        await self.wait_ready()
        if self.lag_due():
            try:
                self.set_lag(await self._lag())
            except self.kafka.KafkaException as exc:  # an ACL, say: consuming goes on
                self.lag_unknown(exc)
        consumed = await self._call(self.consumer.consume, self.config.count, CONSUME_TIMEOUT_S)
        batch = [message for message in consumed if self._usable(message)]
        if batch:
            await self._handle(batch)

    def _usable(self, message: Any) -> bool:
        error = message.error()
        if error is not None:
            log.warning("consumer %s: %s", self.config.name, error)
        return error is None

    async def _handle(self, batch: Sequence[Any]) -> None:
        self.busy = True
        try:
            records = await self.answer_all([_message(message) for message in batch])
            failures = await self._call(self._produce, batch, records)
            if failures:
                log.error(
                    "consumer %s: %d answers not delivered (%s); reading the batch again",
                    self.config.name, len(failures), failures[0],
                )  # fmt: skip
                await self._call(self._rewind, batch)
                return
            offsets = _next_offsets(self.kafka, batch)
            await self._call(self.consumer.commit, offsets=offsets, asynchronous=False)
        finally:
            self.busy = False

    def _produce(self, batch: Sequence[Any], records: Sequence[Record]) -> list[str]:
        """Produce every record and wait until each is delivered (on the consumer's thread);
        the delivery errors."""
        config, failures = self.config, []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for message, record in zip(batch, records, strict=True):
            topic = config.dead_letter_stream if record.dead_letter else config.output
            produce = functools.partial(
                self.producer.produce, topic, record.body, message.key(),
                headers=list(record.headers.items()), on_delivery=delivered,
            )  # fmt: skip
            while not _queued(produce):
                self.producer.poll(0.1)  # the local queue is full: let deliveries drain it
        while self.producer.flush(CONSUME_TIMEOUT_S) and not self.stopping:
            pass
        waiting = len(self.producer)
        return failures + ([f"{waiting} still waiting at shutdown"] if waiting else [])

    def _rewind(self, batch: Sequence[Any]) -> None:
        first: dict[int, int] = {}
        for message in batch:
            first.setdefault(message.partition(), message.offset())
        for partition, offset in first.items():
            try:
                self.consumer.seek(self.kafka.TopicPartition(self.config.input, partition, offset))
            except self.kafka.KafkaException as exc:  # no longer assigned: its owner reads it
                log.info("consumer %s: partition %d not rewound: %s", self.config.name,
                         partition, exc)  # fmt: skip

    async def _lag(self) -> int:
        """The group's lag over every partition of the input topic (module docstring)."""
        kafka, topic = self.kafka, self.config.input
        metadata = await self._call(self.consumer.list_topics, topic, timeout=REQUEST_TIMEOUT_S)
        partitions = [kafka.TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        if not partitions:
            return 0
        done = await self._committed(partitions)
        ends = await self._offsets(partitions, "latest")
        start = "earliest" if self.config.start == "earliest" else "latest"
        starts = await self._offsets(
            [tp for tp in partitions if done.get(tp.partition, -1) < 0], start
        )
        return sum(max(0, end - max(done.get(p, -1), starts.get(p, 0))) for p, end in ends.items())

    async def _committed(self, partitions: list[Any]) -> dict[int, int]:
        """The group's committed offset of each partition (negative: none yet)."""
        group = self.config.group_name
        request = self.kafka.ConsumerGroupTopicPartitions(group, partitions)
        futures = self.admin.list_consumer_group_offsets(
            [request], request_timeout=REQUEST_TIMEOUT_S
        )
        result = await asyncio.wrap_future(futures[group])
        return {tp.partition: tp.offset for tp in result.topic_partitions}

    async def _offsets(self, partitions: list[Any], which: str) -> dict[int, int]:
        """The earliest or latest (high watermark) offset of each partition, in one request."""
        if not partitions:
            return {}
        spec = getattr(self.kafka.admin.OffsetSpec, which)()
        futures = self.admin.list_offsets(
            {tp: spec for tp in partitions}, request_timeout=REQUEST_TIMEOUT_S
        )
        return {tp.partition: (await asyncio.wrap_future(f)).offset for tp, f in futures.items()}

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)


def _queued(produce: Callable[[], None]) -> bool:
    try:
        produce()
    except BufferError:
        return False
    return True


def _next_offsets(kafka: Any, batch: Sequence[Any]) -> list[Any]:
    """The offsets to commit after `batch`: its last offset + 1 in each partition (Kafka's
    committed offset is the next message to read)."""
    last: dict[tuple[str, int], int] = {}
    for message in batch:
        key = (message.topic(), message.partition())
        last[key] = max(last.get(key, -1), message.offset())
    return [kafka.TopicPartition(t, p, offset + 1) for (t, p), offset in last.items()]


def _message(message: Any) -> Message:
    headers = {name.lower().encode(): value or b"" for name, value in message.headers() or ()}
    source = f"{message.topic()}/{message.partition()}/{message.offset()}"
    return Message(source, message.value(), headers)
