"""Model-monitoring demo: a real gateway run, drifted on purpose, drawn as four dashboard panels.

```sh
.venv/bin/python loadtests/monitoring_demo.py [--out docs/monitoring.png]
```

The script starts its own `gateway serve` (embedded mode, no Redis, one worker, a free port on
127.0.0.1) on a temporary copy of `models/iris` with three variants of model `iris`: `blue` (live,
logistic regression), `bad` (canary at 30%, a constant model that always answers class 2) and
`green` (shadow of every request, gradient boosting). The monitoring reference is the iris data
set; profiles cover 30 s and are folded every 0.5 s.

- Phase A (40 s): ~20 requests/s of 5 iris rows sampled from the reference; about 1 s after each
  answer the true labels are sent as feedback under the answer's `x-request-id`.
- Phase B (40 s): the same, with 2 standard deviations added to feature 2 (petal length).

Every second `GET /metrics` is scraped for input drift (PSI), predicted class shares, online
accuracy and out-of-range ratios; the figure plots those values only (nothing is invented) and
the final values are printed. The gateway is stopped at the end; the run takes about 90 s.
"""

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's model helpers (the test extras)
from support import make_constant_classifier  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "monitoring.png"
READY_TIMEOUT_S = 60.0
PHASE_S = 40.0
RATE_PER_S = 20.0
BATCH = 5
FEEDBACK_DELAY_S = 1.0
SCRAPE_EVERY_S = 1.0
DRIFT_FEATURE = 2
DRIFT_SD = 2.0
FEATURES = [f"input[{i}]" for i in range(4)]
FEATURE_NAMES = ["sepal length", "sepal width", "petal length", "petal width"]
VARIANT_ROLES = {"blue": "blue (live)", "green": "green (shadow)", "bad": "bad (canary 30%)"}
VARIANT_COLOURS = {"blue": "tab:blue", "green": "tab:green", "bad": "tab:red"}
CLASSES = ("0", "1", "2")
CLASS_COLOURS = ["tab:purple", "tab:orange", "tab:olive"]

# metric -> label tuple -> [(elapsed s, value)]
Series = dict[tuple[str, ...], list[tuple[float, float]]]


# -- the gateway ---------------------------------------------------------------------------------


def write_config(folder: Path, reference: np.ndarray) -> Path:
    """A temp model repository (iris + the bad model), the reference file and the config."""
    repository = folder / "models"
    shutil.copytree(ROOT / "models" / "iris", repository / "iris")
    make_constant_classifier(repository / "iris" / "bad" / "model.onnx", label=2)
    np.savez(folder / "reference.npz", input=reference)
    config = {
        "model_repository": str(repository),
        "data_dir": str(folder / "data"),
        "monitor_interval_s": 0.5,
        "models": {
            "iris": {
                "variants": {
                    "blue": {"path": "iris/1/model.onnx"},
                    "green": {"path": "iris/2/model.onnx"},
                    "bad": {"path": "iris/bad/model.onnx"},
                },
                "routing": {
                    "live": "blue",
                    "canary": {"variant": "bad", "weight": 0.3},
                    "shadows": [{"variant": "green", "sample": 1.0}],
                },
                "monitoring": {"reference": str(folder / "reference.npz"), "window_s": 30},
            }
        },
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "GATEWAY_ADMIN_TOKEN": "demo"},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # Its own session: reaches any worker it started. SIGINT: no drain (README "Graceful
    # shutdown"), nothing balances traffic to it.
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if client.get("/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway not ready after {READY_TIMEOUT_S:g} s; see {log}")
        time.sleep(0.1)


# -- traffic and scraping ------------------------------------------------------------------------


