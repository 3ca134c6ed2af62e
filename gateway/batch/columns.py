"""How a table's columns feed a model's inputs (README "Batch inference").

Two mappings, chosen from the model's inputs and the file's column names:

- **A column per input**, when every input of the model is a column of the file: a column of
  numbers feeds an input of shape `[batch]` (or `[batch, 1]`), a column of fixed-size lists of
  `k` numbers an input of shape `[batch, k]`.
- **Features of one 2-D input**, otherwise, for a model with a single input of shape
  `[batch, k]`: the feature columns, in file order (every column but the id and sticky columns,
  or those `--columns` names), are its `k` columns, one number each.

Numbers are cast to the input's datatype: integers and booleans into floats, integers into wider
or narrower integers, booleans only into BOOL; floats never into integers and text never at all
(as the HTTP path refuses them, README "Routes"). A null in a float column is NaN (a missing
value, as the monitor counts it); a null anywhere else stops the job. Every check of names and
types is made on the file's schema, before any row is read, and raises ConfigError naming the
column.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.errors import ConfigError
from gateway.types import TensorSpec


@dataclass(frozen=True)
class Feed:
    """One model input and the columns that make it (one per feature, or one column)."""

    input: TensorSpec
    columns: tuple[str, ...]
    stacked: bool  # True: one scalar column per feature of a 2-D input


@dataclass(frozen=True)
class InputMapping:
    """Columns -> model inputs, checked against the schema; `arrays` turns a chunk into inputs."""

    feeds: tuple[Feed, ...]

    @property
    def columns(self) -> list[str]:
        """Every column the model reads, in feed order."""
        return [column for feed in self.feeds for column in feed.columns]

    def arrays(self, table: pa.Table) -> dict[str, np.ndarray]:
        """The chunk's rows as the model's inputs (rows first); ConfigError for a null that
        cannot be read as a number."""
        return {feed.input.name: _feed_array(table, feed) for feed in self.feeds}


def plan_inputs(
    schema: pa.Schema,
    inputs: Sequence[TensorSpec],
    skip: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> InputMapping:
    """The mapping the module describes; `skip`: columns that are never features (id, sticky),
    `columns`: the feature columns to use (`--columns`), None for all the others."""
    names = schema.names
    for name in columns or ():
        if name not in names:
            raise ConfigError(f"column {name!r} is not in the input file; it has {names}")
    if columns is None and all(spec.name in names for spec in inputs):
        return InputMapping(tuple(_column_feed(schema, spec) for spec in inputs))
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        wanted = [spec.name for spec in inputs]
        raise ConfigError(
            f"the model's inputs {wanted} are not all columns of the input file ({names}); "
            "feature columns can only feed a model with a single 2-D input"
        )
    features = list(columns) if columns is not None else [n for n in names if n not in skip]
    return InputMapping((_stacked_feed(schema, inputs[0], features),))


def _column_feed(schema: pa.Schema, spec: TensorSpec) -> Feed:
    kind = schema.field(spec.name).type
    if pa.types.is_fixed_size_list(kind) and len(spec.shape) == 2:
        width = spec.shape[1]
        if width >= 0 and kind.list_size != width:
            raise ConfigError(
                f"column {spec.name!r} holds lists of {kind.list_size} values, input "
                f"{spec.name!r} takes {width} per row (shape {list(spec.shape)})"
            )
        _check_cast(spec.name, kind.value_type, spec)
        return Feed(spec, (spec.name,), stacked=False)
    if len(spec.shape) not in (1, 2) or (len(spec.shape) == 2 and spec.shape[1] not in (1, -1)):
        raise ConfigError(
            f"column {spec.name!r} ({kind}) cannot feed input {spec.name!r} of shape "
            f"{list(spec.shape)}: give it as a column of fixed-size lists"
        )
    _check_cast(spec.name, kind, spec)
    return Feed(spec, (spec.name,), stacked=False)


def _stacked_feed(schema: pa.Schema, spec: TensorSpec, features: list[str]) -> Feed:
    width = spec.shape[1]
    if not features or (width >= 0 and len(features) != width):
        raise ConfigError(
            f"input {spec.name!r} takes {width} features per row (shape {list(spec.shape)}); "
            f"the feature columns are {len(features)}: {features}"
        )
    for name in features:
        _check_cast(name, schema.field(name).type, spec)
    return Feed(spec, tuple(features), stacked=True)


def _check_cast(column: str, kind: pa.DataType, spec: TensorSpec) -> None:
    """ConfigError unless values of Arrow type `kind` may become `spec`'s datatype."""
    target = spec.dtype
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if pa.types.is_null(kind) and target.kind == "f":
        return  # no value at all (a CSV of only its header): every row missing, NaN
    if pa.types.is_boolean(kind):
        allowed = True  # a boolean is 0 or 1 in any numeric input
    elif target.kind == "b":
        allowed = False
    elif target.kind in "iu":
        allowed = pa.types.is_integer(kind)
    else:
        allowed = numeric
    if not allowed or not (numeric or pa.types.is_boolean(kind)):
        raise ConfigError(
            f"column {column!r} has type {kind}, which cannot feed input {spec.name!r} "
            f"({spec.datatype}){_hint(kind, target)}"
        )


def _hint(kind: pa.DataType, target: np.dtype) -> str:
    if pa.types.is_floating(kind) and target.kind in "iu":
        return ": floats are never rounded into integers"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ": a text column is not a feature (select features with --columns)"
    return ""


def _feed_array(table: pa.Table, feed: Feed) -> np.ndarray:
    spec = feed.input
    if feed.stacked:  # columns as they are in memory (no copy), stacked in one go
        columns = [_numbers(table.column(name), name, spec) for name in feed.columns]
        return np.column_stack(columns) if columns else np.empty((table.num_rows, 0), spec.dtype)
    column = table.column(feed.columns[0])
    if pa.types.is_fixed_size_list(column.type):
        if column.null_count:
            raise ConfigError(f"column {feed.columns[0]!r} has a null row")
        values = _numbers(pc.list_flatten(column), feed.columns[0], spec)
        return values.reshape(table.num_rows, column.type.list_size)
    values = _numbers(column, feed.columns[0], spec)
    return values.reshape(table.num_rows, 1) if len(spec.shape) == 2 else values


def _numbers(column: pa.ChunkedArray | pa.Array, name: str, spec: TensorSpec) -> np.ndarray:
    """One column's values as the input's dtype (the column's own memory when it has that
    dtype already); nulls as NaN in floats, else ConfigError."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()  # no copy for a single chunk
    if column.null_count:
        if spec.dtype.kind != "f":
            raise ConfigError(
                f"column {name!r} has {column.null_count} null value(s), which input "
                f"{spec.name!r} ({spec.datatype}) cannot take"
            )
        column = pc.fill_null(pc.cast(column, pa.float64()), float("nan"))
    values = column.to_numpy(zero_copy_only=False)
    return np.asarray(values).astype(spec.dtype, copy=False)
