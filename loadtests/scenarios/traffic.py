"""Request bodies and answer checks for the iris model (pure: no locust, no network)."""

import random
from typing import Any

# Real iris rows (one per class); requests jitter them so every body differs.
IRIS_ROWS = ((5.1, 3.5, 1.4, 0.2), (5.9, 3.0, 4.2, 1.5), (6.7, 3.0, 5.2, 2.3))


def iris_rows(batch: int, rng: random.Random) -> list[list[float]]:
    """`batch` iris-like rows: a real row of a random class plus a little noise."""
    rows = [rng.choice(IRIS_ROWS) for _ in range(batch)]
    return [[round(x + rng.uniform(-0.2, 0.2), 2) for x in row] for row in rows]


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    """Open Inference Protocol v2 request with one FP32 tensor `input` of shape [n, 4]."""
    flat = [x for row in rows for x in row]
    tensor = {"name": "input", "datatype": "FP32", "shape": [len(rows), 4], "data": flat}
    return {"inputs": [tensor]}


def v1_body(rows: list[list[float]]) -> dict[str, Any]:
    """KServe v1 `:predict` request."""
    return {"instances": rows}


def v2_problem(status: int, answer: Any, batch: int) -> str | None:
    """Why a v2 answer is a failure (not 200, no outputs, wrong batch), or None when it is good."""
    if status != 200:
        return f"HTTP {status}"
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not outputs:
        return "answer has no outputs"
    label = next((out for out in outputs if out.get("name") == "label"), outputs[0])
    if label.get("shape", [None])[0] != batch:
        return f"output {label.get('name')!r} has shape {label.get('shape')}, batch was {batch}"
    return None


def v1_problem(status: int, answer: Any, batch: int) -> str | None:
    """Why a v1 answer is a failure (not 200, no predictions, wrong count), or None."""
    if status != 200:
        return f"HTTP {status}"
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not predictions:
        return "answer has no predictions"
    if len(predictions) != batch:
        return f"{len(predictions)} predictions for {batch} instances"
    return None
