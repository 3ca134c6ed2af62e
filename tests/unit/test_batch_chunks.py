"""Batch inference parts: chunking, the column mapping, reading and writing, the checkpoint."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gateway.batch.checkpoint import Checkpoint, file_identity
from gateway.batch.columns import plan_inputs
from gateway.batch.files import InputFile, exact_chunks, flat_lists, write_atomically
from gateway.errors import ConfigError
from gateway.types import TensorSpec

IRIS_INPUT = (TensorSpec("input", "FP32", (-1, 4)),)


def batches(*sizes: int) -> list[pa.RecordBatch]:
    start, found = 0, []
    for size in sizes:
        found.append(pa.record_batch({"n": np.arange(start, start + size)}))
        start += size
    return found


def test_exact_chunks_recut_batches_of_any_size() -> None:
    """Chunk i holds rows [i*n, (i+1)*n) whatever the batches; the last is shorter; no rows, no chunk."""
    chunks = list(exact_chunks(batches(3, 0, 7, 1, 4), 4))
    assert [c.num_rows for c in chunks] == [4, 4, 4, 3]
    assert pa.concat_tables(chunks).column("n").to_pylist() == list(range(15))
    assert list(exact_chunks(batches(4, 4), 4))[1].column("n").to_pylist() == [4, 5, 6, 7]
    assert list(exact_chunks([], 4)) == []


def test_features_in_file_order_skipping_id_and_sticky() -> None:
    """Every other column, in file order, makes the single 2-D input; ints and bools cast to FP32."""
    table = pa.table(
        {
            "d": [4, 40],
            "id": ["a", "b"],
            "a": [1.0, 10.0],
            "user": ["u", "v"],
            "b": [2.0, 20.0],
            "c": [True, False],
        }
    )
    mapping = plan_inputs(table.schema, IRIS_INPUT, skip=["id", "user"])
    assert mapping.columns == ["d", "a", "b", "c"]
    inputs = mapping.arrays(table)
    assert inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(inputs["input"], [[4, 1, 2, 1], [40, 10, 20, 0]])


def test_selected_columns_and_nulls() -> None:
    """--columns picks and orders features; a null in a float input is NaN (a missing value)."""
    table = pa.table(
        {"x": [1.0, None], "y": [2.0, 3.0], "z": [5, 6], "w": [7.0, 8.0], "v": [0.0, 1.0]}
    )
    mapping = plan_inputs(table.schema, IRIS_INPUT, columns=["w", "x", "y", "z"])
    got = mapping.arrays(table)["input"]
    np.testing.assert_array_equal(got[0], [7, 1, 2, 5])
    assert np.isnan(got[1, 1]) and got[1, 0] == 8


def test_a_column_with_no_value_at_all_is_missing_in_a_float_input() -> None:
    """A column whose every value is empty (Arrow type null, as a CSV reader types it) feeds a
    float input as NaN, as a null in a float column does."""
    table = pa.table({"a": [1.0, 2.0], "b": pa.nulls(2), "c": [3.0, 4.0], "d": [5.0, 6.0]})
    got = plan_inputs(table.schema, IRIS_INPUT).arrays(table)["input"]
    assert np.isnan(got[:, 1]).all() and got[1, 3] == 6


def test_a_column_per_input() -> None:
    """Every input named as a column: scalars for [batch] and [batch, 1], fixed-size lists for [batch, k]."""
    specs = (
        TensorSpec("age", "INT64", (-1,)),
        TensorSpec("score", "FP64", (-1, 1)),
        TensorSpec("emb", "FP32", (-1, 3)),
    )
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3)
    table = pa.table(
        {"id": [1, 2], "emb": emb, "age": pa.array([30, 40], pa.int32()), "score": [0.5, 0.7]}
    )
    inputs = plan_inputs(table.schema, specs, skip=["id"]).arrays(table)
    assert inputs["age"].dtype == np.int64 and inputs["age"].tolist() == [30, 40]
    assert inputs["score"].shape == (2, 1)
    np.testing.assert_array_equal(inputs["emb"], [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize(
    ("columns", "specs", "message"),
    [
        ({"a": pa.float64(), "s": pa.string(), "c": pa.float64(), "d": pa.float64()}, IRIS_INPUT, "column 's' has type string, which cannot feed input 'input' (FP32): a text column is not a feature"),
        ({"a": pa.float64(), "b": pa.float64()}, IRIS_INPUT, "input 'input' takes 4 features per row (shape [-1, 4]); the feature columns are 2: ['a', 'b']"),
        ({"n": pa.float64()}, (TensorSpec("n", "INT64", (-1,)),), "column 'n' has type double, which cannot feed input 'n' (INT64): floats are never rounded into integers"),
        ({"n": pa.int64()}, (TensorSpec("n", "BOOL", (-1,)),), "column 'n' has type int64, which cannot feed input 'n' (BOOL)"),
        ({"e": pa.list_(pa.float32(), 2)}, (TensorSpec("e", "FP32", (-1, 3)),), "column 'e' holds lists of 2 values, input 'e' takes 3 per row"),
        ({"x": pa.float32()}, (TensorSpec("x", "FP32", (-1, 3)),), "column 'x' (float) cannot feed input 'x' of shape [-1, 3]: give it as a column of fixed-size lists"),
        ({"a": pa.float32()}, (TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 2))), "the model's inputs ['a', 'b'] are not all columns of the input file (['a'])"),
    ],
)  # fmt: skip
def test_mapping_refusals_name_the_column(
    columns: dict[str, pa.DataType], specs: tuple[TensorSpec, ...], message: str
) -> None:
    """Types and counts are checked on the schema alone, each refusal naming the column."""
    with pytest.raises(ConfigError) as refused:
        plan_inputs(pa.schema(list(columns.items())), specs)
    assert message in str(refused.value)


def test_unknown_selected_column_and_null_in_integer_input() -> None:
    """--columns naming a column the file lacks; a null where the input is an integer."""
    schema = pa.schema([("a", pa.float64())])
    with pytest.raises(ConfigError, match="column 'b' is not in the input file"):
        plan_inputs(schema, IRIS_INPUT, columns=["a", "b"])
    table = pa.table({"n": pa.array([1, None], pa.int64())})
    mapping = plan_inputs(table.schema, (TensorSpec("n", "INT64", (-1,)),))
    with pytest.raises(ConfigError, match="column 'n' has 1 null value"):
        mapping.arrays(table)


def test_reading_chunks_of_each_format(tmp_path: Path) -> None:
    """Parquet (several row groups), CSV and JSON lines give the same chunks; a chunk read alone
    equals the same chunk read in order; CSV's integers are read as the floats forced."""
    table = pa.table({"id": np.arange(23), "x": np.arange(23) * 1.5})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5)
    pacsv.write_csv(table, tmp_path / "t.csv")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        source = InputFile(tmp_path / name).typed({"x": pa.float64()})
        chunks = list(source.chunks(7, ["id", "x"]))
        assert [c.num_rows for c in chunks] == [7, 7, 7, 2]
        assert pa.concat_tables(chunks).column("x").to_pylist() == table.column("x").to_pylist()
        assert source.chunk(2, 7, ["id", "x"]).equals(chunks[2])
        assert source.count_rows() == 23


