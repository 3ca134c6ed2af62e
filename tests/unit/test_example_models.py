"""Tests for ``models/make_models.py`` and the committed example model repository."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("skl2onnx")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
SCRIPT_PATH = MODELS_DIR / "make_models.py"

IRIS_VERSIONS = (1, 2, 3)
ALL_MODELS = (("iris", 1), ("iris", 2), ("iris", 3), ("mlp", 1), ("heavy", 1))
MLP_ROWS = 32
MLP_FEATURES = 64
HEAVY_FEATURES = 512
HEAVY_MAX_FILE_BYTES = 100_000  # its 25 MB of weights are computed at load

FloatArray = npt.NDArray[np.float32]


def _load_script() -> ModuleType:
    """Import ``models/make_models.py`` by file path."""
    spec = importlib.util.spec_from_file_location("make_models", SCRIPT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(path: pathlib.Path) -> Any:
    """Open an onnxruntime CPU session for ``path``."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: pathlib.Path, data: FloatArray) -> dict[str, np.ndarray]:
    """Run the model at ``path`` on ``data`` and return its outputs by name."""
    sess = _session(path)
    names = [out.name for out in sess.get_outputs()]
    results = sess.run(names, {sess.get_inputs()[0].name: data})
    return dict(zip(names, results, strict=True))


def _model_file(root: pathlib.Path, name: str, version: int) -> pathlib.Path:
    """Return ``<root>/<name>/<version>/model.onnx``."""
    return root / name / str(version) / "model.onnx"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """Run ``build_all`` once into a fresh temporary repository; return (root, written)."""
    out = tmp_path_factory.mktemp("model_repo")
    written: list[pathlib.Path] = _load_script().build_all(out)
    return out, written


@pytest.fixture(scope="module")
def fresh_repo(built: tuple[pathlib.Path, list[pathlib.Path]]) -> pathlib.Path:
    """Return the root of the freshly built model repository."""
    return built[0]


@pytest.fixture(scope="module")
def iris() -> tuple[FloatArray, np.ndarray]:
    """Return the 150 iris rows (float32) and their labels."""
    bunch = sklearn_datasets.load_iris()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def test_build_all_writes_expected_files(built: tuple[pathlib.Path, list[pathlib.Path]]) -> None:
    """build_all(tmp_path) writes and returns exactly the five Triton-style model files."""
    root, written = built
    expected = {_model_file(root, n, v) for n, v in ALL_MODELS}
    assert len(written) == len(expected)
    assert set(written) == expected
    assert all(path.is_file() and path.stat().st_size > 0 for path in written)


@pytest.mark.parametrize("version", IRIS_VERSIONS)
def test_iris_fresh_matches_committed(
    fresh_repo: pathlib.Path, iris: tuple[FloatArray, np.ndarray], version: int
) -> None:
    """Fresh and committed iris models agree on labels and probabilities for all rows.

    Labels must match exactly. Probabilities may move in the third decimal: scikit-learn's
    solvers stop at a tolerance, and where they stop changes between releases (1.9 moved the
    logistic regression's probabilities by up to 6e-4 from the committed build)."""
    features, _ = iris
    fresh = _run(_model_file(fresh_repo, "iris", version), features)
    committed = _run(_model_file(MODELS_DIR, "iris", version), features)
    np.testing.assert_array_equal(fresh["label"], committed["label"])
    np.testing.assert_allclose(fresh["probabilities"], committed["probabilities"], atol=2e-3)