@dataclass
class Run:
    """What the traffic loop sends and what the scrapes record."""

    client: httpx.Client
    data: np.ndarray
    target: np.ndarray
    rng: np.random.Generator
    started: float = field(default_factory=time.monotonic)
    pending: list[tuple[float, str, list[int]]] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=lambda: defaultdict(lambda: {}))
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    answered_by: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    feedback_unmatched: int = 0
    phase_b_at: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def infer(self, shift: float) -> None:
        rows = self.rng.integers(0, len(self.data), BATCH)
        batch = self.data[rows].copy()
        batch[:, DRIFT_FEATURE] += shift
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [BATCH, 4],
                            "data": batch.tolist()}]}  # fmt: skip
        answer = self.client.post("/v2/models/iris/infer", json=body)
        self.statuses["infer"][answer.status_code] += 1
        if answer.status_code != 200:
            return
        self.answered_by[answer.headers.get("x-gateway-variant", "?")] += 1
        due = time.monotonic() + FEEDBACK_DELAY_S
        truth = [int(t) for t in self.target[rows]]
        self.pending.append((due, answer.headers["x-request-id"], truth))

    def send_feedback(self, force: bool = False) -> None:
        now = time.monotonic()
        due = [item for item in self.pending if force or item[0] <= now]
        if not due:
            return
        self.pending = [item for item in self.pending if not (force or item[0] <= now)]
        body = [{"request_id": request_id, "truth": truth} for _, request_id, truth in due]
        answer = self.client.post("/v2/models/iris/feedback", json=body)
        self.statuses["feedback"][answer.status_code] += 1
        if answer.status_code == 200:
            self.feedback_unmatched += int(answer.json()["unmatched"])

    def scrape(self) -> None:
        answer = self.client.get("/metrics")
        self.statuses["metrics"][answer.status_code] += 1
        if answer.status_code != 200:
            return
        now = self.elapsed()
        found: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                key = _sample_key(sample.name, sample.labels)
                if key is not None:
                    found[sample.name][key] = sample.value
        # A class that no row of a variant's window was predicted as has no sample: its share is
        # 0 (the gateway lists the shares of the classes it counted).
        shares = found["gateway_output_class_ratio"]
        for variant in {variant for variant, _ in shares}:
            for klass in CLASSES:
                shares.setdefault((variant, klass), 0.0)
        for name, values in found.items():
            for key, value in values.items():
                self.series[name].setdefault(key, []).append((now, value))

    def phase(self, seconds: float, shift: float, next_scrape: float) -> float:
        """Send traffic for `seconds` at RATE_PER_S; return when the next scrape is due."""
        end = time.monotonic() + seconds
        next_request = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_request:
                self.infer(shift)
                next_request += 1.0 / RATE_PER_S
            self.send_feedback()
            if now >= next_scrape:
                self.scrape()
                next_scrape += SCRAPE_EVERY_S
            time.sleep(max(0.0, min(next_request, next_scrape, end) - time.monotonic()))
        return next_scrape


def _sample_key(name: str, labels: dict[str, str]) -> tuple[str, ...] | None:
    """The labels kept of the four recorded metrics, None for everything else."""
    if labels.get("model") != "iris":
        return None
    if name == "gateway_feature_drift" and labels.get("statistic") == "psi":
        return labels["variant"], labels["feature"]
    if name == "gateway_output_class_ratio" and labels.get("output") == "label":
        return labels["variant"], labels["class"]
    if name == "gateway_online_metric" and labels.get("metric") == "accuracy":
        return (labels["variant"],)
    if name == "gateway_feature_out_of_range_ratio":
        return labels["variant"], labels["feature"]
    return None


def drive(client: httpx.Client) -> Run:
    iris = load_iris()
    data = iris.data.astype(np.float32)
    run = Run(client, data, iris.target, np.random.default_rng(7))
    shift = DRIFT_SD * float(data[:, DRIFT_FEATURE].std())
    next_scrape = run.phase(PHASE_S, 0.0, time.monotonic())
    run.phase_b_at = run.elapsed()
    run.phase(PHASE_S, shift, next_scrape)
    deadline = time.monotonic() + FEEDBACK_DELAY_S + 2.0
    while run.pending and time.monotonic() < deadline:  # the last answers' feedback, when due
        run.send_feedback()
        time.sleep(0.05)
    run.send_feedback(force=True)
    time.sleep(1.0)  # one monitor interval and a bit, so the last feedback is folded in
    run.scrape()
    return run


# -- the figure ----------------------------------------------------------------------------------


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [t for t, _ in points], [v for _, v in points]


def _mark_phase_b(axes: Axes, at: float) -> None:
    axes.axvline(at, color="black", linestyle=":", linewidth=1.2)
    axes.text(at + 0.8, 0.97, f"petal length +{DRIFT_SD:g} sd", va="top", fontsize=8,
              transform=axes.get_xaxis_transform())  # fmt: skip


def _drift_panel(axes: Axes, run: Run) -> None:
    psi = run.series["gateway_feature_drift"]
    for feature, name in zip(FEATURES, FEATURE_NAMES, strict=True):
        if ("blue", feature) in psi:
            axes.plot(*_xy(psi["blue", feature]), label=f"{feature} {name}")
    for level, text, colour in ((0.1, "moderate", "tab:orange"), (0.25, "significant", "red")):
        axes.axhline(level, color=colour, linestyle="--", linewidth=1)
        axes.text(1, level, f" {text} ({level:g})", color=colour, va="bottom", fontsize=8)
    axes.set_yscale("symlog", linthresh=0.01)  # phase A's PSI (~0.01) and B's (>1) both show
    axes.set_ylim(0, 10)
    axes.set_title("Input drift of blue (live): PSI per feature")
    axes.set_ylabel("PSI vs reference (symlog)")
    axes.legend(fontsize=8, loc="upper left")


