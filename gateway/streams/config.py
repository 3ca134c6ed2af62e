"""The `consumers:` section of the settings: which streams to read, and where answers go.

README "Event streams". Validated with the rest of the settings: a consumer names a model the
file serves, a Redis consumer has a Redis to read (its own `redis_url` or the gateway's), a
Kafka consumer has `bootstrap_servers`, and names are unique.
"""

from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.config_types import RedisUrl
from gateway.errors import ConfigError

ConsumerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
# Kafka topic names: at most 249 of [A-Za-z0-9._-] (Kafka's Topic.validate); Redis keys take
# anything, the same rule keeps a config portable between the two.
StreamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=249)]
KafkaValue = str | int | float | bool


class ConsumerConfig(BaseModel):
    """One consumer: reads OIP v2 inference requests from `input`, writes each prediction to
    `output` and each message it cannot answer to `dead_letter` (README "Event streams")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ConsumerName = Field(description="Names the consumer (`gateway consume --consumer`).")
    source: Literal["redis", "kafka"] = Field(
        default="redis", description="redis: Redis Streams; kafka: Kafka (extra `kafka`)."
    )
    model: str = Field(description="The model that answers, routed like HTTP requests to it.")
    input: StreamName = Field(description="Stream key (Redis) or topic (Kafka) of requests.")
    output: StreamName = Field(description="Stream key or topic the predictions go to.")
    dead_letter: StreamName | None = Field(
        default=None,
        description="Stream key or topic of the messages that cannot be answered, with their "
        "error; default `<input>.dead-letter`.",
    )
    group: ConsumerName | None = Field(
        default=None,
        description="Consumer group (Redis XGROUP, Kafka group.id); default the consumer's "
        "name. Every process that runs the consumer joins it and shares the messages.",
    )
    start: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a new group starts: the stream's first message or its next one "
        "(Kafka's auto.offset.reset).",
    )
    count: int = Field(
        default=32,
        strict=True,
        ge=1,
        le=10_000,
        description="Messages read at once and answered concurrently (XREADGROUP COUNT, "
        "Kafka consume's num_messages); the next batch is read when this one is written.",
    )
    serve: bool = Field(
        default=True,
        description="gateway serve runs this consumer too; false: only gateway consume.",
    )
    output_maxlen: int | None = Field(
        default=None,
        strict=True,
        gt=0,
        description="Redis: cap of the output and dead-letter streams (XADD MAXLEN ~); "
        "null: uncapped.",
    )
    redis_url: RedisUrl = Field(
        default=None,
        description="Redis: redis://host:port/db of the streams; default the gateway's redis_url.",
    )
    claim_idle_ms: int = Field(
        default=60_000,
        strict=True,
        gt=0,
        description="Redis: messages delivered to a consumer and not acknowledged for this "
        "long are claimed from it (XAUTOCLAIM): its process died. Keep it above "
        "request_timeout_s.",
    )
    max_deliveries: int = Field(
        default=5,
        strict=True,
        ge=1,
        description="Redis: a claimed message delivered more often than this goes to the "
        "dead-letter stream unanswered (it may crash or stall the consumer).",
    )
    bootstrap_servers: str | None = Field(
        default=None, description="Kafka: host:port,... of the brokers (bootstrap.servers)."
    )
    kafka: dict[str, KafkaValue] = Field(
        default_factory=dict,
        description="Kafka: more librdkafka properties for the consumer and producer "
        "(security.protocol, sasl.*, ...); the gateway sets group.id, bootstrap.servers, "
        "auto.offset.reset and enable.auto.commit itself.",
    )

    @model_validator(mode="after")
    def _source_fields(self) -> Self:
        redis_only = ("redis_url", "output_maxlen")
        if self.source == "kafka":
            if not self.bootstrap_servers:
                raise ValueError("source kafka needs bootstrap_servers")
            given = [name for name in redis_only if getattr(self, name) is not None]
        else:
            given = [name for name in ("bootstrap_servers",) if getattr(self, name)]
            given += ["kafka"] if self.kafka else []
        if given:
            raise ValueError(f"{', '.join(given)}: not for source {self.source}")
        if len({self.input, self.output, self.dead_letter_stream}) < 3:
            raise ValueError("input, output and dead_letter must be three different streams")
        return self

    @property
    def dead_letter_stream(self) -> str:
        return self.dead_letter or f"{self.input}.dead-letter"

    @property
    def group_name(self) -> str:
        return self.group or self.name


def check_consumers(
    consumers: Sequence[ConsumerConfig], models: Collection[str], redis_url: str | None
) -> None:
    """Raise ValueError naming the consumer when the settings cannot run it."""
    seen: set[str] = set()
    for consumer in consumers:
        where = f"consumer {consumer.name!r}"
        if consumer.name in seen:
            raise ValueError(f"{where} is configured twice")
        seen.add(consumer.name)
        if consumer.model not in models:
            raise ValueError(
                f"{where}: model {consumer.model!r} is not served "
                f"(known: {', '.join(sorted(models))})"
            )
        if consumer.source == "redis" and not (consumer.redis_url or redis_url):
            raise ValueError(f"{where}: source redis needs redis_url, its own or the gateway's")


def select_consumers(
    consumers: Iterable[ConsumerConfig], names: Collection[str] | None
) -> list[ConsumerConfig]:
    """The consumers to run: with None, those `gateway serve` runs (`serve: true`); else
    those named (`gateway consume --consumer NAME`), or all of them when none is named.
    ConfigError for a name the settings do not have."""
    consumers = list(consumers)
    if names is None:
        return [consumer for consumer in consumers if consumer.serve]
    known = {consumer.name for consumer in consumers}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(
            f"no consumer named {', '.join(map(repr, unknown))} in the settings "
            f"(configured: {', '.join(sorted(known)) or 'none'})"
        )
    return [consumer for consumer in consumers if not names or consumer.name in names]
