"""How a shadow answer is compared with the live one (the README's shadow log description `agree`)."""

import numpy as np

from gateway.shadow import agree, compared_outputs
from gateway.types import InferResult, TensorSpec


def test_classifiers_agree_on_labels() -> None:
    """Same labels agree even when probabilities differ; a different label disagrees."""
    live = {"label": np.array([0, 2]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]])}
    same = {"label": np.array([0, 2]), "probabilities": np.array([[0.6, 0.4], [0.4, 0.6]])}
    other = {"label": np.array([0, 1]), "probabilities": live["probabilities"]}
    assert agree(live, same) and not agree(live, other)


def test_scores_agree_on_argmax() -> None:
    """2-D float scores agree when each row's argmax is the same."""
    live = {"scores": np.array([[1.0, 3.0], [5.0, 0.0]], np.float32)}
    assert agree(live, {"scores": np.array([[0.0, 9.0], [1.0, 0.5]], np.float32)})
    assert not agree(live, {"scores": np.array([[4.0, 3.0], [5.0, 0.0]], np.float32)})


def test_other_outputs_need_allclose() -> None:
    """Outputs that are neither labels nor 2-D scores must be close; missing outputs disagree."""
    live = {"y": np.array([1.0, 2.0])}
    assert agree(live, {"y": np.array([1.0, 2.0 + 1e-7])})
    assert not agree(live, {"y": np.array([1.0, 2.5])})
    assert not agree(live, {"z": np.array([1.0, 2.0])})


def test_outputs_pair_by_name_else_by_position() -> None:
    """Same names pair by name; a shadow with none of live's names pairs by declared position."""
    specs = {n: TensorSpec(n, "FP32", (-1,)) for n in ("label", "probabilities")}
    live = InferResult("m", "blue", "live", 1, {"probabilities": np.zeros(1)}, specs)
    assert compared_outputs(live, ["probabilities", "label"]) == [
        ("probabilities", "probabilities")
    ]
    assert compared_outputs(live, ["y", "p"]) == [("probabilities", "p")]
    assert compared_outputs(live, ["only"]) == []
