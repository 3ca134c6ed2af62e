"""The consumers of one gateway process, run as tasks of its event loop (README "Event streams").

`gateway serve` runs the consumers whose `serve` is true, beside the HTTP data plane; `gateway
consume` runs those it is given, with only health and /metrics over HTTP. Either way they answer
through the process's InferenceService, so stream traffic shares routing, shadows, metrics and
the monitor with HTTP requests.
"""

import asyncio
import logging
from collections.abc import Sequence

from gateway.access_log import AccessLog
from gateway.metrics import Metrics
from gateway.service import InferenceService
from gateway.settings import Settings
from gateway.streams.config import ConsumerConfig
from gateway.streams.consumer import OUTAGE_PAUSE_S, ConsumerMetrics, StreamConsumer

log = logging.getLogger(__name__)


class ConsumerTasks:
    """Starts the configured consumers, keeps them running, and stops them cleanly."""

    def __init__(
        self,
        configs: Sequence[ConsumerConfig],
        service: InferenceService,
        metrics: Metrics,
        settings: Settings,
        access_log: AccessLog | None = None,
    ) -> None:
        """ConfigError when a consumer cannot be made (Kafka without confluent-kafka)."""
        self.consumers: list[StreamConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        if not configs:
            return
        counters = ConsumerMetrics(metrics)
        for config in configs:
            kind = _redis_consumer() if config.source == "redis" else _kafka_consumer()
            consumer = kind(config, service, counters, settings)
            consumer.access_log = access_log
            self.consumers.append(consumer)

    def start(self) -> None:
        for consumer in self.consumers:
            name = f"consumer {consumer.config.name}"
            self._tasks.append(asyncio.create_task(_keep_running(consumer), name=name))
            log.info(
                "%s: %s %s -> %s (group %s)", name, consumer.source, consumer.config.input,
                consumer.config.output, consumer.config.group_name,
            )  # fmt: skip

    async def stop(self, timeout: float) -> None:
        """Stop reading; let each batch in hand be answered, written and acknowledged for up
        to `timeout` seconds; then close the connections."""
        for consumer, task in zip(self.consumers, self._tasks, strict=True):
            consumer.stopping = True
            if not consumer.busy:  # waiting for messages: nothing in hand to finish
                task.cancel()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                log.warning("%s: its batch was not finished in time", task.get_name())
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in self.consumers:
            try:
                await consumer.close()
            except Exception:  # the rest of the gateway still has to stop
                log.exception("consumer %s did not close cleanly", consumer.config.name)


async def _keep_running(consumer: StreamConsumer) -> None:
    """Run the consumer; an unexpected error is logged and the consumer started again."""
    while not consumer.stopping:
        try:
            await consumer.run()
        except Exception:
            log.exception("consumer %s failed; starting it again", consumer.config.name)
            await asyncio.sleep(OUTAGE_PAUSE_S[1])


def _kafka_consumer() -> type[StreamConsumer]:
    """Imported only when a Kafka consumer is configured: the extra `kafka` is optional."""
    from gateway.streams.kafka_source import KafkaConsumer

    return KafkaConsumer


def _redis_consumer() -> type[StreamConsumer]:
    """Imported only when a Redis consumer is configured: redis adds about 22 MB to a worker
    (gateway.errors.redis_errors)."""
    from gateway.streams.redis_source import RedisConsumer

    return RedisConsumer
