"""The `rollout` scenario's plan, and the gateway's rollout decisions as the recorder keeps them.

Pure: no locust, no network. The plan ships `mlp` on iris: a shadow step, then three canary
steps, timed so that a run of any length promotes with a quarter of its time left to show the
new live variant alone. Every decision is a routing revision; `DecisionLog` pairs each one
with its revision from the routing history (whose entries carry the rollout's id and the
decision's number), so its traffic can be told apart by `x-gateway-revision`.
"""

from dataclasses import dataclass, field
from typing import Any

from scenarios.recorder import Expected

# The small neural network gives blue's label on every locust input (3,000 requests of the
# traffic mix checked offline), so the agreement check can pass at its default 95%; green, the
# gradient boosting, agrees on 87% of requests (97% of rows) and would rightly be rolled back.
CANDIDATE = "mlp"
TRAFFIC_STEPS: tuple[dict[str, float], ...] = (
    {"shadow": 1.0},
    {"canary": 0.25},
    {"canary": 0.5},
    {"canary": 0.75},
)
START_AT = 0.1  # of the run time: live alone before the rollout starts
STEPS_SHARE = 0.6  # of the run time, for the steps; the rest shows the promoted variant alone
MIN_INTERVAL_S = 0.5  # the gateway judges rollouts every 0.5 s, so no shorter interval
MIN_REQUESTS = 50  # of the variant per step: a short run's 25% canary step sees about 100


def rollout_plan(run_time: float, variant: str = CANDIDATE) -> dict[str, Any]:
    """The plan to post. Each step lasts its share of the run and is analysed twice in it: it
    passes at the second analysis when the evidence is complete, and a step that needs one
    more look costs half a share, which the last quarter of the run absorbs."""
    share = run_time * STEPS_SHARE / len(TRAFFIC_STEPS)
    interval = max(MIN_INTERVAL_S, round(share / 2, 1))
    steps = [
        {**traffic, "duration": 2 * interval, "min_requests": MIN_REQUESTS}
        for traffic in TRAFFIC_STEPS
    ]
    analysis = {
        "interval": interval,
        # The SPRT against a 1-point rise needs ~300 clean requests of the variant to pass
        # (log(beta / (1 - alpha)) / log(0.989 / 0.999)); a short run's 25% canary step sees
        # about a hundred. A 5-point rise is decided by ~60 clean requests, and a variant
        # whose errors really rise still fails at once.
        "error_rate": {"max_increase": 0.05},
        # mlp is a bigger model than blue: alone its runs take 1.3x blue's, under this load
        # up to 1.5x, a real difference the default p50 limit (1.5x) may catch. This demo
        # ships it anyway, so it allows 2x.
        "latency": {"max_p50_ratio": 2.0},
    }
    return {"variant": variant, "steps": steps, "analysis": analysis}


def routing_name(state: dict[str, Any], variant: str) -> str:
    """What a revision does with the rollout's variant: `canary 0.25`, `shadow 1`, `mlp live`."""
    canary = state.get("canary")
    if canary and canary["variant"] == variant:
        return f"canary {canary['weight']:g}"
    sample = shadow_sample(state, variant)
    if sample:
        return f"shadow {sample:g}"
    return f"{state['live']} live"


def shadow_sample(state: dict[str, Any], variant: str) -> float:
    return next((s["sample"] for s in state.get("shadows", []) if s["variant"] == variant), 0.0)


def expected_of(state: dict[str, Any]) -> Expected:
    """Who should answer under a routing state (shadows never answer)."""
    canary = state.get("canary")
    if canary:
        return Expected(state["live"], canary["variant"], float(canary["weight"]))
    return Expected(state["live"])


def revisions_of(history: list[dict[str, Any]], rollout_id: str) -> dict[int, dict[str, Any]]:
    """The history entries a rollout wrote, by the number of the decision that made each."""
    found = {}
    for entry in history:
        marker = entry.get("analysis") or {}
        if marker.get("rollout") == rollout_id:
            found[int(marker["decision"])] = entry
    return found


@dataclass
class DecisionLog:
    """The decisions of one rollout seen so far, each with the revision that carried it out."""

    rollout_id: str
    variant: str
    started: float  # the recorder's start (unix s), for times since the start of the run
    rows: list[dict[str, Any]] = field(default_factory=list)

    def pending(self, record: dict[str, Any]) -> bool:
        """Whether `record` (GET .../rollout) has decisions not logged yet."""
        return len(record["decisions"]) > len(self.rows)

    def add(self, record: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Log the new decisions whose revision is in `history`, in order; return them. One
        recorded but not yet routed (the judge writes the record first) waits for the next."""
        entries = revisions_of(history, self.rollout_id)
        new = []
        for decision in record["decisions"][len(self.rows) :]:
            entry = entries.get(decision["number"])
            if entry is None:
                break
            new.append(self._row(decision, entry))
        self.rows.extend(new)
        return new

    def _row(self, decision: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        state = entry["state"]
        return {
            "number": decision["number"],
            "time": decision["time"],
            "at": round(decision["time"] - self.started, 3),  # the gateway's clock
            "step": decision["step"],
            "decision": decision["decision"],
            "reason": decision["reason"],
            "checks": {check["check"]: check["verdict"] for check in decision["checks"]},
            "revision": entry["revision"],
            "routing": routing_name(state, self.variant),
            "shadow": shadow_sample(state, self.variant),
            "state": {key: state.get(key) for key in ("live", "canary", "shadows")},
        }


def finished(record: dict[str, Any], log: DecisionLog) -> bool:
    """The rollout is over, or paused (nobody resumes it in a load test), and every decision
    is logged."""
    return record["phase"] != "Progressing" and not log.pending(record)