def test_unreadable_and_unknown_inputs(tmp_path: Path) -> None:
    """A missing file, an unknown extension, a file that is not what its name says."""
    with pytest.raises(ConfigError, match="no such input file"):
        InputFile(tmp_path / "none.parquet")
    with pytest.raises(ConfigError, match="the format is read from the extension"):
        InputFile(tmp_path / "data.xlsx")
    (tmp_path / "bad.parquet").write_text("id,x\n1,2\n")
    with pytest.raises(ConfigError, match="cannot read it as parquet"):
        InputFile(tmp_path / "bad.parquet")


def test_writing_each_format(tmp_path: Path) -> None:
    """Vectors stay lists in Parquet and JSON lines (NaN as the literal), one column each in CSV."""
    vectors = pa.FixedSizeListArray.from_arrays(
        pa.array([0.5, 1.0, float("nan"), 2.0], pa.float32()), 2
    )
    table = pa.table({"id": ["a", "b"], "label": [0, 1], "p": vectors})
    for name in ("o.parquet", "o.csv", "o.jsonl"):
        write_atomically([table.slice(0, 1), table.slice(1)], table.schema, tmp_path / name)
    back = pq.read_table(tmp_path / "o.parquet")
    assert (
        back.column("id").to_pylist() == ["a", "b"] and back.schema.field("p").type.list_size == 2
    )
    np.testing.assert_array_equal(back.column("p").to_pylist(), [[0.5, 1.0], [np.nan, 2.0]])
    assert pacsv.read_csv(tmp_path / "o.csv").column_names == ["id", "label", "p[0]", "p[1]"]
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert lines[1] == '{"id":"b","label":1,"p":[NaN,2.0]}'
    assert flat_lists(table).column("p[1]").to_pylist() == [1.0, 2.0]
    assert not list(tmp_path.glob(".*partial"))


def test_checkpoint_resumes_and_refuses_another_job(tmp_path: Path) -> None:
    """Marked chunks survive a new Checkpoint with the same fingerprint; another one is refused
    naming what changed; parts come back in chunk order; remove leaves nothing."""
    output = tmp_path / "out.parquet"
    first = Checkpoint(output, {"model": "iris", "chunk_rows": 10})
    first.open()
    for chunk in (2, 0):
        first.save_part(chunk, pa.table({"chunk": [chunk]}))
        first.mark(chunk, 10)
    first.save_part(1, pa.table({"chunk": [1]}))  # written, never marked: killed before it
    again = Checkpoint(output, {"model": "iris", "chunk_rows": 10})
    again.open()
    assert again.done == {0: 10, 2: 10}
    assert [t.column("chunk")[0].as_py() for t in again.parts()] == [0, 2]
    with pytest.raises(ConfigError, match="another chunk_rows; run with the same input"):
        Checkpoint(output, {"model": "iris", "chunk_rows": 7}).open()
    again.remove()
    assert not again.folder.exists()


def test_file_identity_follows_content(tmp_path: Path) -> None:
    """The input's fingerprint changes with its content, even at the same size."""
    path = tmp_path / "x.csv"
    path.write_text("id\n1\n")
    before = file_identity(path)
    path.write_text("id\n2\n")
    assert file_identity(path)["sha256_ends"] != before["sha256_ends"]
