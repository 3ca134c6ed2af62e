"""Which features of a model are watched, and how a batch of requests becomes feature columns.

README "Monitoring". A feature is one column of numbers per batch row:
- an input or a float output of shape `[batch, k]` (k fixed) gives k features, `name[0]` to
  `name[k-1]`; of shape `[batch]`, one feature `name`;
- any other shape (a dynamic second dimension, three dimensions or more) gives one feature
  `name`, the mean over each row's values (for an image: its mean brightness);
- an integer output of shape `[batch]` or `[batch, 1]` is a class output (a classifier's label):
  its distribution is the share of each class.

At most `max_features` input features and as many output features are tracked (the first ones in
the model's order), which bounds the metrics' cardinality.
"""

import contextlib
from dataclasses import dataclass

import numpy as np

from gateway.types import TensorSpec


@dataclass(frozen=True, slots=True)
class Column:
    """One numeric feature: column `index` of tensor `tensor` (None: the row mean)."""

    name: str
    tensor: str
    index: int | None


@dataclass(frozen=True, slots=True)
class Layout:
    """The watched features of one variant: numeric input and output columns, class outputs."""

    inputs: tuple[Column, ...]
    outputs: tuple[Column, ...]
    classes: tuple[str, ...]  # class outputs (integer labels)

    @classmethod
    def of(
        cls, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], max_features: int
    ) -> "Layout":
        numeric_outputs = [spec for spec in outputs if not _is_class(spec)]
        classes = tuple(spec.name for spec in outputs if _is_class(spec))
        output_columns = [column for spec in numeric_outputs for column in _columns(spec)]
        return cls(
            tuple([column for spec in inputs for column in _columns(spec)][:max_features]),
            tuple(output_columns[: max(0, max_features - len(classes))]),
            classes[:max_features],
        )


def _is_class(spec: TensorSpec) -> bool:
    return spec.dtype.kind in "iu" and (
        len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1)
    )


def _columns(spec: TensorSpec) -> list[Column]:
    shape = spec.shape
    if len(shape) == 2 and shape[1] > 0:
        return [Column(f"{spec.name}[{j}]", spec.name, j) for j in range(shape[1])]
    return [Column(spec.name, spec.name, None)]


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """One tensor of every request, joined along the batch dimension (2-D float64: rows by
    values of one row); rows of different sizes are reduced to their means first."""
    if arrays[0].ndim in (1, 2):
        with contextlib.suppress(ValueError):  # all [rows] or [rows, k], same k: one C call
            joined = np.concatenate(arrays).astype(np.float64, copy=False)
            return joined if joined.ndim == 2 else joined[:, None]
    rows = [array.reshape(array.shape[0] if array.ndim else 1, -1) for array in arrays]
    widths = {row.shape[1] for row in rows}
    if len(widths) > 1:
        rows = [_row_means(row)[:, None] for row in rows]
    return np.concatenate(rows).astype(np.float64, copy=False)


def columns(joined: dict[str, np.ndarray], wanted: tuple[Column, ...]) -> np.ndarray:
    """The features `wanted` as a float64 matrix, rows by features, from `stack`ed tensors."""
    if not wanted:
        rows = next(iter(joined.values())).shape[0] if joined else 0
        return np.empty((rows, 0))
    picked = []
    for column in wanted:
        matrix = joined[column.tensor]
        if column.index is not None and matrix.shape[1] > column.index:
            picked.append(matrix[:, column.index])
        else:
            picked.append(_row_means(matrix))
    return np.column_stack(picked)


def _row_means(matrix: np.ndarray) -> np.ndarray:
    if matrix.shape[1] == 0:
        return np.full(matrix.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        means: np.ndarray = matrix.mean(axis=1)
    return means
