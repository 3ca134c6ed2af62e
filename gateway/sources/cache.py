"""Downloaded registry versions and remembered aliases, on local disk under `data_dir/mlflow/`.

`NAME/VERSION/model.onnx` is the ONNX file of one version (a version's artifacts never change in
MLflow, so a cached file is never fetched again); `NAME/aliases/ALIAS.json` is the version an
alias last resolved to and was served, for a start while the registry is down. Names and aliases
are percent-encoded into folder names. Every write is atomic (a temporary file in the same
folder, fsync, rename), so a worker or replica sharing the folder never reads half a file.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import quote

import orjson

from gateway.sources.uri import ModelUri

FILE_NAME = "model.onnx"


class SourceCache:
    """The folder of cached versions, `data_dir/mlflow`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, name: str, version: str) -> Path:
        """Where version `version` of registered model `name` is (or will be) cached."""
        return self._model(name) / version / FILE_NAME

    def cached(self, name: str, version: str) -> Path | None:
        path = self.file(name, version)
        return path if path.is_file() else None

    def staging(self) -> tempfile.TemporaryDirectory[str]:
        """A fresh folder on the cache's file system, for a download before it is stored."""
        self.root.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=".download-", dir=self.root)

    def store(self, name: str, version: str, downloaded: Path) -> Path:
        """Move a downloaded ONNX file into place (atomically) and return its cached path."""
        target = self.file(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with downloaded.open("rb") as source, _atomic(target) as file:
            shutil.copyfileobj(source, file)
        return target

    def remember(self, uri: ModelUri, version: str) -> None:
        """Note that `uri` (an alias) resolved to `version`, which is now served."""
        assert uri.alias is not None
        target = self._model(uri.name) / "aliases" / f"{quote(uri.alias, safe='')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        with _atomic(target) as file:
            file.write(orjson.dumps({"uri": str(uri), "version": version}))

    def recall(self, uri: ModelUri) -> str | None:
        """The version `uri` (an alias) last resolved to here, if it is still cached."""
        assert uri.alias is not None
        path = self._model(uri.name) / "aliases" / f"{quote(uri.alias, safe='')}.json"
        try:
            version = str(orjson.loads(path.read_bytes())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return version if self.cached(uri.name, version) else None

    def _model(self, name: str) -> Path:
        return self.root / quote(name, safe="")


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[IO[bytes]]:
    """Write a file whole or not at all: a temporary file beside it, fsync, rename over it."""
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", delete=False
    ) as file:
        temporary = Path(file.name)
        try:
            yield file
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            file.close()
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, target)
