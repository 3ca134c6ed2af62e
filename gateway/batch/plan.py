"""What a batch job is, and every check made before any row runs (README "Batch inference").

`plan_job` reads the config, loads the model's variants (the same `load_repository` as `serve`),
opens the input file and maps its columns to the model's inputs; each problem is a ConfigError
naming the field, file or column, so that `gateway batch` stops with exit code 2 and writes
nothing, as `gateway serve` does with a bad config.
"""

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.batch.checkpoint import file_identity
from gateway.batch.columns import InputMapping, plan_inputs
from gateway.batch.files import InputFile, file_format
from gateway.errors import ConfigError
from gateway.runtime import ModelRepository, load_repository
from gateway.settings import Settings, load_settings

VARIANT_COLUMN = "variant"  # the output column naming the variant that answered each row


@dataclass(frozen=True)
class BatchJob:
    """The arguments of one `gateway batch` run."""

    config: Path
    model: str
    input: Path
    output: Path
    variant: str | None = None  # None: routed (live, canary) as the routing says
    id_column: str = "id"
    columns: tuple[str, ...] | None = None  # feature columns; None: every other column
    chunk_rows: int = 10_000  # rows per chunk: the unit of progress and of resumption
    batch_rows: int = 1024  # rows per request to the service (one model run)
    pushgateway: str | None = None  # a Prometheus Pushgateway to push the metrics to at the end


@dataclass(frozen=True)
class Plan:
    """A checked job: its settings (the one model), loaded variants, input and column map."""

    job: BatchJob
    settings: Settings
    repository: ModelRepository
    input: InputFile
    mapping: InputMapping
    has_ids: bool  # False: ids are row numbers from 0
    sticky_column: str | None  # the routing's sticky header, when the file has that column

    @property
    def read_columns(self) -> list[str]:
        """The columns read from the file: id and sticky columns (if any), then features."""
        extra = [self.job.id_column] if self.has_ids else []
        extra += [self.sticky_column] if self.sticky_column else []
        return [*extra, *(name for name in self.mapping.columns if name not in extra)]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run that made the checkpoint."""
        job = asdict(self.job)
        for name in ("batch_rows", "pushgateway", "config", "input", "output"):
            del job[name]  # not what the rows are, or kept below as what they contain
        variants = self.repository.variants(self.job.model)
        return {
            **job,
            "columns": self.mapping.columns,
            "input": file_identity(self.job.input),
            "config": hashlib.sha256(self.job.config.read_bytes()).hexdigest(),
            "models": {name: file_identity(s.path) for name, s in sorted(variants.items())},
        }


def plan_job(job: BatchJob) -> Plan:
    """Check `job` against its config, model and input file; ConfigError for any problem."""
    if job.chunk_rows < 1 or job.batch_rows < 1:
        raise ConfigError("--chunk-rows and --batch-rows must be at least 1")
    file_format(job.output)
    settings = _one_model(load_settings(job.config), job)
    source = InputFile(job.input)
    repository = load_repository(settings)
    live = repository.session(job.model, settings.models[job.model].routing.live)
    has_ids = job.id_column in source.schema.names
    sticky = settings.models[job.model].routing.sticky_header
    sticky_column = sticky if sticky in source.schema.names else None
    skip = [name for name in (job.id_column, sticky_column) if name]
    mapping = plan_inputs(source.schema, live.inputs, skip, job.columns)
    for name in (job.id_column, VARIANT_COLUMN):
        if name in live.output_names:
            raise ConfigError(f"model {job.model!r} has an output named {name!r}: use --id-column")
    if has_ids and source.schema.field(job.id_column).type not in _ID_TYPES:
        raise ConfigError(f"id column {job.id_column!r} must hold integers or text")
    floats = {
        column: pa.float64()
        for feed in mapping.feeds
        if feed.input.dtype.kind == "f"
        for column in feed.columns
    }
    return Plan(job, settings, repository, source.typed(floats), mapping, has_ids, sticky_column)


_ID_TYPES = {pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint32(), pa.uint64()}
_ID_TYPES |= {pa.string(), pa.large_string()}


def _one_model(settings: Settings, job: BatchJob) -> Settings:
    """The settings with only `job.model` (the one the job serves), its variant checked."""
    config = settings.models.get(job.model)
    if config is None:
        raise ConfigError(
            f"unknown model {job.model!r}; {settings.config_path} serves {sorted(settings.models)}"
        )
    if job.variant is not None and job.variant not in config.variants:
        raise ConfigError(
            f"model {job.model!r} has no variant {job.variant!r}; its variants are "
            f"{sorted(config.variants)}"
        )
    return settings.model_copy(update={"models": {job.model: config}})
