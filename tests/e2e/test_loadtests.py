"""The load-test runner end to end: each scenario against a gateway it starts, judged, reported."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

pytestmark = pytest.mark.e2e

RUNNER = ROOT / "loadtests" / "run.py"
REPORT_FILES = ("report.html", "locust_stats.csv", "locust_stats_history.csv", "plot.png")


def run_scenario(scenario: str, out: Path, seconds: int) -> dict[str, Any]:
    """Run `loadtests/run.py` briefly with few users; check its exit code, files and failures."""
    command = [sys.executable, str(RUNNER), scenario, "--duration", f"{seconds}s",
               "--users", "4", "--spawn-rate", "4", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["passed"]
    assert all(check["passed"] is not False for check in summary["thresholds"])
    return summary


def test_steady(tmp_path: Path) -> None:
    """Steady mixed traffic passes with no failure and every request answered by live blue."""
    summary = run_scenario("steady", tmp_path / "steady", seconds=6)
    assert set(summary["per_variant"]) == {"blue"}
    assert {entry["name"] for entry in summary["endpoints"]} >= {"v2 infer b32 [blue]"}


def test_canary_ramp(tmp_path: Path) -> None:
    """Ramping green 5-25-50-100% records a split for every step, then green is promoted."""
    summary = run_scenario("canary_ramp", tmp_path / "ramp", seconds=8)
    steps = {step["phase"]: step for step in summary["steps"]}
    ramp = [steps[f"canary {w}%"] for w in (5, 25, 50, 100)]
    assert [step["weight"] for step in ramp] == [0.05, 0.25, 0.5, 1.0]
    assert all(step["requests"] > 0 and step["counts"] for step in ramp)
    assert set(steps["promoted"]["counts"]) == {"green"}


def test_flip(tmp_path: Path) -> None:
    """Blue-green flips under load fail nothing and answers carry at least two revisions."""
    summary = run_scenario("flip", tmp_path / "flip", seconds=6)
    assert len(summary["revisions_seen"]) >= 2
    assert {"blue", "green"} <= set(summary["per_variant"])


def test_rollback(tmp_path: Path) -> None:
    """After a canary ramp and a rollback, the rolled-back revision is served by blue only."""
    summary = run_scenario("rollback", tmp_path / "rollback", seconds=6)
    rolled_back = summary["steps"][-1]
    assert rolled_back["phase"] == "rolled back" and rolled_back["canary"] is None
    assert set(rolled_back["counts"]) == {"blue"}


def test_rollout(tmp_path: Path) -> None:
    """The gateway's own analysis walks mlp through shadow and canary steps to promotion under
    load; each decision is recorded with its revision, and only mlp answers afterwards."""
    # 14 s: the first analysis may wait for scipy.stats, imported on a thread when it begins.
    summary = run_scenario("rollout", tmp_path / "rollout", seconds=14)
    rollout = summary["rollout"]
    moves = [d for d in rollout["decisions"] if d["decision"] != "wait"]
    assert rollout["phase"] == "Healthy"
    assert [d["decision"] for d in moves] == ["start", "advance", "advance", "advance", "promote"]
    routings = ["shadow 1", "canary 0.25", "canary 0.5", "canary 0.75", "mlp live"]
    assert [d["routing"] for d in moves] == routings
    revisions = [d["revision"] for d in rollout["decisions"]]
    assert revisions == sorted(set(revisions)) and summary["revisions_seen"][-1] == revisions[-1]
    assert set(summary["steps"][-1]["counts"]) == {"mlp"}
    assert (tmp_path / "rollout" / "rollout.png").stat().st_size > 0
