"""The MLflow Model Registry, asked through MLflow's own client (the optional extra `mlflow`,
mlflow-skinny), imported on first use: a gateway without `models:/` paths never loads it.

MLflow's HTTP client retries a failed call 7 times with exponential backoff and waits up to
120 s for an answer (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_TIMEOUT`, MLflow's
environment variables docs): a start-up with the registry down would hang for minutes before
serving its cached versions. Unless they are set, the gateway sets 1 retry, a backoff factor of
1 and a 10 s timeout; the alias poll asks again every `mlflow_poll_s` anyway.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError
from gateway.sources.cache import SourceCache
from gateway.sources.uri import ModelUri

log = logging.getLogger(__name__)

T = TypeVar("T")
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
MAX_DEPTH = 8  # folders deep that a version's artifacts are searched for its ONNX file


class RegistryError(Exception):
    """The registry could not give a variant's version."""


class RegistryRefused(RegistryError):
    """The registry answered, and the answer cannot be served: no such model, version or alias
    (a 4xx), or a version without exactly one .onnx file among its artifacts."""


class RegistryUnreachable(RegistryError):
    """The registry could not be asked: no connection, a timeout, a 5xx or 429 answer."""


class MlflowRegistry:
    """Resolves `models:/` URIs to versions and fetches a version's ONNX file into the cache."""

    def __init__(self, tracking_uri: str, cache: SourceCache) -> None:
        self.tracking_uri = tracking_uri
        self.cache = cache
        self._client: Any = None

    def version_of(self, uri: ModelUri) -> str:
        """The version `uri` names: its alias's current version, or its own once confirmed."""
        client = self._mlflow()
        if uri.alias is not None:
            alias = uri.alias
            found = self._call(uri, lambda: client.get_model_version_by_alias(uri.name, alias))
        else:
            found = self._call(uri, lambda: client.get_model_version(uri.name, uri.version))
        return str(found.version)

    def fetch(self, uri: ModelUri, version: str) -> Path:
        """The cached ONNX file of `version`, downloaded first if it is not cached yet."""
        cached = self.cache.cached(uri.name, version)
        if cached is not None:
            return cached
        client = self._mlflow()
        location = self._call(uri, lambda: client.get_model_version_download_uri(uri.name, version))
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifacts: Any = get_artifact_repository(location, tracking_uri=self.tracking_uri)
        name = self._call(uri, lambda: _single_onnx(artifacts, location, uri, version))
        with self.cache.staging() as folder:
            local = self._call(uri, lambda: artifacts.download_artifacts(name, dst_path=folder))
            stored = self.cache.store(uri.name, version, Path(local))
        log.info("fetched version %s of %s (%s) into %s", version, uri.name, name, stored)
        return stored

    def _mlflow(self) -> Any:
        if self._client is None:
            for variable, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(variable, value)
            try:
                from mlflow import MlflowClient
            except ImportError as exc:
                raise ConfigError(
                    "models:/ paths need MLflow's client: pip install 'model-gateway[mlflow]' "
                    f"(mlflow-skinny); {exc}"
                ) from None
            from mlflow.exceptions import MlflowException

            try:
                self._client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
            except MlflowException as exc:  # a store MLflow refuses, e.g. file:// (maintenance)
                raise ConfigError(f"mlflow_tracking_uri {self.tracking_uri!r}: {exc}") from None
        return self._client

    def _call(self, uri: ModelUri, call: Callable[[], T]) -> T:
        """Run one client call; MLflow's errors become RegistryRefused or RegistryUnreachable."""
        from mlflow.exceptions import MlflowException

        try:
            return call()
        except MlflowException as exc:
            failure: Any = exc  # MLflow's own methods are untyped
            status = int(failure.get_http_status_code())
            kind = RegistryRefused if 400 <= status < 500 and status != 429 else RegistryUnreachable
            raise kind(f"{uri}: {exc.message}") from None
        except OSError as exc:  # requests' errors are OSErrors; so are the local store's
            raise RegistryUnreachable(f"{uri}: {exc}") from None


def _single_onnx(artifacts: Any, location: str, uri: ModelUri, version: str) -> str:
    """The path of the one .onnx file among a version's artifacts; RegistryRefused for none
    or several (which one to serve would be a guess)."""
    found = _onnx_files(artifacts, None, MAX_DEPTH)
    if len(found) == 1:
        return found[0]
    what = "no .onnx file" if not found else f"{len(found)} .onnx files ({', '.join(found)})"
    raise RegistryRefused(
        f"{uri}: version {version} has {what} among its artifacts at {location}; the gateway "
        "serves a version with exactly one"
    )


def _onnx_files(artifacts: Any, path: str | None, depth: int) -> list[str]:
    found: list[str] = []
    for info in artifacts.list_artifacts(path):
        if info.is_dir and depth > 0:
            found += _onnx_files(artifacts, info.path, depth - 1)
        elif info.path.lower().endswith(".onnx"):
            found.append(info.path)
    return sorted(found)
