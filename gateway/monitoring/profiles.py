"""Reference profiles and live profiles: what a model's features looked like, and look like now.

README "Monitoring". A reference profile bins each numeric feature at the quantiles of the
reference data (`bins` bins of about equal share; fewer when values repeat), and keeps each bin's
share and mean, the feature's range, mean and standard deviation; a class output keeps the share
of each class. A live profile counts the same bins over a sliding window, in slots of
`window_s / SLOTS` seconds, so that the counts of several workers and replicas add up exactly.
Everything here is plain numbers, stored as JSON (the reference with the routing state, live
counts in Redis).
"""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

SLOTS = 30  # a window is this many slots: it slides by window_s / 30
MAX_CLASSES = 100  # classes counted per class output; others count as "other"


@dataclass(frozen=True)
class NumericReference:
    """One numeric feature of the reference: quantile bins, its range, mean and spread."""

    edges: list[float]  # inner bin edges, ascending: len(edges) + 1 bins
    shares: list[float]  # share of the reference rows in each bin
    means: list[float]  # mean value of each bin
    low: float
    high: float
    mean: float
    std: float

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> Self | None:
        """From a column of reference values (NaN and infinities ignored); None if none."""
        finite = values[np.isfinite(values)]
        if not finite.size:
            return None
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        index = np.searchsorted(edges, finite, side="right")
        counts = np.bincount(index, minlength=len(edges) + 1)
        sums = np.bincount(index, weights=finite, minlength=len(edges) + 1)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        return cls(
            edges.tolist(), (counts / finite.size).tolist(), means.tolist(),
            float(finite.min()), float(finite.max()), float(finite.mean()), float(finite.std()),
        )  # fmt: skip


@dataclass(frozen=True)
class ClassReference:
    """One class output of the reference: its classes and the share of each."""

    classes: list[int]
    shares: list[float]

    @classmethod
    def of(cls, labels: np.ndarray) -> Self:
        classes, counts = np.unique(labels, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:MAX_CLASSES]
        kept = classes[order]
        return cls(kept.tolist(), (counts[order] / max(labels.size, 1)).tolist())