def _class_panel(axes: Axes, run: Run) -> None:
    shares = run.series["gateway_output_class_ratio"]
    for variant, style in (("blue", "-"), ("bad", "--")):
        for klass, colour in zip(CLASSES, CLASS_COLOURS, strict=True):
            points = shares.get((variant, klass), [])
            if any(value for _, value in points):  # bad's classes 0 and 1 stay at 0: not drawn
                axes.plot(*_xy(points), style, color=colour,
                          label=f"{VARIANT_ROLES[variant]}: class {klass}")  # fmt: skip
    axes.set_title("Predicted class share (window 30 s)")
    axes.set_ylabel("share of rows")
    axes.set_ylim(-0.03, 1.08)
    axes.legend(fontsize=7, ncol=2, loc="center left")


def _accuracy_panel(axes: Axes, run: Run) -> None:
    accuracy = run.series["gateway_online_metric"]
    for variant, label in VARIANT_ROLES.items():
        if (variant,) in accuracy:
            axes.plot(*_xy(accuracy[variant,]), color=VARIANT_COLOURS[variant], label=label)
    axes.set_title("Online accuracy from feedback (cumulative)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize=8, loc="lower left")


def _range_panel(axes: Axes, run: Run) -> None:
    ratios = run.series["gateway_feature_out_of_range_ratio"]
    for feature, name in zip(FEATURES, FEATURE_NAMES, strict=True):
        if ("blue", feature) in ratios:
            axes.plot(*_xy(ratios["blue", feature]), label=f"{feature} {name}")
    axes.set_title("Out-of-range inputs of blue (beyond the reference's range)")
    axes.set_ylabel("share of rows")
    axes.set_ylim(-0.03, 1.05)
    axes.legend(fontsize=8, loc="upper left")


def plot(run: Run, out: Path) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    panels = (_drift_panel, _class_panel, _accuracy_panel, _range_panel)
    for panel, ax in zip(panels, axes.flat, strict=True):
        panel(ax, run)
        ax.grid(alpha=0.3)
        _mark_phase_b(ax, run.phase_b_at)
    for ax in axes[1]:
        ax.set_xlabel("time (s)")
    figure.suptitle(
        "Gateway model monitoring, model iris: scraped from GET /metrics of a real run "
        f"(~{RATE_PER_S:g} req/s x {BATCH} rows)"
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110)
    plt.close(figure)
    # 256 colours are plenty for line plots and make the file about a third of the size.
    image = Image.open(buffer).convert("RGB").quantize(256)
    image.save(out, optimize=True)


# -- the summary ---------------------------------------------------------------------------------


def _value(series: Series, key: tuple[str, ...], until: float) -> str:
    points = [value for t, value in series.get(key, []) if t <= until]
    return f"{points[-1]:.3f}" if points else "n/a"


def _line(title: str, series: Series, keys: dict[str, tuple[str, ...]], run: Run) -> None:
    """`title: name=end of A -> end of run, ...`."""
    ends = (run.phase_b_at, float("inf"))
    found = [
        f"{name}={' -> '.join(_value(series, key, t) for t in ends)}" for name, key in keys.items()
    ]
    print(f"{title}: {', '.join(found)}")


def summarize(run: Run) -> None:
    print(f"phase B began at {run.phase_b_at:.1f} s; last scrape at {run.elapsed():.1f} s")
    print("statuses:", {name: dict(codes) for name, codes in run.statuses.items()})
    print("answered by:", dict(run.answered_by), "| feedback unmatched:", run.feedback_unmatched)
    print("values at the end of phase A -> at the end of the run:")
    psi = run.series["gateway_feature_drift"]
    for variant in VARIANT_ROLES:
        _line(f"  PSI {variant}", psi, {f: (variant, f) for f in FEATURES}, run)
    shares = run.series["gateway_output_class_ratio"]
    for variant in VARIANT_ROLES:
        _line(f"  class share {variant}", shares, {k: (variant, k) for k in CLASSES}, run)
    accuracy = run.series["gateway_online_metric"]
    _line("  accuracy", accuracy, {v: (v,) for v in VARIANT_ROLES}, run)
    ranges = run.series["gateway_feature_out_of_range_ratio"]
    _line("  out of range blue", ranges, {f: ("blue", f) for f in FEATURES}, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-monitoring-") as name:
        folder = Path(name)
        config = write_config(folder, load_iris().data.astype(np.float32))
        port, log = free_port(), folder / "gateway.log"
        process = start_gateway(config, port, log)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
                wait_ready(client, process, log)
                run = drive(client)
        except (httpx.HTTPError, RuntimeError):
            print(f"gateway log (last lines):\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            stop_gateway(process)
        errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    summarize(run)
    if errors:
        print(f"gateway log: {len(errors)} ERROR lines, first: {errors[0]}")
    plot(run, args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KB) in {time.monotonic() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