def test_mlp_fresh_matches_committed(fresh_repo: pathlib.Path) -> None:
    """Fresh and committed mlp models give the same scores on 32 fixed random rows."""
    rows = np.random.default_rng(1234).standard_normal((MLP_ROWS, MLP_FEATURES))
    data = rows.astype(np.float32)
    fresh = _run(_model_file(fresh_repo, "mlp", 1), data)
    committed = _run(_model_file(MODELS_DIR, "mlp", 1), data)
    assert fresh["scores"].shape == (MLP_ROWS, 10)
    np.testing.assert_allclose(fresh["scores"], committed["scores"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", IRIS_VERSIONS)
def test_iris_committed_accuracy(iris: tuple[FloatArray, np.ndarray], version: int) -> None:
    """Each committed iris model reaches >= 0.9 accuracy with row-normalized probabilities."""
    features, labels = iris
    out = _run(_model_file(MODELS_DIR, "iris", version), features)
    assert float(np.mean(out["label"] == labels)) >= 0.9
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(axis=1))


@pytest.mark.parametrize("version", IRIS_VERSIONS)
def test_iris_committed_signature(version: int) -> None:
    """Committed iris models declare input/label/probabilities names, dtypes and shapes."""
    sess = _session(_model_file(MODELS_DIR, "iris", version))
    inputs = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outputs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    assert inputs == [("input", "tensor(float)", [None, 4])]
    assert outputs == [
        ("label", "tensor(int64)", [None]),
        ("probabilities", "tensor(float)", [None, 3]),
    ]


def test_mlp_committed_signature() -> None:
    """The committed mlp model declares input[batch,64] FP32 and scores[batch,10] FP32."""
    sess = _session(_model_file(MODELS_DIR, "mlp", 1))
    inputs = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outputs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    assert inputs == [("input", "tensor(float)", ["batch", MLP_FEATURES])]
    assert outputs == [("scores", "tensor(float)", ["batch", 10])]


@pytest.fixture(scope="module")
def heavy_rows() -> FloatArray:
    """32 fixed random rows for the heavy model."""
    rows = np.random.default_rng(1234).standard_normal((MLP_ROWS, HEAVY_FEATURES))
    return rows.astype(np.float32)


def test_heavy_fresh_matches_committed(fresh_repo: pathlib.Path, heavy_rows: FloatArray) -> None:
    """Fresh and committed heavy models give exactly the same scores on 32 fixed rows."""
    fresh = _run(_model_file(fresh_repo, "heavy", 1), heavy_rows)
    committed = _run(_model_file(MODELS_DIR, "heavy", 1), heavy_rows)
    assert fresh["scores"].shape == (MLP_ROWS, HEAVY_FEATURES)
    np.testing.assert_array_equal(fresh["scores"], committed["scores"])


def test_heavy_same_bits_on_every_load(heavy_rows: FloatArray) -> None:
    """Two loads of the committed heavy model fold the same weights: bit-identical scores."""
    path = _model_file(MODELS_DIR, "heavy", 1)
    np.testing.assert_array_equal(
        _run(path, heavy_rows)["scores"], _run(path, heavy_rows)["scores"]
    )


def test_heavy_weights_are_folded_at_load(tmp_path: pathlib.Path) -> None:
    """onnxruntime's constant folding leaves only the dense layers: weights are initializers."""
    import onnx

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(
        str(_model_file(MODELS_DIR, "heavy", 1)), options, providers=["CPUExecutionProvider"]
    )
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    assert {node.op_type for node in folded.graph.node} <= {"MatMul", "Add", "Gemm", "Relu"}
    sizes = sorted(int(np.prod(init.dims)) for init in folded.graph.initializer)
    assert sizes == [512, 2048, 2048, 512 * 2048, 512 * 2048, 2048 * 2048]


def test_heavy_matches_numpy_forward_pass(heavy_rows: FloatArray) -> None:
    """The folded model computes the MLP of the script's weights (fmod(a * b, scale))."""
    script = _load_script()
    layers = script.init_heavy_factors()
    hidden = heavy_rows
    for index, (weight, bias) in enumerate(layers):
        hidden = hidden @ script.heavy_tensor(weight) + script.heavy_tensor(bias)
        if index < len(layers) - 1:
            hidden = np.maximum(hidden, 0.0)
    scores = _run(_model_file(MODELS_DIR, "heavy", 1), heavy_rows)["scores"]
    np.testing.assert_allclose(scores, hidden, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(scores)) and 0.1 < float(scores.std()) < 10.0


def test_heavy_committed_signature_and_size() -> None:
    """The committed heavy model declares input[batch,512] and scores[batch,512], in < 100 KB."""
    path = _model_file(MODELS_DIR, "heavy", 1)
    sess = _session(path)
    inputs = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outputs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    assert inputs == [("input", "tensor(float)", ["batch", HEAVY_FEATURES])]
    assert outputs == [("scores", "tensor(float)", ["batch", HEAVY_FEATURES])]
    assert path.stat().st_size < HEAVY_MAX_FILE_BYTES
