"""Load every configured variant, check it against the config, and look variants up by name."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError, NotFound
from gateway.runtime.session import ModelSession
from gateway.settings import ModelConfig, Settings
from gateway.sources.resolve import Key, ResolvedSource, remember_aliases, resolve_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FileKey:
    """Identifies one version of an ONNX file, so a reload reuses sessions of unchanged files."""

    path: Path
    mtime_ns: int
    size: int


class ModelRepository:
    """All loaded and warmed-up sessions, by model name then variant name. Never mutated."""

    def __init__(
        self,
        models: Mapping[str, Mapping[str, ModelSession]],
        sources: Mapping[Key, ResolvedSource] | None = None,
    ) -> None:
        self._models = {name: dict(variants) for name, variants in models.items()}
        # Where each models:/ variant's file came from (README "Sources and sinks").
        self.sources: Mapping[Key, ResolvedSource] = dict(sources or {})

    @property
    def models(self) -> Mapping[str, Mapping[str, ModelSession]]:
        return self._models

    def variants(self, model: str) -> Mapping[str, ModelSession]:
        """The variants of `model`; NotFound if the gateway does not serve it."""
        try:
            return self._models[model]
        except KeyError:
            raise NotFound(
                f"unknown model {model!r}; served models: {sorted(self._models)}"
            ) from None

    def session(self, model: str, variant: str) -> ModelSession:
        """One variant's session; NotFound for an unknown model or variant."""
        variants = self.variants(model)
        try:
            return variants[variant]
        except KeyError:
            raise NotFound(
                f"model {model!r} has no variant {variant!r}; its variants are {sorted(variants)}"
            ) from None


def load_repository(
    settings: Settings,
    previous: ModelRepository | None = None,
    moved: Mapping[Key, ResolvedSource] | None = None,
) -> ModelRepository:
    """Load and warm up every variant of `settings`, reusing unchanged sessions of `previous`;
    `models:/` variants at the version they serve in `previous`, or `moved` (a followed alias),
    or the registry's (gateway.sources.resolve).

    Blocking (seconds for big models): call it from a thread. Raises ConfigError naming the model,
    the variant and the reason for the first variant that cannot be served.
    """
    reusable = _sessions_by_file(previous) if previous else {}
    sources = resolve_sources(settings, previous.sources if previous else {}, moved or {})
    loaded: dict[_FileKey, ModelSession] = {}
    models = {
        name: _load_model(name, config, settings.model_repository, reusable, loaded, sources)
        for name, config in settings.models.items()
    }
    remember_aliases(settings, sources)
    return ModelRepository(models, sources)


def _load_model(
    name: str,
    config: ModelConfig,
    root: Path,
    reusable: dict[_FileKey, ModelSession],
    loaded: dict[_FileKey, ModelSession],
    sources: Mapping[Key, ResolvedSource],
) -> dict[str, ModelSession]:
    """Variants naming the same (unchanged) file share one onnxruntime session."""
    sessions = {}
    for variant, spec in config.variants.items():
        source = sources.get((name, variant))
        path = source.path if source else _resolve(root, name, variant, spec.path)
        key = _FileKey(path, *_stat(path))
        session = reusable.get(key)
        if session is None or session.model != name or session.variant != variant:
            session = ModelSession(name, variant, path, same_file=loaded.get(key) or session)
            session.warm_up()
            log.info("loaded model %s variant %s from %s", name, variant, path)
        if spec.max_batch_size:
            session.check_batching(spec.max_batch_size)
        loaded.setdefault(key, session)
        sessions[variant] = session
    _check_same_inputs(name, config.routing.live, sessions)
    return sessions


def _resolve(root: Path, model: str, variant: str, relative: str) -> Path:
    path = (root / relative).resolve()
    where = f"model {model!r}, variant {variant!r}"
    if not path.is_relative_to(root):
        raise ConfigError(f"{where}: path {relative!r} escapes the model repository {root}")
    if not path.is_file():
        raise ConfigError(f"{where}: no ONNX file at {path}")
    return path


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _check_same_inputs(model: str, live: str, sessions: dict[str, ModelSession]) -> None:
    expected = sessions[live].inputs
    for variant, session in sessions.items():
        if session.inputs != expected:
            raise ConfigError(
                f"model {model!r}, variant {variant!r}: inputs "
                f"{[spec.as_metadata() for spec in session.inputs]} differ from live variant "
                f"{live!r}'s {[spec.as_metadata() for spec in expected]}"
            )


def _sessions_by_file(repository: ModelRepository) -> dict[_FileKey, ModelSession]:
    found = {}
    for variants in repository.models.values():
        for session in variants.values():
            if session.path.is_file():
                found[_FileKey(session.path, *_stat(session.path))] = session
    return found
