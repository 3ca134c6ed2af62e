"""Reading a reference file of representative inputs (README "Monitoring").

- `.npz` (numpy): one array per model input, named as the input, rows first; a file with one
  array serves a model with one input under any name.
- `.csv` (with a header line) and `.parquet`, read with pyarrow: every column, in order, is one
  column of the model's single 2-D input (`[batch, k]` with k columns).

Values are cast to the input's datatype. Errors are ConfigError naming the file and the reason.
"""

from pathlib import Path

import numpy as np

from gateway.errors import ConfigError
from gateway.types import TensorSpec


def read_reference(path: Path, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The file's rows as the model's inputs, each an array of `rows` first."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            arrays = _npz(path, inputs)
        elif suffix in (".csv", ".parquet"):
            arrays = _table(path, suffix, inputs)
        else:
            raise ConfigError(f"{path}: a reference file is .npz, .csv or .parquet")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the reference file: {exc}") from None
    rows = {array.shape[0] for array in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        raise ConfigError(f"{path}: the reference inputs need the same number (> 0) of rows")
    for spec in inputs:
        if arrays[spec.name].ndim != len(spec.shape):
            raise ConfigError(
                f"{path}: input {spec.name!r} has {arrays[spec.name].ndim} dimensions, the "
                f"model expects shape {list(spec.shape)}"
            )
    return {spec.name: arrays[spec.name].astype(spec.dtype) for spec in inputs}


def _npz(path: Path, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            found = {name: data[name] for name in data.files}
    except ValueError as exc:
        raise ConfigError(f"{path}: not a numpy .npz file: {exc}") from None
    names = [spec.name for spec in inputs]
    if len(found) == 1 and len(names) == 1:
        return {names[0]: next(iter(found.values()))}
    missing = [name for name in names if name not in found]
    if missing:
        raise ConfigError(f"{path}: no array for input(s) {missing}; it has {sorted(found)}")
    return found


def _table(path: Path, suffix: str, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise ConfigError(f"{path}: a table serves a model with one 2-D input; use .npz")
    try:
        table = pyarrow.csv.read_csv(path) if suffix == ".csv" else pyarrow.parquet.read_table(path)
        columns = [column.to_numpy(zero_copy_only=False) for column in table.columns]
        matrix = np.column_stack(columns).astype(np.float64)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read numbers from the table: {exc}") from None
    width = inputs[0].shape[1]
    if width > 0 and matrix.shape[1] != width:
        raise ConfigError(
            f"{path}: the table has {matrix.shape[1]} columns, input {inputs[0].name!r} "
            f"takes {width}"
        )
    return {inputs[0].name: matrix}
