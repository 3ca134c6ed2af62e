"""What every stream consumer shares: answering a batch, counting it, waiting out an outage.

A consumer reads a batch of at most `count` messages, answers them concurrently through the
InferenceService (gateway.streams.predict), writes every prediction and dead letter, and only
then acknowledges the batch (at-least-once: a message is acknowledged after its answer is
written, so a crash in between answers it again; Redis Streams and Kafka consumer-group
semantics). Its metrics, summed over workers like the others:

- `gateway_consumer_messages_total{source,stream,group,outcome}`: messages answered
  (`predicted`) or sent to the dead-letter stream (`dead_letter`);
- `gateway_consumer_lag{source,stream,group}`: messages of the stream the group has not
  acknowledged yet (Redis: XINFO GROUPS `lag` + `pending`; Kafka: the high watermark minus the
  committed offset, over every partition), read every `LAG_INTERVAL_S`; NaN when the source
  cannot tell (Redis after entries were deleted from the middle of the stream).
"""

import abc
import asyncio
import logging
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.access_log import AccessLog
from gateway.metrics import Metrics
from gateway.service import InferenceService
from gateway.settings import Settings
from gateway.streams.config import ConsumerConfig
from gateway.streams.predict import Message, Record, answer

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 1.0
# The first pause before trying an unreachable source again, and the longest.
OUTAGE_PAUSE_S = (0.1, 2.0)
Labels = tuple[str, str, str]  # source, stream, group


class ConsumerMetrics:
    """The consumers' counters (shared by workers) and lag gauges (each worker reads its own)."""

    def __init__(self, metrics: Metrics) -> None:
        self.messages = metrics.add_counter(
            "gateway_consumer_messages",
            "Stream messages answered: predicted, or sent to the dead-letter stream.",
            ["source", "stream", "group", "outcome"],
        )
        self.lag: dict[Labels, float] = {}
        metrics.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "gateway_consumer_lag",
            "Messages of the stream that the consumer group has not acknowledged yet.",
            labels=["source", "stream", "group"],
        )
        for labels, value in self.lag.items():
            gauge.add_metric(list(labels), value)
        yield gauge


class Outage:
    """Pauses between tries while a source is unreachable; logs when it goes and comes back."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.since: float | None = None
        self._pause = OUTAGE_PAUSE_S[0]

    async def wait(self, error: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s is unreachable, trying again until it answers: %s", self.where, error)
        await asyncio.sleep(self._pause)
        self._pause = min(self._pause * 2, OUTAGE_PAUSE_S[1])

    def over(self) -> None:
        if self.since is not None:
            log.info("%s answers again after %.1f s", self.where, time.monotonic() - self.since)
        self.since, self._pause = None, OUTAGE_PAUSE_S[0]


class StreamConsumer(abc.ABC):
    """One configured consumer; subclasses read and write their source (`run`)."""

    source = ""

    def __init__(
        self,
        config: ConsumerConfig,
        service: InferenceService,
        metrics: ConsumerMetrics,
        settings: Settings,
    ) -> None:
        self.config = config
        self.service = service
        self.metrics = metrics
        self.settings = settings
        self.access_log: AccessLog | None = None  # the gateway's, when it keeps one
        self.stopping = False
        self.busy = False  # a batch is being answered or written: stop lets it finish
        self.labels: Labels = (self.source, config.input, config.group_name)
        self._next_lag = 0.0

    @abc.abstractmethod
    async def run(self) -> None:
        """Read, answer, write and acknowledge batches until `stopping`; wait out outages."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the source's connections once `run` has ended."""

    async def answer_all(self, messages: Sequence[Message]) -> list[Record]:
        """Every message's record, in order, answered concurrently; counted."""
        config, settings = self.config, self.settings
        records = await asyncio.gather(
            *(
                answer(
                    self.service,
                    config.model,
                    message,
                    settings.max_body_bytes,
                    settings.request_timeout_s,
                    self.access_log,
                )
                for message in messages
            )
        )
        for record in records:
            outcome = "dead_letter" if record.dead_letter else "predicted"
            self.metrics.messages.inc((*self.labels, outcome))
        return records

    async def wait_ready(self) -> None:
        """Read nothing while the service is not ready (models loading, routing unknown)."""
        while not self.service.ready and not self.stopping:
            await asyncio.sleep(0.05)

    def lag_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_lag:
            return False
        self._next_lag = now + LAG_INTERVAL_S
        return True

    def set_lag(self, lag: float | None) -> None:
        self.metrics.lag[self.labels] = math.nan if lag is None else float(lag)

    def lag_unknown(self, error: Exception) -> None:
        """The lag could not be read (NaN): said once, and the consumer goes on consuming."""
        if not math.isnan(self.metrics.lag.get(self.labels, 0.0)):
            log.warning("consumer %s cannot read its lag: %s", self.config.name, error)
        self.set_lag(None)
