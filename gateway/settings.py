"""The configuration: one frozen pydantic model loaded from YAML, with environment overrides.

README "Configuration". Only the entry point and `create_app` read it. Relative paths in the
file are resolved against the folder of the config file, so `gateway serve --config
deploy/gw.yaml` works from any working directory.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config_types import RedisUrl
from gateway.errors import ConfigError
from gateway.rollout.plan import RolloutPlan
from gateway.sources.uri import is_model_uri, parse_model_uri
from gateway.streams.config import ConsumerConfig, check_consumers

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

DEFAULT_CONFIG = "gateway.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Count = Annotated[int, Field(strict=True, ge=0)]


class VariantConfig(_Frozen):
    """One ONNX file that can answer for a model, with its queue (README "Batching and
    admission"; the batching fields carry Triton's names and meaning)."""

    path: str = Field(
        description="Path of the .onnx file, relative to model_repository; or an MLflow "
        'registry URI, models:/NAME@ALIAS or models:/NAME/VERSION (README "Sources and sinks").'
    )
    on_alias_change: Literal["reload", "rollout"] = Field(
        default="reload",
        description="models:/NAME@ALIAS only: when the alias moves to another version, reload "
        "the variant in place, or load it and start the model's rollout plan of it.",
    )
    max_batch_size: Count = Field(
        default=0,
        le=65536,
        description="Dynamic batching: rows one run may gather from queued requests whose first "
        "dimension is the batch; 0 turns batching off.",
    )
    max_queue_delay_us: Count = Field(
        default=100,
        le=10_000_000,
        description="How long, in microseconds, a request may wait for others to join its "
        "batch; it waits only while recent batches were larger than what is queued.",
    )
    preferred_batch_size: tuple[Annotated[int, Field(strict=True, ge=1)], ...] = Field(
        default=(),
        description="Batch sizes (rows) run as soon as they are reached; the largest one caps "
        "a batch formed while requests wait.",
    )
    max_queue_size: Count = Field(
        default=0,
        description="Requests waiting for this variant at most; more answer 429 with "
        "Retry-After. 0: no bound (deadlines still apply).",
    )

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Self:
        for size in self.preferred_batch_size:
            if size > self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_size {size} is larger than max_batch_size "
                    f"{self.max_batch_size}"
                )
        return self

    @field_validator("path")
    @classmethod
    def _registry_uri(cls, value: str) -> str:
        return str(parse_model_uri(value)) if is_model_uri(value) else value

    @model_validator(mode="after")
    def _alias_change_of_alias(self) -> Self:
        alias = is_model_uri(self.path) and parse_model_uri(self.path).alias
        if "on_alias_change" in self.model_fields_set and not alias:
            raise ValueError("on_alias_change applies to models:/NAME@ALIAS paths only")
        return self


class CanaryConfig(_Frozen):
    """A variant that takes `weight` of the routed traffic."""

    variant: Name
    weight: Fraction


class ShadowConfig(_Frozen):
    """A variant that sees a `sample` fraction of routed traffic; its answers are only logged."""

    variant: Name
    sample: Fraction = 1.0


class RoutingConfig(_Frozen):
    """The initial routing of a model; later changes come from the admin API (README)."""

    live: Name = Field(description="The variant that serves traffic (blue-green).")
    canary: CanaryConfig | None = None
    sticky_header: str | None = Field(
        default=None, description="Request header whose value pins a user to one variant."
    )
    shadows: tuple[ShadowConfig, ...] = ()

    @field_validator("sticky_header")
    @classmethod
    def _lower_header(cls, value: str | None) -> str | None:
        # HTTP header names are case-insensitive; ASGI gives them in lower case.
        return value.lower() if value else None


class MonitoringConfig(_Frozen):
    """Input and output monitoring of one model (README "Monitoring")."""

    enabled: bool = Field(default=True, description="False: no live profile, drift or feedback.")
    reference: str | None = Field(
        default=None,
        description="File of representative inputs (.npz, .csv or .parquet), relative to the "
        "config file; a profile pinned through the admin API replaces it.",
    )
    reference_from_live: int = Field(
        default=0,
        ge=0,
        description="With no reference yet: pin one from the first this many live rows (0: no).",
    )
    window_s: float = Field(default=300.0, gt=0, description="Live profiles cover this window.")
    bins: int = Field(default=10, ge=2, le=100, description="Quantile bins per numeric feature.")
    max_features: int = Field(
        default=32, ge=1, le=1000, description="Input features tracked, and output features."
    )
    task: Literal["classification", "regression"] | None = Field(
        default=None,
        description="How feedback is scored; default: classification when the model has an "
        "integer label output, else regression on its first output's first column.",
    )
    prediction_output: str | None = Field(
        default=None, description="The output that feedback is compared with (default above)."
    )
    psi_threshold: float = Field(
        default=0.25, gt=0, description="PSI above which the monitor report flags drift."
    )


