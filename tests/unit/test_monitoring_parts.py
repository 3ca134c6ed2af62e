"""Monitoring parts without a server: feature layout, profiles and windows, drift statistics,
reference files and the embedded feedback store."""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import wasserstein_distance

from gateway.errors import ConfigError
from gateway.monitoring.drift import MIN_ROWS, class_statistics, numeric_statistics, psi
from gateway.monitoring.feedback import MemoryFeedback
from gateway.monitoring.layout import Column, Layout, columns, stack
from gateway.monitoring.profiles import (
    SLOTS,
    ClassReference,
    Counts,
    NumericReference,
    Reference,
    Window,
)
from gateway.monitoring.reference_file import read_reference
from gateway.types import TensorSpec

IRIS_INPUT = (TensorSpec("input", "FP32", (-1, 4)),)
IRIS_OUTPUTS = (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3)))


def test_layout_columns_of_2d_tensors_means_of_others_labels_as_classes_and_a_cap() -> None:
    layout = Layout.of(
        (
            *IRIS_INPUT,
            TensorSpec("image", "FP32", (-1, 2, 2)),
            TensorSpec("free", "FP32", (-1, -1)),
        ),
        IRIS_OUTPUTS,
        max_features=32,
    )
    assert [c.name for c in layout.inputs] == [
        "input[0]", "input[1]", "input[2]", "input[3]", "image", "free",
    ]  # fmt: skip
    assert layout.classes == ("label",)
    assert [c.name for c in layout.outputs] == [f"probabilities[{j}]" for j in range(3)]
    capped = Layout.of(IRIS_INPUT, IRIS_OUTPUTS, max_features=2)
    assert [c.name for c in capped.inputs] == ["input[0]", "input[1]"]
    assert [c.name for c in capped.outputs] == ["probabilities[0]"]  # the label takes one place


def test_stack_joins_batches_and_reduces_rows_of_other_sizes_to_means() -> None:
    same = stack([np.ones((2, 3)), np.zeros((1, 3))])
    assert same.shape == (3, 3) and same.dtype == np.float64
    assert stack([np.array([1, 2]), np.array([3])]).tolist() == [[1.0], [2.0], [3.0]]
    ragged = stack([np.ones((1, 2)), np.full((1, 4), 3.0), np.full((1, 2, 2), 5.0)])
    assert ragged.tolist() == [[1.0], [3.0], [5.0]]
    image = {"image": stack([np.arange(8.0).reshape(2, 2, 2)])}
    assert columns(image, (Column("image", "image", None),)).tolist() == [[1.5], [5.5]]


def test_reference_bins_are_quantiles_of_about_equal_share() -> None:
    values = np.random.default_rng(1).normal(10.0, 2.0, 10_000)
    ref = NumericReference.of(np.append(values, [np.nan, np.inf]), bins=10)
    assert ref is not None
    assert len(ref.edges) == 9 and len(ref.shares) == 10
    assert ref.shares == pytest.approx([0.1] * 10, abs=1e-3)
    assert ref.mean == pytest.approx(values.mean()) and ref.std == pytest.approx(values.std())
    assert (ref.low, ref.high) == (values.min(), values.max())
    assert NumericReference.of(np.array([np.nan]), bins=10) is None
    constant = NumericReference.of(np.full(100, 3.0), bins=10)
    assert constant is not None and len(constant.shares) == 2  # repeated quantiles merge


def test_psi_is_the_symmetric_kl_divergence_of_the_shares() -> None:
    reference = np.array([0.25, 0.25, 0.5])
    live = np.array([30.0, 50.0, 20.0])  # counts
    p, q = live / live.sum(), reference
    assert psi(reference, live) == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert psi(reference, reference * 40) == pytest.approx(0.0)
    assert math.isfinite(psi(reference, np.array([0.0, 0.0, 10.0])))  # empty bins: floored


def _counts(reference: NumericReference, values: np.ndarray) -> Counts:
    counts = Counts(["x"], len(reference.shares))
    counts.add_numeric(values[:, None], [reference])
    return counts


