"""Reading the input file in chunks and writing predictions, with pyarrow (README "Batch
inference").

The format follows the file name: `.parquet` (or `.pq`), `.csv` (a header line), `.jsonl`,
`.ndjson` or `.json` (JSON lines: one object per line). A chunk is `chunk_rows` consecutive
rows, the last one shorter: chunk `i` holds rows `[i * chunk_rows, (i + 1) * chunk_rows)`, the
same rows in every run over the same file, which is what lets a run resume.

Output columns of vectors (fixed-size lists) stay lists in Parquet and JSON lines; CSV has no
lists, so `probabilities` of 3 values becomes columns `probabilities[0]` to `probabilities[2]`
(the README's feature names). JSON lines write NaN and infinities as the literals `NaN`,
`Infinity` and `-Infinity`, as the gateway's JSON answers do.
"""

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from gateway.errors import ConfigError
from gateway.protocol.tensors import dumps

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
FORMATS.update(dict.fromkeys((".jsonl", ".ndjson", ".json"), "json"))


def file_format(path: Path) -> str:
    """`parquet`, `csv` or `json` from the file name; ConfigError for anything else."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ConfigError(f"{path}: the format is read from the extension: one of {list(FORMATS)}")
    return found


class InputFile:
    """An input file: its schema, and its rows chunk by chunk.

    pyarrow's own streaming readers (not `pyarrow.dataset`, whose import loads pandas: two
    seconds of every run's start-up)."""

    def __init__(self, path: Path, floats: Mapping[str, pa.DataType] | None = None) -> None:
        """`floats`: columns read as these types whatever the text says (CSV and JSON infer a
        type from the first block only: a column of `1` then `1.5` would fail later)."""
        self.path = path
        self.format = file_format(path)
        self._floats = dict(floats or {})
        if not path.is_file():
            raise ConfigError(f"{path}: no such input file")
        try:
            self.schema = self._schema()
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{path}: cannot read it as {self.format}: {exc}") from None

    def typed(self, floats: Mapping[str, pa.DataType]) -> "InputFile":
        """The same file with `floats` forced (no change for Parquet, whose types are stored)."""
        return self if self.format == "parquet" else InputFile(self.path, floats)

    def chunks(self, chunk_rows: int, columns: list[str]) -> Iterator[pa.Table]:
        """Every chunk in order; ConfigError (naming the file) for rows that cannot be read."""
        try:
            batches = self._batches(columns, chunk_rows)
            yield from exact_chunks((batch.select(columns) for batch in batches), chunk_rows)
        except pa.ArrowException as exc:
            raise ConfigError(f"{self.path}: cannot read its rows: {exc}") from None

    def chunk(self, index: int, chunk_rows: int, columns: list[str]) -> pa.Table:
        """Chunk `index` alone: Parquet reads only the row groups that hold it; CSV and JSON
        lines are read from the start (convert big ones to Parquet)."""
        if self.format == "parquet":
            return _parquet_rows(self.path, index * chunk_rows, chunk_rows, columns)
        for number, table in enumerate(self.chunks(chunk_rows, columns)):
            if number == index:
                return table
        raise ConfigError(f"{self.path}: has no chunk {index} of {chunk_rows} rows")

    def count_rows(self) -> int:
        if self.format == "parquet":
            return int(pq.ParquetFile(self.path).metadata.num_rows)
        return sum(batch.num_rows for batch in self._batches(None))

    def _schema(self) -> pa.Schema:
        if self.format == "parquet":
            return pq.ParquetFile(self.path).schema_arrow
        return self._text_reader(None).schema

    def _batches(self, columns: list[str] | None, rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """The file's record batches (`columns` only, where the format reads them apart)."""
        if self.format == "parquet":
            file = pq.ParquetFile(self.path)
            batches: Iterator[pa.RecordBatch] = file.iter_batches(batch_size=rows, columns=columns)
            return batches
        return iter(self._text_reader(columns))

    def _text_reader(self, columns: list[str] | None) -> pa.RecordBatchReader:
        if self.format == "csv":
            convert = pacsv.ConvertOptions(column_types=self._floats, include_columns=columns)
            return pacsv.open_csv(self.path, convert_options=convert)
        parse = pajson.ParseOptions(unexpected_field_behavior="infer")
        if self._floats:
            parse.explicit_schema = pa.schema(list(self._floats.items()))
        return pajson.open_json(self.path, parse_options=parse)


def exact_chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-cut record batches of any sizes into tables of exactly `rows` rows (the last one
    shorter); an input of no rows gives no table."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def _parquet_rows(path: Path, start: int, rows: int, columns: list[str]) -> pa.Table:
    file = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if offset + size > start and offset < start + rows:
            groups.append(group)
            first = offset if first is None else first
        offset += size
    if first is None:
        raise ConfigError(f"{path}: has no rows from {start}")
    return file.read_row_groups(groups, columns=columns).slice(start - first, rows)


# --- writing ------------------------------------------------------------------------------


def write_atomically(tables: Iterable[pa.Table], schema: pa.Schema, path: Path) -> None:
    """Write `tables` (all of `schema`) to `path` in the format of its name, through a
    temporary file renamed at the end: a reader never sees half a file."""
    kind = file_format(path)
    temporary = path.with_name(f".{path.name}.partial")
    if kind == "parquet":
        with pq.ParquetWriter(temporary, schema) as writer:
            for table in tables:
                writer.write_table(table)
    elif kind == "csv":
        with pacsv.CSVWriter(temporary, _flat_schema(schema)) as writer:
            for table in tables:
                writer.write_table(flat_lists(table))
    else:
        with temporary.open("wb") as out:
            for table in tables:
                out.writelines(dumps(row) + b"\n" for row in table.to_pylist())
    os.replace(temporary, path)


def flat_lists(table: pa.Table) -> pa.Table:
    """Each fixed-size list column as one column per element: `name[0]`, `name[1]`..."""
    columns, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_fixed_size_list(column.type):
            columns.append(column)
            names.append(name)
            continue
        width = column.type.list_size
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, width)
        for index in range(width):
            columns.append(pa.array(values[:, index]))
            names.append(f"{name}[{index}]")
    return pa.table(columns, names=names)


def _flat_schema(schema: pa.Schema) -> pa.Schema:
    empty = pa.table({field.name: pa.array([], field.type) for field in schema})
    return flat_lists(empty).schema
