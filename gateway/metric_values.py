"""Metric values in shared memory: each worker writes its own slots, a scrape reads everyone's.

A series is a slot of doubles, a `memoryview` over an mmap, so recording is a few Python
operations: no lock, no system call. With several workers (`gateway serve --workers N`), the
mmaps are files in a fresh directory per run, mapped shared: a scrape in any worker maps every
worker's files and sees their writes as soon as they are made, so it reports the exact sum.
A worker's directory, `<run directory>/<pid>` (`<pid>.<n>` if a dead worker had the same pid),
holds:

- `values.<k>`: segment k of its slots, `SEGMENT_DOUBLES` doubles, written full of zeros when
  created (a full disk fails there, not later with SIGBUS); segment 0 starts with the worker's
  gauges (`GAUGES`);
- `index`: one JSON line per series, `[family, labels, segment, offset, width]`, appended before
  the slot is first written, so a reader that finds a line finds its slot (a slot not yet
  written holds zeros, which is what it counts).

A dead worker's directory stays, so its counts stay in the sum and counters never go down. One
process (`--workers 1`) uses the same code on anonymous mmaps, and writes no index.
"""

import logging
import mmap
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

import orjson

log = logging.getLogger(__name__)

SEGMENT_DOUBLES = 8192  # 64 KiB: room for about 450 histogram series
_SEGMENT_BYTES = SEGMENT_DOUBLES * 8
GAUGES = 2  # a worker's own gauges, first in segment 0: in-flight requests, routing stale

Labels = tuple[str, ...]
Slot: TypeAlias = "memoryview[float]"  # doubles; memoryview is generic only to type checkers


class WorkerValues:
    """This process's slots: each allocated once, then written in place by the recording code."""

    def __init__(self, run_directory: Path | None = None) -> None:
        self._segments: list[Slot] = []
        self._lock = threading.Lock()  # allocation only; recording needs none (one thread)
        self.directory: Path | None = None
        if run_directory is None:
            self._segments.append(_anonymous_segment())
        else:
            # Build the directory under a hidden name and rename it into place, so a reader
            # never sees a worker without its first segment and index.
            staging = Path(tempfile.mkdtemp(prefix=".new-", dir=run_directory))
            self._segments.append(_file_segment(staging / "values.0"))
            (staging / "index").touch()
            self.directory = _publish(staging, run_directory)
        self.gauges = self._segments[0][:GAUGES]
        self._used = GAUGES  # doubles used in the last segment

    def slot(self, family: str, labels: Labels, width: int) -> Slot:
        """A new slot of `width` doubles (zeros) for one series, listed in the index first.

        If the files cannot be written (disk full), the slot is this process's own: counted
        in its scrapes, not in the other workers', and the request goes on.
        """
        with self._lock:
            try:
                return self._allocate(family, labels, width)
            except OSError as exc:
                log.warning("metrics of %s%s are not shared with other workers: %s",
                            family, list(labels), exc)  # fmt: skip
                return memoryview(bytearray(width * 8)).cast("d")

    def _allocate(self, family: str, labels: Labels, width: int) -> Slot:
        if self._used + width > SEGMENT_DOUBLES:
            self._segments.append(self._new_segment())
            self._used = 0
        segment, offset = len(self._segments) - 1, self._used
        if self.directory is not None:  # opened each time: a slot is made once per series
            with (self.directory / "index").open("ab", buffering=0) as index:
                index.write(orjson.dumps([family, labels, segment, offset, width]) + b"\n")
        self._used += width
        return self._segments[segment][offset : offset + width]

    def _new_segment(self) -> Slot:
        if self.directory is None:
            return _anonymous_segment()
        return _file_segment(self.directory / f"values.{len(self._segments)}")


class PeerValues:
    """Another worker's slots, read through its files; what it adds shows at once."""

    def __init__(self, directory: Path) -> None:
        pid, _, generation = directory.name.partition(".")
        self.pid = int(pid)  # ValueError: not a worker's directory
        self.generation = int(generation or 0)
        self.directory = directory
        self._segments: list[Slot] = []
        self._entries: list[tuple[str, Labels, int, int, int]] = []
        self._parsed = 0  # bytes of the index already read

    def gauges(self) -> list[float]:
        return list(self._segment(0)[:GAUGES])

    def series(self) -> Iterator[tuple[str, Labels, list[float]]]:
        """Every series the worker has listed so far: family, labels and current values."""
        self._read_index()
        for family, labels, segment, offset, width in self._entries:
            yield family, labels, list(self._segment(segment)[offset : offset + width])

    def _read_index(self) -> None:
        with (self.directory / "index").open("rb") as file:
            file.seek(self._parsed)
            data = file.read()
        complete = data.rfind(b"\n") + 1  # a line being written is read at the next scrape
        for line in data[:complete].splitlines():
            try:
                family, labels, segment, offset, width = orjson.loads(line)
            except ValueError:  # cut short by a full disk: that series only is not shared
                continue
            self._entries.append((family, tuple(labels), segment, offset, width))
        self._parsed += complete

    def _segment(self, number: int) -> Slot:
        while len(self._segments) <= number:
            path = self.directory / f"values.{len(self._segments)}"
            with path.open("rb") as file:
                mapped = mmap.mmap(file.fileno(), _SEGMENT_BYTES, access=mmap.ACCESS_READ)
            self._segments.append(memoryview(mapped).cast("d"))
        return self._segments[number]


def find_peers(run_directory: Path, known: dict[str, PeerValues], own: Path | None) -> None:
    """Add to `known` (by directory name) the workers that appeared in `run_directory`."""
    for entry in os.scandir(run_directory):
        if entry.name.startswith(".") or entry.name in known or Path(entry.path) == own:
            continue
        try:
            known[entry.name] = PeerValues(Path(entry.path))
        except ValueError:
            continue  # not a worker's directory


def running(pid: int) -> bool:
    """Whether process `pid` exists (a killed worker does until its supervisor reaps it)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _anonymous_segment() -> Slot:
    return memoryview(mmap.mmap(-1, _SEGMENT_BYTES)).cast("d")


def _file_segment(path: Path) -> Slot:
    with path.open("x+b") as file:
        file.write(bytes(_SEGMENT_BYTES))
        file.flush()
        mapped = mmap.mmap(file.fileno(), _SEGMENT_BYTES)  # shared, read and write
    return memoryview(mapped).cast("d")


def _publish(staging: Path, run_directory: Path) -> Path:
    """Rename `staging` to `<pid>`, or `<pid>.<n>` if a dead worker had this pid before."""
    pid, generation = os.getpid(), 0
    target = run_directory / str(pid)
    while target.exists():  # no other process can make it meanwhile: only this pid does
        generation += 1
        target = run_directory / f"{pid}.{generation}"
    staging.rename(target)
    return target
