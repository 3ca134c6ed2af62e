"""Embedded mode: each model's history is a JSON file under `data_dir/routing/`, one process."""

import asyncio
from pathlib import Path

import orjson

from gateway.control.store import HistoryEntry, ModelNames, OnChange, OnReload
from gateway.errors import Conflict
from gateway.files import replace_file


class EmbeddedStore:
    """Routing history on local disk, replaced atomically (write, fsync, rename) on each change."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = asyncio.Lock()

    def _file(self, model: str) -> Path:
        return self._directory / f"{model}.json"

    async def current(self, model: str) -> HistoryEntry | None:
        history = await self.history(model)
        return history[-1] if history else None

    async def history(self, model: str) -> list[HistoryEntry]:
        return await asyncio.to_thread(self._read, model)

    async def append(self, model: str, entry: HistoryEntry, expected: int) -> None:
        async with self._lock:
            history = await self.history(model)
            if (history[-1].revision if history else 0) != expected:
                raise Conflict(f"routing of {model!r} changed meanwhile; try again")
            await asyncio.to_thread(self._write, model, [*history, entry])

    async def open(self) -> None:
        """Nothing to prepare: files are read when needed."""

    async def announce_reload(self) -> None:
        """A single process has nobody else to tell."""

    async def watch(self, models: ModelNames, on_change: OnChange, on_reload: OnReload) -> None:
        """Nothing to watch: this process makes every change itself."""

    async def close(self) -> None:
        """Every write is closed and synced already."""

    def _read(self, model: str) -> list[HistoryEntry]:
        try:
            raw = self._file(model).read_bytes()
        except FileNotFoundError:
            return []
        return [HistoryEntry.from_dict(item) for item in orjson.loads(raw)]

    def _write(self, model: str, history: list[HistoryEntry]) -> None:
        data = orjson.dumps([entry.to_dict() for entry in history], option=orjson.OPT_INDENT_2)
        replace_file(self._file(model), data)
