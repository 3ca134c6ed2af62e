"""(Re)create the bundled example model repository.

The layout follows the Triton model-repository convention::

    <out>/<model>/<version>/model.onnx

Models produced:

* ``iris/1`` -- scikit-learn ``LogisticRegression``
* ``iris/2`` -- scikit-learn ``GradientBoostingClassifier``
* ``iris/3`` -- scikit-learn ``MLPClassifier``
* ``mlp/1``  -- a 64-256-256-10 float32 MLP built with ``onnx.helper``
* ``heavy/1`` -- a 512-2048-2048-512 float32 MLP for benchmarks (about 1 ms per batch-1 run on
  one core), whose 25 MB of weights are computed from 56 KB of constants at load

All models are deterministic: training uses fixed seeds and the free-form
metadata fields of the ONNX protobuf are pinned, so re-running the script is
intended to produce byte-identical files.

Usage::

    python models/make_models.py [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parent
MODEL_FILENAME = "model.onnx"

PRODUCER_NAME = "model-gateway/make_models"
PRODUCER_VERSION = "1"
MODEL_DOMAIN = "gateway.examples"

IRIS_TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
IRIS_N_FEATURES = 4
IRIS_INPUT_NAME = "input"
IRIS_LABEL_NAME = "label"
IRIS_PROBA_NAME = "probabilities"

MLP_LAYER_SIZES: tuple[int, ...] = (64, 256, 256, 10)
MLP_SEED = 0
MLP_OPSET = 17
MLP_IR_VERSION = 8
MLP_INPUT_NAME = "input"
MLP_OUTPUT_NAME = "scores"

HEAVY_LAYER_SIZES: tuple[int, ...] = (512, 2048, 2048, 512)
HEAVY_SEED = 0
# Each weight is fmod(a[i] * b[j], scale): the magnitudes of a and b make the product span
# thousands of periods of `scale`, so its remainder looks uniform in (-scale, scale).
HEAVY_ROW_RANGE = (100.0, 1000.0)
HEAVY_COLUMN_RANGE = (10.0, 100.0)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #
def model_path(out_dir: pathlib.Path, name: str, version: int) -> pathlib.Path:
    """Return the Triton-style path ``<out_dir>/<name>/<version>/model.onnx``."""
    return out_dir / name / str(version) / MODEL_FILENAME


def normalize_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Deduplicate ``opset_import`` (highest version per domain) and sort it by domain.

    skl2onnx collects the opsets in a set, so their order (and hence the serialized
    bytes) depends on string-hash randomization; sorting makes the output stable.
    """
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(opset.version, versions.get(opset.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(
        helper.make_opsetid(domain, versions[domain]) for domain in sorted(versions)
    )
    return model


def normalize_metadata(model: onnx.ModelProto, graph_name: str, doc: str) -> onnx.ModelProto:
    """Pin free-form metadata and opset order so the serialized bytes are reproducible."""
    normalize_opsets(model)
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    model.domain = MODEL_DOMAIN
    model.model_version = 1
    model.doc_string = doc
    model.graph.name = graph_name
    model.graph.doc_string = ""
    del model.metadata_props[:]
    return model


def save_model(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    """Validate ``model`` and write it to ``path`` (creating parent folders)."""
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


# --------------------------------------------------------------------------- #
# Iris (scikit-learn -> skl2onnx)
# --------------------------------------------------------------------------- #
def load_iris_data() -> tuple[FloatArray, IntArray]:
    """Return all 150 iris rows as float32 features and int64 labels."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    features = np.asarray(bunch.data, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return features, labels


def make_logistic_regression() -> Any:
    """Return an untrained ``LogisticRegression`` (iris version 1)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def make_gradient_boosting() -> Any:
    """Return an untrained ``GradientBoostingClassifier`` (iris version 2)."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(random_state=0, n_estimators=50)


def make_mlp_classifier() -> Any:
    """Return an untrained ``MLPClassifier`` (iris version 3)."""
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=2000)


IRIS_VERSIONS: dict[int, Callable[[], Any]] = {
    1: make_logistic_regression,
    2: make_gradient_boosting,
    3: make_mlp_classifier,
}


def convert_iris_model(estimator: Any, graph_name: str) -> onnx.ModelProto:
    """Convert a fitted iris classifier to ONNX with tensor (non-zipmap) outputs."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        estimator,
        name=graph_name,
        initial_types=[(IRIS_INPUT_NAME, FloatTensorType([None, IRIS_N_FEATURES]))],
        target_opset=dict(IRIS_TARGET_OPSET),
        options={id(estimator): {"zipmap": False}},
    )
    model: onnx.ModelProto = onx
    _check_iris_outputs(model)
    return model


def _check_iris_outputs(model: onnx.ModelProto) -> None:
    """Raise ``ValueError`` unless the outputs are ``label`` and ``probabilities``."""
    names = [out.name for out in model.graph.output]
    expected = [IRIS_LABEL_NAME, IRIS_PROBA_NAME]
    if names != expected:
        raise ValueError(f"unexpected iris output names {names!r}, expected {expected!r}")


def build_iris(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Train every iris version and write ``<out_dir>/iris/<v>/model.onnx``."""
    features, labels = load_iris_data()
    written: list[pathlib.Path] = []
    for version, factory in IRIS_VERSIONS.items():
        estimator = factory()
        estimator.fit(features, labels)
        name = f"iris_v{version}_{type(estimator).__name__}"
        model = convert_iris_model(estimator, name)
        doc = f"iris classifier v{version}: {type(estimator).__name__}"
        normalize_metadata(model, name, doc)
        written.append(save_model(model, model_path(out_dir, "iris", version)))
    return written


# --------------------------------------------------------------------------- #
# MLP (hand-built with onnx.helper)
# --------------------------------------------------------------------------- #
def init_mlp_weights(
    sizes: Sequence[int], seed: int = MLP_SEED
) -> list[tuple[FloatArray, FloatArray]]:
    """Draw ``(weight, bias)`` pairs per layer, scaled by ``1/sqrt(fan_in)``."""
    rng = np.random.default_rng(seed)
    layers: list[tuple[FloatArray, FloatArray]] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        scale = 1.0 / np.sqrt(fan_in)
        weight = (rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * scale).astype(np.float32)
        layers.append((weight, bias))
    return layers


def _dense_nodes(index: int, source: str, target: str, relu: bool) -> list[onnx.NodeProto]:
    """Return the ``MatMul`` + ``Add`` (+ ``Relu``) nodes for dense layer ``index``."""
    w_name, b_name = f"W{index}", f"B{index}"
    mm_out, add_out = f"matmul{index}", f"dense{index}"
    final = add_out if relu else target
    nodes = [
        helper.make_node("MatMul", [source, w_name], [mm_out], name=f"MatMul{index}"),
        helper.make_node("Add", [mm_out, b_name], [final], name=f"Add{index}"),
    ]
    if relu:
        nodes.append(helper.make_node("Relu", [add_out], [target], name=f"Relu{index}"))
    return nodes


def make_mlp_graph(layers: Sequence[tuple[FloatArray, FloatArray]]) -> onnx.GraphProto:
    """Assemble the MLP graph: ReLU after every layer except the last (no softmax)."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    source = MLP_INPUT_NAME
    last = len(layers) - 1
    for index, (weight, bias) in enumerate(layers):
        target = MLP_OUTPUT_NAME if index == last else f"hidden{index}"
        nodes.extend(_dense_nodes(index, source, target, relu=index != last))
        initializers.append(numpy_helper.from_array(weight, name=f"W{index}"))
        initializers.append(numpy_helper.from_array(bias, name=f"B{index}"))
        source = target
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    graph_input = helper.make_tensor_value_info(MLP_INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])
    graph_output = helper.make_tensor_value_info(
        MLP_OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out]
    )
    return helper.make_graph(nodes, "mlp", [graph_input], [graph_output], initializers)


def make_mlp_model(sizes: Sequence[int] = MLP_LAYER_SIZES, seed: int = MLP_SEED) -> onnx.ModelProto:
    """Build, check and return the example MLP ``ModelProto``."""
    graph = make_mlp_graph(init_mlp_weights(sizes, seed))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", MLP_OPSET)],
        ir_version=MLP_IR_VERSION,
    )
    sizes_text = "-".join(str(size) for size in sizes)
    normalize_metadata(model, "mlp", f"random {sizes_text} float32 MLP (seed={seed})")
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mlp(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write ``<out_dir>/mlp/1/model.onnx``."""
    return [save_model(make_mlp_model(), model_path(out_dir, "mlp", 1))]


# --------------------------------------------------------------------------- #
# Heavy MLP (weights computed in the graph, folded by onnxruntime at load)
# --------------------------------------------------------------------------- #
# A plain file would hold 25 MB of weights. Instead each weight matrix is one `Mul` (outer
# product of a column and a row vector) and one `Mod` (fmod by the layer's scale) of constants:
# onnxruntime's constant folding, on at every graph optimisation level but "disabled", runs
# them once while the session loads and keeps the results as initializers, so a run costs what
# it would with stored weights. Both ops are exact in IEEE arithmetic (one rounded product, an
# exact remainder), so the folded weights are the same bits on every machine and every load.
# A runtime with graph optimisation disabled would recompute them on every run (~70 ms).
# Two ops also keep the loaded process as small as with stored weights (93 MB against 92 MB
# for a session alone): a chain of six ops per matrix (integer hash, cast, scale, shift) left it
# ~100 MB larger, its temporaries freed by onnxruntime but kept by glibc's malloc.
HeavyFactors = tuple[FloatArray, FloatArray, np.float32]


def init_heavy_factors(
    sizes: Sequence[int] = HEAVY_LAYER_SIZES, seed: int = HEAVY_SEED
) -> list[tuple[HeavyFactors, HeavyFactors]]:
    """Draw the (weight, bias) factors of every layer: rows, columns and scale of each."""
    rng = np.random.default_rng(seed)

    def factors(rows: tuple[int, ...], columns: int, fan_in: int) -> HeavyFactors:
        signed = [-1.0, 1.0]
        a = rng.uniform(*HEAVY_ROW_RANGE, rows) * rng.choice(signed, rows)
        b = rng.uniform(*HEAVY_COLUMN_RANGE, columns) * rng.choice(signed, columns)
        # Uniform in (-scale, scale) has the variance 1 / fan_in of the mlp's normal weights.
        scale = np.float32(np.sqrt(3.0 / fan_in))
        return a.astype(np.float32), b.astype(np.float32), scale

    # A weight's rows are a column vector (fan_in, 1); a bias's are one value, shape (1,).
    return [
        (factors((fan_in, 1), fan_out, fan_in), factors((1,), fan_out, fan_in))
        for fan_in, fan_out in itertools.pairwise(sizes)
    ]


def heavy_tensor(factors: HeavyFactors) -> FloatArray:
    """The weights (or bias) that `factors` make, as onnxruntime folds them."""
    a, b, scale = factors
    return np.fmod(a * b, scale)


def _generated_tensor(
    name: str, factors: HeavyFactors
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing tensor `name` from its factors, and the factors as initializers."""
    a, b, scale = factors
    constants = [
        numpy_helper.from_array(a, name=f"{name}_rows"),
        numpy_helper.from_array(b, name=f"{name}_columns"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), name=f"{name}_scale"),
    ]
    nodes = [
        helper.make_node(
            "Mul", [f"{name}_rows", f"{name}_columns"], [f"{name}_product"], name=f"{name}_Mul"
        ),
        helper.make_node(
            "Mod", [f"{name}_product", f"{name}_scale"], [name], name=f"{name}_Mod", fmod=1
        ),
    ]
    return nodes, constants


