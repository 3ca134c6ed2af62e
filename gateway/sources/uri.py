"""`models:/` URIs of the MLflow Model Registry, parsed without importing MLflow.

MLflow's own syntax (`mlflow.store.artifact.utils.models._parse_model_uri`, and the Model
Registry docs, "Deploy and organize models with aliases"): `models:/NAME/VERSION` names one
version, `models:/NAME@ALIAS` the version an alias points at. The gateway takes these two. A
stage (`models:/NAME/Production`) and `latest` are refused: stages are deprecated in MLflow
since 2.9 in favour of aliases, and `latest` moves with every registration, not by a decision.
"""

from dataclasses import dataclass

SCHEME = "models:"


@dataclass(frozen=True, slots=True)
class ModelUri:
    """A registered model's version (`version`, digits) or alias (`alias`): exactly one is set."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return (
            f"models:/{self.name}@{self.alias}"
            if self.alias
            else f"models:/{self.name}/{self.version}"
        )


def is_model_uri(path: str) -> bool:
    """Whether a variant's `path` names a registry model rather than a file."""
    return path.startswith(SCHEME)


def parse_model_uri(uri: str) -> ModelUri:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> ModelUri; ValueError saying what to
    write instead for anything else (a stage, `latest`, a logged model's id, a malformed URI)."""
    if not uri.startswith(f"{SCHEME}/") or uri.startswith(f"{SCHEME}//"):
        raise ValueError(
            f"{uri!r} is not a registry URI: write models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    parts = uri.removeprefix(f"{SCHEME}/").split("/")
    if len(parts) == 2:
        return _versioned(uri, *parts)
    name, at, alias = parts[0].rpartition("@")
    if len(parts) == 1 and at and _sane(name) and _sane(alias):
        return ModelUri(name, alias=alias)
    raise ValueError(
        f"{uri!r}: expected models:/NAME@ALIAS (follows the alias) or models:/NAME/VERSION (one "
        "version); a logged model's id or an artifact path inside a version is not served"
    )


def _versioned(uri: str, name: str, suffix: str) -> ModelUri:
    if not _sane(name) or not suffix:
        raise ValueError(f"{uri!r}: expected models:/NAME/VERSION with a registered model's name")
    if suffix.isascii() and suffix.isdigit() and int(suffix) > 0:
        return ModelUri(name, version=str(int(suffix)))
    if suffix.lstrip("+-").isascii() and suffix.lstrip("+-").isdigit():
        raise ValueError(f"{uri!r}: a version is a positive integer (MLflow counts from 1)")
    if suffix.lower() == "latest":
        raise ValueError(
            f"{uri!r}: 'latest' changes with every registration; point an alias at the version "
            f"to serve and write models:/{name}@ALIAS"
        )
    raise ValueError(
        f"{uri!r}: model stages are deprecated in MLflow; point an alias at the version instead "
        f"(MlflowClient.set_registered_model_alias) and write models:/{name}@ALIAS"
    )


def _sane(part: str) -> bool:
    """A name or alias that is not empty, has no space at either end (a typo: the registry
    would be asked for " iris") and cannot climb out of the cache folder."""
    return bool(part) and part == part.strip() and part not in (".", "..") and "\\" not in part