@dataclass(frozen=True)
class Reference:
    """A model's reference profile: per numeric input and output feature, per class output."""

    source: str  # where it came from: a file name, or "live:<variant>"
    rows: int
    created: float  # unix seconds
    inputs: dict[str, NumericReference]
    outputs: dict[str, NumericReference]
    classes: dict[str, ClassReference]

    @classmethod
    def build(
        cls,
        source: str,
        inputs: tuple[list[str], np.ndarray],
        outputs: tuple[list[str], np.ndarray],
        classes: dict[str, np.ndarray],
        bins: int,
    ) -> Self:
        """From feature matrices (names, rows by features) and class labels per class output."""

        def numeric(names: list[str], matrix: np.ndarray) -> dict[str, NumericReference]:
            found = {name: NumericReference.of(matrix[:, j], bins) for j, name in enumerate(names)}
            return {name: ref for name, ref in found.items() if ref is not None}

        return cls(
            source,
            int(inputs[1].shape[0]),
            round(time.time(), 3),
            numeric(*inputs),
            numeric(*outputs),
            {name: ClassReference.of(labels) for name, labels in classes.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "created": self.created,
            "inputs": {name: vars(ref) for name, ref in self.inputs.items()},
            "outputs": {name: vars(ref) for name, ref in self.outputs.items()},
            "classes": {name: vars(ref) for name, ref in self.classes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            str(data["source"]),
            int(data["rows"]),
            float(data["created"]),
            {name: NumericReference(**ref) for name, ref in data["inputs"].items()},
            {name: NumericReference(**ref) for name, ref in data["outputs"].items()},
            {name: ClassReference(**ref) for name, ref in data["classes"].items()},
        )


@dataclass
class Counts:
    """Live counts of one variant's features (numeric: `names`; classes: per class output).

    Per numeric feature: `rows` seen, `finite` values, `missing` (NaN), the sum and sum of
    squares of finite values; and while there is a reference: `referenced` rows, of them
    `out_of_range` (beyond the reference's range, infinities included), and per reference bin
    (`bins` columns at most, zero-padded) the count and sum of the finite values.
    """

    names: list[str]
    bins: int
    rows: np.ndarray = field(init=False)
    finite: np.ndarray = field(init=False)
    missing: np.ndarray = field(init=False)
    referenced: np.ndarray = field(init=False)
    out_of_range: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    bin_counts: np.ndarray = field(init=False)
    bin_sums: np.ndarray = field(init=False)
    classes: dict[str, dict[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = len(self.names)
        for name in _VECTORS:
            setattr(self, name, np.zeros(size))
        self.bin_counts = np.zeros((size, self.bins))
        self.bin_sums = np.zeros((size, self.bins))

    def add_numeric(self, matrix: np.ndarray, references: list[NumericReference | None]) -> None:
        """Count a matrix of rows by `names` features, binned as `references` say."""
        if not matrix.size:
            return
        finite = np.isfinite(matrix)
        values = np.where(finite, matrix, 0.0)
        self.rows += matrix.shape[0]
        self.finite += finite.sum(axis=0)
        self.missing += np.isnan(matrix).sum(axis=0)
        self.total += values.sum(axis=0)
        self.squares += np.square(values).sum(axis=0)
        for j, reference in enumerate(references):
            if reference is None:
                continue
            column = matrix[:, j]
            self.referenced[j] += column.size
            self.out_of_range[j] += np.count_nonzero(
                ~np.isnan(column) & ((column < reference.low) | (column > reference.high))
            )
            kept = column[finite[:, j]]
            index = np.searchsorted(reference.edges, kept, side="right")
            width = len(reference.edges) + 1
            self.bin_counts[j, :width] += np.bincount(index, minlength=width)
            self.bin_sums[j, :width] += np.bincount(index, weights=kept, minlength=width)

    def add_classes(self, output: str, labels: np.ndarray) -> None:
        found, counts = np.unique(labels, return_counts=True)
        known = self.classes.setdefault(output, {})
        for label, count in zip(found.tolist(), counts.tolist(), strict=True):
            if label in known or len(known) < MAX_CLASSES:
                known[label] = known.get(label, 0) + count

    def merge(self, other: "Counts", sign: float = 1.0) -> None:
        """Add `other` (sign -1.0: take it away, as a slot leaves the window)."""
        for name in _ARRAYS:
            getattr(self, name).__iadd__(sign * getattr(other, name))
        for output, counts in other.classes.items():
            known = self.classes.setdefault(output, {})
            for label, count in counts.items():
                left = known.get(label, 0) + sign * count
                if left > 0:
                    known[label] = left
                else:
                    known.pop(label, None)

    def copy(self) -> "Counts":
        copied = Counts(self.names, self.bins)
        copied.merge(self)
        return copied

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "bins": self.bins,
            **{name: getattr(self, name).tolist() for name in _ARRAYS},
            "classes": {output: list(counts.items()) for output, counts in self.classes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        counts = cls(list(data["names"]), int(data["bins"]))
        for name in _ARRAYS:
            value = np.asarray(data[name], dtype=np.float64)
            if value.shape != getattr(counts, name).shape:
                raise ValueError(f"live counts: {name} has shape {value.shape}")
            setattr(counts, name, value)
        counts.classes = {
            output: {int(label): float(count) for label, count in pairs}
            for output, pairs in data["classes"].items()
        }
        return counts


_VECTORS = ("rows", "finite", "missing", "referenced", "out_of_range", "total", "squares")
_ARRAYS = (*_VECTORS, "bin_counts", "bin_sums")


class Window:
    """Counts over the last `seconds`, in `SLOTS` slots. The slots that no longer change are
    kept summed, so `total()` adds one slot to that sum, not all of them."""

    def __init__(self, names: list[str], bins: int, seconds: float) -> None:
        self.names = names
        self.bins = bins
        self.slot_seconds = seconds / SLOTS
        self._slots: deque[tuple[int, Counts]] = deque()
        self._closed = Counts(names, bins)  # every slot but the newest

    def current(self, now: float) -> Counts:
        """The counts of the slot `now` falls in (made when needed); old slots are dropped."""
        slot = int(now // self.slot_seconds)
        slots = self._slots
        if slots and slots[-1][0] != slot:
            self._closed.merge(slots[-1][1])  # the newest slot is done changing
        while slots and slots[0][0] <= slot - SLOTS:
            self._closed.merge(slots.popleft()[1], sign=-1.0)
        if not slots or slots[-1][0] != slot:
            slots.append((slot, Counts(self.names, self.bins)))
        return slots[-1][1]

    def total(self, now: float) -> Counts:
        current = self.current(now)
        total = self._closed.copy()
        total.merge(current)
        return total
