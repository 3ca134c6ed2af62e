"""Resolve each `models:/` variant of a config to a registry version and its cached ONNX file.

README "Sources and sinks". At start-up and on a reload, a variant whose URI is unchanged keeps
the version it serves (an alias moves only through the poll, gateway.sources.follow); a new or
changed URI asks the registry. A pinned version already cached asks nothing. When the registry
cannot be asked, an alias serves the version it last resolved to here (remembered under
`data_dir/mlflow/`), and says so in the log; with nothing cached that is a start-up error.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.cache import SourceCache
from gateway.sources.mlflow_registry import MlflowRegistry, RegistryRefused, RegistryUnreachable
from gateway.sources.uri import ModelUri, is_model_uri, parse_model_uri

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (model, variant)


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """Where a variant's ONNX file came from: its `models:/` URI as configured, the registry
    version served, and the cached file. `cached_only`: the registry could not be asked when it
    was resolved, so the version is the one last resolved here."""

    uri: str
    version: str
    path: Path
    cached_only: bool = False

    @property
    def parsed(self) -> ModelUri:
        return parse_model_uri(self.uri)


def source_cache(settings: Settings) -> SourceCache:
    return SourceCache(settings.data_dir / "mlflow")


def registry(settings: Settings) -> MlflowRegistry:
    """The registry of `settings` (settings validation makes sure a URI comes with one)."""
    return MlflowRegistry(settings.mlflow_tracking_uri or "", source_cache(settings))


def registry_variants(settings: Settings) -> dict[Key, str]:
    """Every variant whose path is a `models:/` URI, with the URI."""
    return {
        (model, name): variant.path
        for model, config in settings.models.items()
        for name, variant in config.variants.items()
        if is_model_uri(variant.path)
    }


def resolve_sources(
    settings: Settings,
    served: Mapping[Key, ResolvedSource],
    moved: Mapping[Key, ResolvedSource],
) -> dict[Key, ResolvedSource]:
    """Each `models:/` variant's source: `moved` (an alias the poll followed), else what it
    serves under the same URI, else asked of the registry. Blocking: call from a thread.
    ConfigError naming the model, the variant and the reason."""
    resolved: dict[Key, ResolvedSource] = {}
    link: MlflowRegistry | None = None
    for key, uri in registry_variants(settings).items():
        known = moved.get(key) or served.get(key)
        if known is not None and known.uri == uri:
            resolved[key] = known
            continue
        link = link or registry(settings)
        try:
            resolved[key] = resolve(link, parse_model_uri(uri))
        except ConfigError as exc:
            raise ConfigError(f"model {key[0]!r}, variant {key[1]!r}: {exc}") from None
    return resolved


def resolve(link: MlflowRegistry, uri: ModelUri) -> ResolvedSource:
    """The version `uri` names now, fetched into the cache (the registry's answer), or the one
    cached for it when the registry cannot be asked."""
    if uri.version is not None and (cached := link.cache.cached(uri.name, uri.version)):
        return ResolvedSource(str(uri), uri.version, cached)  # a version's files never change
    try:
        version = link.version_of(uri)
        return ResolvedSource(str(uri), version, link.fetch(uri, version))
    except RegistryRefused as exc:
        raise ConfigError(f"{exc} (the MLflow registry at {link.tracking_uri})") from None
    except RegistryUnreachable as exc:
        recalled = None if uri.alias is None else link.cache.recall(uri)
        if recalled is None:
            raise ConfigError(
                f"the MLflow registry at {link.tracking_uri} cannot be asked and no version of "
                f"{uri} is cached under {link.cache.root}: {exc}"
            ) from None
        path = link.cache.file(uri.name, recalled)
        log.warning(
            "the MLflow registry at %s cannot be asked (%s): %s serves version %s, the one it "
            "last resolved to, from the cache %s; the alias is asked again every poll",
            link.tracking_uri, exc, uri, recalled, path,
        )  # fmt: skip
        return ResolvedSource(str(uri), recalled, path, cached_only=True)


def remember_aliases(settings: Settings, sources: Mapping[Key, ResolvedSource]) -> None:
    """Note the version each alias now serves, for a start while the registry is down."""
    cache = source_cache(settings)
    for source in sources.values():
        uri = source.parsed
        if uri.alias is not None and not source.cached_only:
            cache.remember(uri, source.version)
