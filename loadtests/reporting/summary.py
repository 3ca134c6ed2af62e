"""summary.json and the short human summary printed at the end of a run."""

from dataclasses import asdict
from typing import Any

from reporting.checks import Threshold, phase_split, revisions_seen, scenario_thresholds

NO_TOTALS = {"requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None, "p95_ms": None,
             "p99_ms": None}  # fmt: skip


def build_summary(scenario: str, record: dict[str, Any], locust_exit: int) -> dict[str, Any]:
    """Everything a reader or a dashboard needs from one run, with each threshold's verdict."""
    locust = record.get("locust") or {}
    overall = {**NO_TOTALS, **locust.get("total", {})}
    overall.pop("name", None)
    splits = [phase_split(phase, record["by_revision"]) for phase in record["phases"]]
    checks = scenario_thresholds(scenario, overall, record, splits)
    if locust_exit not in (0, 1):  # 1 only means "some requests failed", which is checked above
        checks.append(Threshold("locust ran", False, f"locust exited with {locust_exit}"))
    return {
        "scenario": scenario,
        **overall,
        "per_variant": record["by_variant"],
        "revisions_seen": revisions_seen(record),
        "steps": splits,
        "endpoints": locust.get("entries", []),
        "thresholds": [asdict(check) for check in checks],
        "passed": all(check.passed is not False for check in checks),
        **({"rollout": rollout_summary(record["rollout"])} if record.get("rollout") else {}),
    }


def rollout_summary(rollout: dict[str, Any]) -> dict[str, Any]:
    """The rollout scenario's outcome and decisions (the plan is in record.json)."""
    keep = ("id", "phase", "step", "message", "decisions")
    return {"variant": rollout["plan"]["variant"], **{key: rollout[key] for key in keep}}


def human_summary(summary: dict[str, Any]) -> str:
    """A few lines: totals, per-variant counts, each step's split and each threshold."""
    lines = [
        f"scenario {summary['scenario']}: {summary['requests']} requests, "
        f"{summary['failures']} failed, {summary['rps']} req/s, p50 {summary['p50_ms']} ms, "
        f"p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms",
        "per variant: " + ", ".join(f"{v} {n}" for v, n in sorted(summary["per_variant"].items())),
    ]
    lines += [_step_line(step) for step in summary["steps"]]
    if "rollout" in summary:
        lines.append(_rollout_line(summary["rollout"]))
    lines += [_threshold_line(check) for check in summary["thresholds"]]
    lines.append("PASSED" if summary["passed"] else "FAILED")
    return "\n".join(lines)


def _step_line(step: dict[str, Any]) -> str:
    counts = ", ".join(f"{v} {n}" for v, n in sorted(step["counts"].items())) or "no requests"
    if step["canary"]:
        expected = f"canary share {step['canary_share']:.3f} (weight {step['weight']:g})"
    else:
        expected = f"no canary: {step['live']} only"
    return f"  step {step['phase']:<14} rev {step['revision']:<3} {counts}; {expected}"


def _rollout_line(rollout: dict[str, Any]) -> str:
    decisions = ", ".join(f"{d['decision']} {d['at']:.1f} s" for d in rollout["decisions"])
    outcome = rollout["phase"] + (f" ({rollout['message']})" if rollout["message"] else "")
    return f"rollout of {rollout['variant']}: {outcome}; decisions: {decisions or 'none'}"


def _threshold_line(check: dict[str, Any]) -> str:
    verdict = {True: "ok  ", False: "FAIL", None: "skip"}[check["passed"]]
    return f"  [{verdict}] {check['name']}: {check['detail']}"
