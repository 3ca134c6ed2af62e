"""The last routing each model was seen at, kept on local disk for start-ups without Redis.

With Redis, the store is the truth; this is a process's memory of it, so a worker or replica that
starts while Redis is down serves what it last saw (after a rollback: the rolled-back routing),
never the config file's (README, "Several workers and replicas"). One JSON file per model under
`data_dir/last-known/` holds the head of the model's history: its revision, action, time and state.

Every worker of a machine shares the folder, so a write holds an exclusive lock on the folder's
lock file, skips when the file already holds the same or a newer revision, and replaces the file
atomically (write, fsync, rename). Writes run in a thread: an fsync may take milliseconds on a
network disk, and installs happen on the event loop.
"""

import asyncio
import fcntl
import logging
from pathlib import Path

import orjson

from gateway.control.store import HistoryEntry
from gateway.files import replace_file

log = logging.getLogger(__name__)


class LastKnownRouting:
    """Per model, the newest history entry this machine's processes have installed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pending: dict[str, HistoryEntry] = {}  # newest entry per model, not yet written
        self._writer: asyncio.Task[None] | None = None

    def file(self, model: str) -> Path:
        return self.directory / f"{model}.json"

    def load(self, model: str) -> HistoryEntry | None:
        """The model's last-known entry; None when there is none or it cannot be read."""
        try:
            return _read(self.file(model))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable last-known routing %s: %s", self.file(model), exc)
            return None

    def remember(self, model: str, entry: HistoryEntry) -> None:
        """Keep `entry` as the model's last-known routing; written in a thread, soon after."""
        self._pending[model] = entry
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def close(self) -> None:
        """Wait for the writes still pending, so a stopping process leaves its newest routing."""
        if self._writer is not None:
            await self._writer

    def save(self, model: str, entry: HistoryEntry) -> bool:
        """Write `entry` unless the file holds the same or a newer revision; True if written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.file(model)
        with (self.directory / ".lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            try:
                current = _read(target)
            except (ValueError, KeyError, TypeError):
                current = None  # unreadable: replace it
            if current is not None and current.revision >= entry.revision:
                return False
            replace_file(target, orjson.dumps({"model": model, **entry.to_dict()}))
        return True

    async def _write_pending(self) -> None:
        while self._pending:
            model, entry = self._pending.popitem()
            try:
                await asyncio.to_thread(self.save, model, entry)
            except OSError as exc:  # the routing is served anyway; only the memory of it is lost
                path = self.file(model)
                log.warning("cannot keep the last-known routing of %s in %s: %s", model, path, exc)


def _read(path: Path) -> HistoryEntry | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return HistoryEntry.from_dict(orjson.loads(raw))
