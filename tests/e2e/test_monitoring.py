"""Monitoring through real gateway processes: drift against a reference file, feedback joined
into online accuracy over 2 workers sharing Redis, bad feedback refused or counted, the CLI."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from support import (
    ADMIN,
    GatewayProcess,
    RedisServer,
    make_constant_classifier,
    wait_until,
)

pytestmark = pytest.mark.e2e

IRIS = load_iris()
FEATURES = IRIS.data.astype(np.float32)  # 150 rows, 4 features; the reference
PSI_THRESHOLD = 0.25  # the README's drift threshold (monitoring.psi_threshold's default)


def _config(tmp_path: Path, model_repo: Path, **settings: Any) -> Path:
    np.savez(tmp_path / "reference.npz", input=FEATURES)
    monitoring = {"reference": str(tmp_path / "reference.npz"), "window_s": 600}
    config = {
        "model_repository": str(model_repo),
        "data_dir": str(tmp_path / "data"),
        "monitor_interval_s": 0.2,
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "constant": {"path": "iris/constant/model.onnx"},
                },
                "routing": {"live": "blue"},
                "monitoring": monitoring,
            }
        },
        **settings,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def monitored_repo(model_repo: Path) -> Path:
    make_constant_classifier(model_repo / "iris" / "constant" / "model.onnx", label=2)
    return model_repo


def _gauges(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{url}/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _psi(url: str, variant: str) -> dict[str, float]:
    return {
        dict(labels)["feature"]: value
        for labels, value in _gauges(url, "gateway_feature_drift").items()
        if dict(labels)["statistic"] == "psi" and dict(labels)["variant"] == variant
    }


def _send_rows(client: httpx.Client, url: str, rows: np.ndarray, batch: int = 10) -> list[str]:
    ids = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(chunk.shape),
                            "data": chunk.tolist()}]}  # fmt: skip
        answer = client.post(f"{url}/v2/models/iris/infer", json=body)
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers["x-request-id"])
    return ids


def _window_rows(url: str, variant: str) -> float:
    rows = _gauges(url, "gateway_monitor_window_rows")
    return rows.get((("model", "iris"), ("variant", variant)), 0.0)


def test_a_feature_moved_by_two_standard_deviations_crosses_the_psi_threshold_alone(
    tmp_path: Path,
    monitored_repo: Path,
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(_config(tmp_path, monitored_repo))
    rng = np.random.default_rng(7)
    like_reference = FEATURES[rng.integers(0, len(FEATURES), 600)]
    # Requests of 100 rows: six answers, well under the monitor's cap of answers profiled a
    # second (PROFILED_PER_S). Sixty of 10 rows, sent back to back, can pass it and be sampled.
    with httpx.Client() as client:
        _send_rows(client, gateway.url, like_reference, batch=100)
        wait_until(lambda: _window_rows(gateway.url, "blue") == 600)
        psi = _psi(gateway.url, "blue")
        assert set(psi) == {"input[0]", "input[1]", "input[2]", "input[3]"}
        assert max(psi.values()) < PSI_THRESHOLD, psi

        shifted = FEATURES[rng.integers(0, len(FEATURES), 600)].copy()
        shifted[:, 2] += 2 * FEATURES[:, 2].std()  # petal length, two standard deviations up
        _send_rows(client, gateway.url, shifted, batch=100)
        wait_until(lambda: _window_rows(gateway.url, "blue") == 1200)

    psi = _psi(gateway.url, "blue")
    assert psi["input[2]"] > PSI_THRESHOLD, psi
    assert max(psi[f] for f in ("input[0]", "input[1]", "input[3]")) < PSI_THRESHOLD, psi
    # Half the window beyond the reference's range, none of the others.
    beyond = {
        dict(labels)["feature"]: value
        for labels, value in _gauges(gateway.url, "gateway_feature_out_of_range_ratio").items()
    }
    assert beyond["input[2]"] > 0.25 and beyond["input[0]"] == 0.0
    report = httpx.get(f"{gateway.url}/admin/models/iris/monitor", headers=ADMIN).json()
    flagged = [row["feature"] for row in report["variants"]["blue"]["inputs"] if row["drift"]]
    assert flagged == ["input[2]"]
    assert report["reference"]["source"] == "reference.npz"
    assert report["reference"]["rows"] == 150


def test_feedback_scores_a_worse_canary_below_live_summed_over_two_workers(
    tmp_path: Path,
    monitored_repo: Path,
    redis_server: RedisServer,
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    config = _config(tmp_path, monitored_repo, redis_url=redis_server.url)
    gateway = start_gateway(config, workers=2)
    httpx.put(
        f"{gateway.url}/admin/models/iris/canary",
        json={"variant": "constant", "weight": 0.5}, headers=ADMIN,
    ).raise_for_status()  # fmt: skip
    # Every request on a fresh connection, so both workers answer some.
    answered: dict[str, tuple[str, int, int]] = {}  # request id -> variant, predicted, truth
    for i in range(200):
        row = i % len(FEATURES)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                            "data": [FEATURES[row].tolist()]}]}  # fmt: skip
        answer = httpx.post(f"{gateway.url}/v2/models/iris/infer", json=body)
        assert answer.status_code == 200
        label = next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"][0]
        answered[answer.headers["x-request-id"]] = (
            answer.headers["x-gateway-variant"], label, int(IRIS.target[row]),
        )  # fmt: skip
    variants = {variant for variant, _, _ in answered.values()}
    assert variants == {"blue", "constant"}

    def kept() -> bool:  # both workers have folded their answers (window rows add up)
        return _window_rows(gateway.url, "blue") + _window_rows(gateway.url, "constant") == 200

    wait_until(kept)
    items = [{"request_id": rid, "truth": truth} for rid, (_, _, truth) in answered.items()]
    joined = 0
    for start in range(0, len(items), 50):  # fresh connections: both workers take feedback
        answer = httpx.post(
            f"{gateway.url}/v2/models/iris/feedback", json=items[start : start + 50]
        )
        assert answer.status_code == 200, answer.text
        joined += answer.json()["joined"]
    assert joined == 200

    expected = {}
    for variant in variants:
        mine = [(p, t) for v, p, t in answered.values() if v == variant]
        expected[variant] = sum(p == t for p, t in mine) / len(mine)
    assert expected["constant"] < expected["blue"]

    def accuracy() -> dict[str, float]:
        found = {
            dict(labels)["variant"]: value
            for labels, value in _gauges(gateway.url, "gateway_online_metric").items()
            if dict(labels)["metric"] == "accuracy"
        }
        return found if set(found) == variants else {}

    # Every scrape, whichever worker answers, shows the exact accuracy over both workers, once
    # each has read the scores again (every monitor_interval_s) after the last feedback landed.
    wait_until(lambda: all(accuracy() == pytest.approx(expected) for _ in range(6)))
    for _ in range(6):
        counts = _gauges(gateway.url, "gateway_feedback_total")
        per_variant = {
            dict(labels)["variant"]: value for labels, value in counts.items()
            if dict(labels)["outcome"] == "joined"
        }  # fmt: skip
        assert per_variant == {
            variant: sum(v == variant for v, _, _ in answered.values()) for variant in variants
        }


BAD_FEEDBACK = [
    ({"truth": 1}, "request_id"),
    ({"request_id": "r1", "truth": "1"}, "truth"),
    ({"request_id": "r1", "truth": True}, "truth"),
    ({"request_id": "r1", "truth": None}, "truth"),
    ({"request_id": "r1", "truth": ["a"]}, "truth"),
    ({"request_id": 7, "truth": 1}, "request_id"),
    ({"request_id": "", "truth": 1}, "request_id"),
    ({"request_id": "r1", "truth": 1, "label": 2}, "label"),
    ([], "body"),
]


def test_feedback_of_the_wrong_shape_is_a_400_naming_the_field_and_scores_nothing(
    tmp_path: Path,
    monitored_repo: Path,
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(_config(tmp_path, monitored_repo))
    url = f"{gateway.url}/v2/models/iris/feedback"

    def online() -> dict[str, Any]:  # the report is computed on the call
        report = httpx.get(f"{gateway.url}/admin/models/iris/monitor", headers=ADMIN).json()
        return report["variants"]["blue"]["online"]

    with httpx.Client() as client:
        for joined, (body, field) in enumerate(BAD_FEEDBACK, start=1):
            (request_id,) = _send_rows(client, gateway.url, FEATURES[:1])
            if isinstance(body, dict) and body.get("request_id") == "r1":
                body = {**body, "request_id": request_id}  # a real id: only the shape is wrong
            answer = client.post(url, json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert field in answer.json()["error"], (body, answer.text)
            assert online()["joined"] == joined - 1, body  # nothing was scored
            # The kept answer is still there: good feedback for it joins afterwards.
            good = client.post(url, json={"request_id": request_id, "truth": 0})
            assert good.json()["joined"] == 1, body
    assert online() == {
        "task": "classification", "joined": len(BAD_FEEDBACK), "rows": len(BAD_FEEDBACK),
        "accuracy": 1.0,
    }  # fmt: skip


def test_unknown_expired_and_repeated_ids_are_unmatched_and_an_unknown_model_is_404(
    tmp_path: Path,
    monitored_repo: Path,
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = start_gateway(_config(tmp_path, monitored_repo, feedback_ttl_s=1.0))
    url = f"{gateway.url}/v2/models/iris/feedback"
    with httpx.Client() as client:
        (fresh,) = _send_rows(client, gateway.url, FEATURES[:1])
        first = client.post(url, json={"request_id": fresh, "truth": 0}).json()
        again = client.post(url, json={"request_id": fresh, "truth": 0}).json()
        unknown = client.post(url, json={"request_id": "never-answered", "truth": 0}).json()
        # 30 answers at once; feedback for one after the other, 0.3 s apart: the first joins,
        # and once the TTL (1 s) has passed they stop joining, for good.
        old = _send_rows(client, gateway.url, FEATURES[:30], batch=1)
        outcomes = []

        def past_ttl() -> bool:
            request_id = old[len(outcomes)]
            joined = client.post(url, json={"request_id": request_id, "truth": 0}).json()["joined"]
            outcomes.append(joined)
            return len(outcomes) >= 3 and outcomes[-3:] == [0, 0, 0]

        wait_until(past_ttl, timeout=9, interval=0.3)
        missing_model = client.post(
            f"{gateway.url}/v2/models/nope/feedback", json={"request_id": fresh, "truth": 0}
        )
    assert first["joined"] == 1 and first["results"][0]["variants"] == ["blue"]
    assert again == {"joined": 0, "unmatched": 1, "results": [
        {"request_id": fresh, "outcome": "unmatched", "variants": []}]}  # fmt: skip
    assert unknown["unmatched"] == 1
    assert outcomes[0] == 1 and 0 in outcomes
    first_expired = outcomes.index(0)
    assert outcomes[first_expired:] == [0] * (len(outcomes) - first_expired)
    assert missing_model.status_code == 404
    unmatched = _gauges(gateway.url, "gateway_feedback_total")
    assert unmatched[(("model", "iris"), ("outcome", "unmatched"), ("variant", ""))] >= 3


def test_cli_monitor_prints_the_drift_table_and_pins_a_reference_from_live(
    tmp_path: Path,
    monitored_repo: Path,
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    config = _config(tmp_path, monitored_repo)
    raw = yaml.safe_load(config.read_text())
    del raw["models"]["iris"]["monitoring"]["reference"]  # no reference: pin one from live
    config.write_text(yaml.safe_dump(raw))
    gateway = start_gateway(config)
    env = {"GATEWAY_ADMIN_TOKEN": "secret", "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--url", gateway.url],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    before = cli("monitor", "iris")
    assert before.returncode == 0, before.stderr
    assert "reference none" in before.stdout
    refused = cli("monitor", "iris", "--pin-reference")
    assert refused.returncode == 1 and "no live rows" in refused.stderr

    with httpx.Client() as client:
        ids = _send_rows(client, gateway.url, FEATURES, batch=15)
    wait_until(lambda: _window_rows(gateway.url, "blue") == 150)
    pinned = cli("monitor", "iris", "--pin-reference", "--rows", "120")
    assert pinned.returncode == 0, pinned.stderr
    table = cli("monitor", "iris")
    assert "reference live:blue (120 rows)" in table.stdout
    assert "input[2]" in table.stdout and "PSI" in table.stdout
    truth = ",".join(str(t) for t in IRIS.target[:15])
    sent = cli("feedback", "iris", f"{ids[0]}={truth}", "unknown=1")
    assert sent.returncode == 0, sent.stderr
    assert '"joined": 1' in sent.stdout and '"unmatched": 1' in sent.stdout
    bad = cli("feedback", "iris", "no-equals-sign")
    assert bad.returncode != 0 and "REQUEST_ID=NUMBER" in bad.stderr


def test_a_reference_file_that_cannot_serve_stops_start_up_naming_the_field(
    tmp_path: Path, monitored_repo: Path
) -> None:
    config = _config(tmp_path, monitored_repo)
    (tmp_path / "reference.npz").write_bytes(b"not a zip file")
    started = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2
    assert "models.iris.monitoring.reference" in started.stderr
    assert "reference.npz" in started.stderr and "Traceback" not in started.stderr