def test_numeric_statistics_of_a_shifted_feature() -> None:
    rng = np.random.default_rng(2)
    reference = NumericReference.of(rng.normal(0.0, 1.0, 5000), bins=10)
    assert reference is not None
    same = numeric_statistics(_counts(reference, rng.normal(0.0, 1.0, 2000)), 0, reference)
    moved = numeric_statistics(_counts(reference, rng.normal(2.0, 1.0, 2000)), 0, reference)
    assert same["psi"] is not None and same["psi"] < 0.02
    assert moved["psi"] is not None and moved["psi"] > 1.0
    # Wasserstein in reference standard deviations: a shift of 2 reads about 2 (the bins are
    # represented by their means, so it is close, not exact).
    assert moved["wasserstein"] == pytest.approx(2.0, abs=0.25)
    assert moved["mean"] == pytest.approx(2.0, abs=0.1)
    assert moved["std"] == pytest.approx(1.0, abs=0.1)
    assert moved["out_of_range_ratio"] == pytest.approx(
        np.mean(rng.normal(2.0, 1.0, 200_000) > reference.high), abs=0.02
    )


def test_wasserstein_uses_scipy_on_binned_distributions() -> None:
    reference = NumericReference.of(np.arange(1000.0), bins=4)
    assert reference is not None
    counts = _counts(reference, np.arange(500.0, 1500.0))
    found = numeric_statistics(counts, 0, reference)
    width = len(reference.shares)
    live = counts.bin_counts[0, :width]
    means = np.divide(counts.bin_sums[0, :width], live, out=np.zeros(width), where=live > 0)
    expected = wasserstein_distance(reference.means, means, reference.shares, live)
    assert found["wasserstein"] == pytest.approx(expected / reference.std)


def test_missing_and_too_few_rows() -> None:
    reference = NumericReference.of(np.arange(100.0), bins=5)
    assert reference is not None
    values = np.array([1.0, np.nan, np.inf, -np.inf, 200.0] * 4)
    found = numeric_statistics(_counts(reference, values), 0, reference)
    assert found["missing_ratio"] == pytest.approx(0.2)
    assert found["out_of_range_ratio"] == pytest.approx(0.6)  # both infinities and 200
    assert found["psi"] is None and found["wasserstein"] is None  # fewer than MIN_ROWS
    enough = numeric_statistics(_counts(reference, np.arange(float(MIN_ROWS))), 0, reference)
    assert enough["psi"] is not None
    without = numeric_statistics(_counts(reference, values), 0, None)
    assert without["out_of_range_ratio"] is None and without["missing_ratio"] == 0.2


def test_class_shares_and_psi_with_unseen_classes_as_one_bin() -> None:
    reference = ClassReference.of(np.array([0] * 50 + [1] * 30 + [2] * 20))
    assert reference.classes == [0, 1, 2] and reference.shares == pytest.approx([0.5, 0.3, 0.2])
    same = class_statistics({0: 50.0, 1: 30.0, 2: 20.0}, reference)
    assert same["psi"] == pytest.approx(0.0, abs=1e-6)
    assert same["shares"] == {"0": 0.5, "1": 0.3, "2": 0.2}
    unseen = class_statistics({0: 50.0, 7: 50.0}, reference)
    assert unseen["psi"] > 1.0
    assert class_statistics({0: 3.0}, reference)["psi"] is None  # too few rows


def test_counts_merge_and_survive_json_exactly() -> None:
    reference = NumericReference.of(np.arange(100.0), bins=5)
    a, b = Counts(["x"], 5), Counts(["x"], 5)
    a.add_numeric(np.arange(0.0, 60.0)[:, None], [reference])
    b.add_numeric(np.arange(40.0, 100.0)[:, None], [reference])
    a.add_classes("label", np.array([1, 1, 2]))
    b.add_classes("label", np.array([2, 3]))
    both = Counts(["x"], 5)
    both.add_numeric(np.concatenate([np.arange(0.0, 60.0), np.arange(40.0, 100.0)])[:, None],
                     [reference])  # fmt: skip
    a.merge(Counts.from_dict(b.to_dict()))
    assert a.bin_counts.tolist() == both.bin_counts.tolist()
    assert a.total.tolist() == both.total.tolist() and a.rows.tolist() == [120.0]
    assert a.classes == {"label": {1: 2, 2: 2, 3: 1}}
    with pytest.raises(ValueError):
        Counts.from_dict({**b.to_dict(), "rows": [1.0, 2.0]})