def make_heavy_graph(layers: Sequence[tuple[HeavyFactors, HeavyFactors]]) -> onnx.GraphProto:
    """Assemble the heavy MLP: generated weights, ReLU after every layer except the last."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    source = MLP_INPUT_NAME
    last = len(layers) - 1
    for index, (weight, bias) in enumerate(layers):
        for name, factors in ((f"W{index}", weight), (f"B{index}", bias)):
            generated, constants = _generated_tensor(name, factors)
            nodes.extend(generated)
            initializers.extend(constants)
        target = MLP_OUTPUT_NAME if index == last else f"hidden{index}"
        nodes.extend(_dense_nodes(index, source, target, relu=index != last))
        source = target
    n_in, n_out = layers[0][0][0].shape[0], layers[-1][0][1].shape[0]
    graph_input = helper.make_tensor_value_info(MLP_INPUT_NAME, TensorProto.FLOAT, ["batch", n_in])
    graph_output = helper.make_tensor_value_info(
        MLP_OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_out]
    )
    return helper.make_graph(nodes, "heavy", [graph_input], [graph_output], initializers)


def make_heavy_model(
    sizes: Sequence[int] = HEAVY_LAYER_SIZES, seed: int = HEAVY_SEED
) -> onnx.ModelProto:
    """Build, check and return the heavy benchmark MLP ``ModelProto``."""
    graph = make_heavy_graph(init_heavy_factors(sizes, seed))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", MLP_OPSET)],
        ir_version=MLP_IR_VERSION,
    )
    sizes_text = "-".join(str(size) for size in sizes)
    doc = (
        f"{sizes_text} float32 MLP (seed={seed}); weights fmod(a[i] * b[j], scale), "
        "computed from the constants by onnxruntime's constant folding at load"
    )
    normalize_metadata(model, "heavy", doc)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_heavy(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write ``<out_dir>/heavy/1/model.onnx``."""
    return [save_model(make_heavy_model(), model_path(out_dir, "heavy", 1))]


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #
def build_all(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Create every example model under ``out_dir`` and return the written paths."""
    out_dir = pathlib.Path(out_dir)
    return build_iris(out_dir) + build_mlp(out_dir) + build_heavy(out_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=DEFAULT_OUT_DIR,
        help=f"model repository root (default: {DEFAULT_OUT_DIR})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build all models and print what was written."""
    args = parse_args(argv)
    for path in build_all(args.out):
        print(f"{path}  ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