class ModelConfig(_Frozen):
    """A public model name with its variants and initial routing."""

    variants: dict[Name, VariantConfig] = Field(min_length=1)
    routing: RoutingConfig
    log_inputs: bool = Field(default=True, description="False keeps inputs out of the shadow log.")
    monitoring: MonitoringConfig = MonitoringConfig()
    rollout: RolloutPlan | None = Field(
        default=None,
        description="A plan started when its variant is not live and has not been rolled out "
        'yet (README "Rollouts").',
    )

    @model_validator(mode="after")
    def _routing_names_known_variants(self) -> Self:
        check_routing(self.routing, self.variants)
        if self.rollout is not None and self.rollout.variant not in self.variants:
            raise ValueError(
                f"rollout.variant names unknown variant {self.rollout.variant!r} "
                f"(known: {', '.join(sorted(self.variants))})"
            )
        for name, variant in self.variants.items():
            shipped = self.rollout is not None and self.rollout.variant == name
            if variant.on_alias_change == "rollout" and not shipped:
                raise ValueError(
                    f"variants.{name}.on_alias_change: rollout needs the model's rollout plan to "
                    f"ship it (rollout.variant: {name})"
                )
        return self


def check_routing(routing: RoutingConfig, variants: Mapping[str, object]) -> None:
    """Raise ValueError when routing names a variant the model does not have."""

    def known(field: str, variant: str) -> None:
        if variant not in variants:
            raise ValueError(
                f"routing.{field} names unknown variant {variant!r} "
                f"(known: {', '.join(sorted(variants))})"
            )

    known("live", routing.live)
    if routing.canary is not None:
        known("canary.variant", routing.canary.variant)
        if routing.canary.variant == routing.live:
            raise ValueError("routing.canary.variant must differ from routing.live")
    seen: set[str] = set()
    for shadow in routing.shadows:
        known("shadows", shadow.variant)
        if shadow.variant in seen:
            raise ValueError(f"routing.shadows lists {shadow.variant!r} twice")
        seen.add(shadow.variant)


