"""Resuming a batch: finished chunks as part files, and a manifest of them (README "Batch
inference").

While a job runs, `OUTPUT.parts/` holds one Arrow IPC file per finished chunk
(`part-000012.arrow` for chunk 12: written and read back without encoding) and `manifest.json`:
the job's fingerprint and the finished chunks with their row counts. A part is written under a
temporary name and renamed, then the manifest is rewritten the same way, so a process killed at
any point (SIGKILL included) leaves only whole files: a part the manifest does not list is made
again, and listed chunks are never run twice. At the end the parts are merged, in chunk order,
into the output file, and the folder is removed.

The fingerprint is what must not change between a run and its resumption: the input file (path,
size, modification time, and a SHA-256 of its first and last MiB), the model files, the config
file, and every argument that changes which rows go where (model, variant, columns, id column,
chunk rows). A different one is refused with the fields that differ, rather than mixing the
predictions of two jobs in one output.
"""

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.errors import ConfigError

MANIFEST = "manifest.json"
SAMPLE_BYTES = 1 << 20  # hashed at each end of the input file


def file_identity(path: Path) -> dict[str, Any]:
    """What identifies a file's content cheaply: size, mtime and a hash of both ends."""
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(SAMPLE_BYTES))
        if stat.st_size > SAMPLE_BYTES:
            file.seek(max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES))
            digest.update(file.read())
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_ends": digest.hexdigest(),
    }


class Checkpoint:
    """The parts folder of one output file and its manifest."""

    def __init__(self, output: Path, fingerprint: Mapping[str, Any]) -> None:
        self.folder = output.with_name(output.name + ".parts")
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.done: dict[int, int] = {}  # chunk -> rows

    def open(self) -> None:
        """Start a new folder, or resume the one there; ConfigError if it is another job's."""
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
            return
        try:
            found = json.loads(manifest.read_text())
            earlier, done = found["fingerprint"], found["done"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{manifest}: not a batch manifest ({exc}); remove it") from None
        if earlier != self.fingerprint:
            changed = sorted(k for k in {*earlier, *self.fingerprint} if _differs(earlier, self, k))
            raise ConfigError(
                f"{self.folder} holds a checkpoint of a job with another {', '.join(changed)}; "
                "run with the same input and arguments to resume it, or remove the folder to "
                "start over"
            )
        self.done = {int(chunk): int(rows) for chunk, rows in done.items()}

    def part(self, chunk: int) -> Path:
        return self.folder / f"part-{chunk:06d}.arrow"

    def save_part(self, chunk: int, table: pa.Table) -> None:
        """Write one chunk's predictions under a temporary name, then rename it."""
        path = self.part(chunk)
        temporary = path.with_name(f".{path.name}.partial")
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, table.schema) as file:
            file.write_table(table)
        os.replace(temporary, path)

    def mark(self, chunk: int, rows: int) -> None:
        """Record a chunk whose part is written as finished."""
        self.done[chunk] = rows
        self._write_manifest()

    def parts(self) -> Iterator[pa.Table]:
        """The finished parts in chunk order (rows of chunk 0 first)."""
        for chunk in sorted(self.done):
            with pa.OSFile(str(self.part(chunk))) as source:
                yield pa.ipc.open_file(source).read_all()  # read into memory: safe to close

    def remove(self) -> None:
        for part in [*self.folder.glob("part-*.arrow"), *self.folder.glob(".*.partial")]:
            part.unlink()  # unmarked parts too: a chunk made again after a kill
        (self.folder / MANIFEST).unlink(missing_ok=True)
        self.folder.rmdir()

    def _write_manifest(self) -> None:
        manifest = self.folder / MANIFEST
        temporary = manifest.with_name(f".{MANIFEST}.partial")
        document = {
            "fingerprint": self.fingerprint,
            "done": {str(c): r for c, r in self.done.items()},
        }
        temporary.write_text(json.dumps(document, indent=1, sort_keys=True))
        os.replace(temporary, manifest)


def _differs(earlier: Mapping[str, Any], checkpoint: Checkpoint, key: str) -> bool:
    return bool(earlier.get(key) != checkpoint.fingerprint.get(key))