def test_window_keeps_the_last_slots_only() -> None:
    window = Window(["x"], 2, seconds=30.0)  # slots of 1 s
    assert window.slot_seconds == 30.0 / SLOTS
    window.current(100.0).add_numeric(np.ones((5, 1)), [None])
    window.current(110.0).add_numeric(np.ones((3, 1)), [None])
    assert window.total(120.0).rows.tolist() == [8.0]
    assert window.total(130.5).rows.tolist() == [3.0]  # the slot of t=100 slid out
    assert window.total(200.0).rows.tolist() == [0.0]


def test_reference_round_trips_through_json() -> None:
    reference = Reference.build(
        "file.npz",
        (["input[0]"], np.arange(20.0)[:, None]),
        (["p[0]"], np.linspace(0, 1, 20)[:, None]),
        {"label": np.array([0, 1] * 10)},
        bins=4,
    )
    again = Reference.from_dict(reference.to_dict())
    assert again == reference
    assert again.rows == 20 and set(again.classes) == {"label"}


def test_reference_files_npz_csv_parquet(tmp_path: Path) -> None:
    rows = np.arange(12.0).reshape(3, 4)
    np.savez(tmp_path / "any_name.npz", whatever=rows)
    np.savez(tmp_path / "named.npz", input=rows)
    (tmp_path / "rows.csv").write_text("a,b,c,d\n" + "\n".join(",".join(map(str, r)) for r in rows))
    pq.write_table(
        pa.table({name: rows[:, j] for j, name in enumerate("abcd")}), tmp_path / "rows.parquet"
    )
    for name in ("any_name.npz", "named.npz", "rows.csv", "rows.parquet"):
        found = read_reference(tmp_path / name, IRIS_INPUT)
        assert found["input"].dtype == np.float32
        assert found["input"].tolist() == rows.tolist(), name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rows.txt", "1,2", ".npz, .csv or .parquet"),
        ("missing.npz", None, "cannot read"),
        ("wide.csv", "a,b\n1,2\n", "has 2 columns"),
        ("words.csv", "a,b,c,d\nx,y,z,w\n", "cannot read numbers"),
        ("broken.npz", "not a zip", "not a numpy .npz file"),
    ],
)
def test_reference_file_errors_name_the_file_and_reason(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        read_reference(tmp_path / name, IRIS_INPUT)
    assert name in str(raised.value)


async def test_memory_feedback_takes_an_answer_once_and_forgets_it_after_the_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("gateway.monitoring.feedback.time.time", lambda: clock[0])
    store = MemoryFeedback(ttl_s=10.0, max_predictions=100)
    await store.keep("m", "blue", ["a", "b"], [b"1", b"2"])
    await store.keep("m", "green", ["a"], [b"3"])
    assert (await store.take("m", ["a", "zzz"], ["blue", "green"])) == [
        {"blue": b"1", "green": b"3"},
        {},
    ]
    assert await store.take("m", ["a"], ["blue", "green"]) == [{}]  # taken once
    clock[0] += 10.5
    assert await store.take("m", ["b"], ["blue"]) == [{}]  # past the TTL
    await store.add("m", {"blue": {"rows": 2.0}})
    await store.add("m", {"blue": {"rows": 1.0, "correct": 1.0}})
    assert await store.scores("m") == {"blue": {"rows": 3.0, "correct": 1.0}}


async def test_memory_feedback_keeps_at_most_max_predictions() -> None:
    store = MemoryFeedback(ttl_s=3600.0, max_predictions=5)
    for i in range(4):
        await store.keep("m", "blue", [f"{i}-{j}" for j in range(3)], [b"x"] * 3)
    kept = 0
    for i in range(4):
        for j in range(3):
            kept += bool((await store.take("m", [f"{i}-{j}"], ["blue"]))[0])
    assert 0 < kept <= 5