class Settings(_Frozen):
    """Everything `gateway serve` needs, as read from the config file and the environment."""

    model_repository: Path = Field(
        default=Path("models"), description="Folder of <model>/<version>/model.onnx files."
    )
    redis_url: RedisUrl = Field(
        default=None, description="redis://host:port/db; null runs embedded (state in data_dir)."
    )
    data_dir: Path = Field(
        default=Path(".gateway"),
        description="Embedded mode: routing state and shadow log. With Redis: the last-known "
        "routing, served by a process that starts while Redis is down.",
    )
    request_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A request not answered within this many seconds (queue and run) gets 504; "
        "a request's own `timeout` parameter (microseconds, Triton's) may shorten it.",
    )
    drain_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM: seconds during which /v2/health/ready answers 503 while every "
        "request is still served, so load balancers stop sending new ones.",
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="After the drain: how long requests still in flight get to finish.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Larger bodies answer 413, as sent or once decompressed (Content-Encoding).",
    )
    max_header_line_bytes: int = Field(
        default=8 * 1024,
        gt=0,
        description="A request header whose name and value together are longer answers 431.",
    )
    max_request_head_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="A larger request head (request line and every header line) answers 431; "
        "no more of it is read.",
    )
    compress_above_bytes: int = Field(
        default=1024,
        ge=0,
        description="Inference answers larger than this are compressed (gzip or deflate) when "
        "the request's Accept-Encoding allows it; smaller ones are sent as they are.",
    )
    shadow_log_maxlen: int = Field(
        default=100_000, gt=0, description="Redis stream cap (MAXLEN ~)."
    )
    shadow_queue_size: int = Field(
        default=1000, gt=0, description="Shadow runs waiting at most; beyond it they are dropped."
    )
    inline_run_below_s: float = Field(
        default=0.0005,
        ge=0,
        description="Runs expected to be shorter stay on the event loop (no thread hand-off); "
        "0 sends every run to a thread.",
    )
    shadow_concurrency: int = Field(
        default=1, gt=0, description="Shadow threads (background priority), each one run at once."
    )
    access_log: bool = Field(default=False, description="Write one JSON line per request.")
    feedback_ttl_s: float = Field(
        default=3600.0, gt=0, description="How long answers are kept for feedback to join."
    )
    feedback_max_predictions: int = Field(
        default=100_000, gt=0, description="Embedded mode: answers kept for feedback at most."
    )
    monitor_interval_s: float = Field(
        default=1.0, gt=0, description="How often live profiles are folded, shared and compared."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server (and Model Registry) of models:/ variant paths; "
        "unset: MLflow's MLFLOW_TRACKING_URI environment variable.",
    )
    mlflow_poll_s: float = Field(
        default=30.0,
        gt=0,
        description="How often each models:/NAME@ALIAS variant asks the registry where its "
        "alias points; a move is downloaded and followed (on_alias_change).",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin API; unset or empty turns it off."
    )
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the Open Inference Protocol v2 over gRPC (KServe's "
        'inference.GRPCInferenceService, README "gRPC"), on the host `gateway serve` binds and '
        "shared by its workers; null: no gRPC. Needs the `grpc` extra.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector (http://collector:4317) that receives a trace of every "
        'inference request, HTTP and gRPC (README "Tracing"); null: no tracing, at no cost. '
        "Needs the `otel` extra.",
    )
    config_path: Path | None = Field(default=None, description="Where these settings came from.")
    models: dict[Name, ModelConfig] = Field(min_length=1)
    consumers: tuple[ConsumerConfig, ...] = Field(
        default=(),
        description="Event-stream consumers: requests read from Redis Streams or Kafka, "
        'predictions written to another stream (README "Event streams").',
    )

    @field_validator("consumers")
    @classmethod
    def _consumers_runnable(
        cls, value: tuple[ConsumerConfig, ...], info: ValidationInfo
    ) -> tuple[ConsumerConfig, ...]:
        models = info.data.get("models")  # absent when the models failed their own checks
        if models is not None:
            check_consumers(value, models.keys(), info.data.get("redis_url"))
        return value

    @model_validator(mode="after")
    def _registry_known(self) -> Self:
        for model, config in self.models.items():
            for name, variant in config.variants.items():
                if is_model_uri(variant.path) and not self.mlflow_tracking_uri:
                    raise ValueError(
                        f"models.{model}.variants.{name}.path {variant.path} needs "
                        "mlflow_tracking_uri (or MLFLOW_TRACKING_URI) to name the registry"
                    )
        return self

    def resolve(self, base: Path) -> "Settings":
        """The same settings with relative paths made absolute against `base`."""
        models = {
            name: model.model_copy(
                update={
                    "monitoring": model.monitoring.model_copy(
                        update={"reference": str((base / model.monitoring.reference).resolve())}
                    )
                }
            )
            if model.monitoring.reference is not None
            else model
            for name, model in self.models.items()
        }
        return self.model_copy(
            update={
                "model_repository": (base / self.model_repository).resolve(),
                "data_dir": (base / self.data_dir).resolve(),
                "models": models,
            }
        )


ENV_OVERRIDES = {
    "GATEWAY_REDIS_URL": "redis_url",
    "GATEWAY_ADMIN_TOKEN": "admin_token",
    "GATEWAY_GRPC_PORT": "grpc_port",
    "GATEWAY_OTEL_ENDPOINT": "otel_endpoint",
}


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file; raise ConfigError with one readable message."""
    env = os.environ if env is None else env
    file = Path(path)
    raw = _read_yaml(file)
    for var, field in ENV_OVERRIDES.items():
        if var in env:
            raw[field] = env[var] or None
    if not raw.get("mlflow_tracking_uri") and env.get("MLFLOW_TRACKING_URI"):
        raw["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]  # as MLflow's client does
    raw["config_path"] = str(file.resolve())
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(file, exc)) from None
    return settings.resolve(file.resolve().parent)


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping of settings at the top level")
    return raw


def _describe(file: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{file}: {field}: {message}")
    return "\n".join(lines)
