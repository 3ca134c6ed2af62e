"""Thresholds of a scenario, from locust's totals and the scenario record (pure functions)."""

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

SIGMAS = 5.0  # a split outside 5 binomial sigmas is a routing bug, not bad luck (p < 6e-7)
MIN_REQUESTS = 30  # fewer answers in a step than this say too little to judge its split
# initial + the changes the plan makes (rollout: start, three advances, promote; waits add more)
PHASES_NEEDED = {"canary_ramp": 6, "flip": 3, "rollback": 4, "rollout": 6}


@dataclass(frozen=True)
class Threshold:
    """One check; `passed` is None when it was skipped, and `detail` then says why."""

    name: str
    passed: bool | None
    detail: str


def binomial_bounds(weight: float, n: int, sigmas: float = SIGMAS) -> tuple[float, float]:
    """Interval of canary shares consistent with `weight` over `n` independent requests."""
    spread = sigmas * math.sqrt(weight * (1 - weight) / n)
    return max(0.0, weight - spread), min(1.0, weight + spread)


def phase_split(phase: dict[str, Any], by_revision: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The answers of one phase's revision: counts per variant, canary share and its bounds."""
    expected = phase["expected"]
    counts = by_revision.get(str(phase["revision"]), {})
    n = sum(counts.values())
    canary = expected["canary"]
    share = counts.get(canary, 0) / n if canary and n else 0.0
    low, high = binomial_bounds(expected["weight"], n) if n else (0.0, 0.0)
    stray = {v: c for v, c in counts.items() if v not in (expected["live"], canary)}
    return {
        "phase": phase["name"],
        "at_s": phase["at"],
        "revision": phase["revision"],
        "live": expected["live"],
        "canary": canary,
        "weight": expected["weight"],
        "requests": n,
        "counts": counts,
        "canary_share": round(share, 4),
        "bounds": [round(low, 4), round(high, 4)],
        "stray": stray,
    }


def split_threshold(split: dict[str, Any]) -> Threshold:
    """A phase's traffic went only to its live and canary variants, in the configured shares."""
    name = f"split {split['phase']} (rev {split['revision']})"
    if split["stray"]:
        return Threshold(name, False, f"answers from variants outside the phase: {split['stray']}")
    n, share, (low, high) = split["requests"], split["canary_share"], split["bounds"]
    if n < MIN_REQUESTS:
        return Threshold(name, None, f"skipped: {n} requests, fewer than {MIN_REQUESTS}")
    target = f"canary {split['canary']} share {share:.3f}" if split["canary"] else "live only"
    detail = f"{target} over {n} requests; bounds [{low:.3f}, {high:.3f}] for {split['weight']:g}"
    return Threshold(name, low <= share <= high, detail)


def failure_threshold(requests: int, failures: int) -> Threshold:
    detail = f"{failures} failed of {requests} requests"
    return Threshold("zero failed requests", requests > 0 and failures == 0, detail)


def controller_threshold(scenario: str, record: dict[str, Any]) -> Threshold:
    """The admin controller made every change of its plan, and each was answered as asked."""
    needed = PHASES_NEEDED[scenario]
    problems = record["admin_errors"] + record["notes"]
    made = len(record["phases"])
    if made < needed:
        problems.append(f"{made} routing phases, the plan needs {needed}")
    detail = "; ".join(problems) or f"{made} routing phases as planned"
    return Threshold("admin changes applied", not problems, detail)


def revisions_threshold(revisions: list[int]) -> Threshold:
    detail = f"revisions seen in answers: {revisions}"
    return Threshold("at least two revisions served", len(revisions) >= 2, detail)


def scenario_thresholds(
    scenario: str, totals: dict[str, Any], record: dict[str, Any], splits: list[dict[str, Any]]
) -> list[Threshold]:
    """Every threshold of `scenario`: failures always; plan, splits and revisions as it has them."""
    checks = [failure_threshold(totals["requests"], totals["failures"])]
    if scenario in PHASES_NEEDED:
        checks.append(controller_threshold(scenario, record))
        checks.extend(split_threshold(split) for split in splits)
    if scenario == "flip":
        checks.append(revisions_threshold(revisions_seen(record)))
    if scenario == "rollout":
        rollout = record.get("rollout") or {}
        checks += [promoted_threshold(rollout), after_promotion(rollout, record["by_revision"])]
    return checks


def revisions_seen(record: dict[str, Any]) -> list[int]:
    return sorted(int(rev) for rev in record["by_revision"] if rev.isdigit())


def promoted_threshold(rollout: dict[str, Any]) -> Threshold:
    """The rollout ended Healthy, by the gateway's own promote decision, while the load ran."""
    name = "rollout promoted within the run"
    decisions = rollout.get("decisions", [])
    if not decisions:
        return Threshold(name, False, "no rollout decision was recorded")
    last = decisions[-1]
    if rollout["phase"] == "Healthy" and last["decision"] == "promote":
        variant = rollout["plan"]["variant"]
        detail = f"{variant} promoted at {last['at']:.1f} s, decision {len(decisions)}"
        return Threshold(name, True, detail)
    detail = f"{rollout['phase']} at step {rollout['step']}: {rollout['message'] or last['reason']}"
    return Threshold(name, False, detail)


def after_promotion(rollout: dict[str, Any], by_revision: dict[str, dict[str, int]]) -> Threshold:
    """Every answer routed by the promotion's revision or a later one came from the variant."""
    name = "only the promoted variant answers after promotion"
    decisions = rollout.get("decisions", [])
    promoted = next((d for d in decisions if d["decision"] == "promote"), None)
    if promoted is None:
        return Threshold(name, None, "skipped: no promotion")
    counts: Counter[str] = Counter()
    for revision, variants in by_revision.items():
        if revision.isdigit() and int(revision) >= promoted["revision"]:
            counts.update(variants)
    variant = rollout["plan"]["variant"]
    stray = {v: n for v, n in counts.items() if v != variant}
    detail = f"{counts[variant]} answers by {variant} from revision {promoted['revision']} on"
    if stray:
        detail += f"; others: {stray}"
    return Threshold(name, counts[variant] > 0 and not stray, detail)
