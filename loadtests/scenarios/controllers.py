"""Admin controllers: the routing changes each scenario makes while the load runs.

Each controller runs once in its own greenlet (started on test_start by the locustfile), spreads
its steps evenly over the run time, and records one phase per routing change with the revision
the admin API answered, so the traffic of each step can be told apart by `x-gateway-revision`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.admin_client import call
from scenarios.recorder import Expected, Recorder
from scenarios.rollout import START_AT, DecisionLog, expected_of, finished, rollout_plan

MODEL = "iris"
BLUE_GREEN = ("blue", "green")
CANARY_STEPS = (0.05, 0.25, 0.50, 1.00)
ROLLBACK_STEPS = (0.10, 0.50)
FLIP_EVERY_S = 3.0
POLL_S = 0.25  # the gateway judges every 0.5 s: no decision is seen more than a poll late


class AdminError(Exception):
    """The admin API refused a change or answered a state other than the one asked for."""


@dataclass(frozen=True)
class Admin:
    """The gateway's admin API for one model; the token comes from GATEWAY_ADMIN_TOKEN."""

    url: str
    model: str = MODEL

    def request(self, method: str, action: str = "", body: Any = None) -> dict[str, Any]:
        return dict(self._call(method, action, body))

    def history(self) -> list[dict[str, Any]]:
        """The model's routing history, oldest revision first."""
        return list(self._call("GET", "history"))

    def _call(self, method: str, action: str, body: Any = None) -> Any:
        path = f"/admin/models/{self.model}" + (f"/{action}" if action else "")
        status, answer = call(self.url, method, path, body)
        if status != 200:
            raise AdminError(f"{method} {path} -> {status}: {answer}")
        return answer


@dataclass(frozen=True)
class Context:
    """What a controller works with: the admin API, the recorder, the run time and a sleep."""

    admin: Admin
    recorder: Recorder
    run_time: float
    sleep: Callable[[float], Any]  # gevent.sleep in locust, so the users keep running

    def wait_until(self, at: float) -> None:
        self.sleep(max(0.0, at - self.recorder.elapsed()))

    def baseline(self) -> Expected:
        """Record the routing found at the start as phase `initial`; return it."""
        state = self.admin.request("GET")
        expected = Expected(state["live"], *_canary_of(state))
        self.recorder.phase("initial", "none", state["revision"], expected)
        return expected

    def apply(self, name: str, method: str, action: str, body: Any, expected: Expected) -> int:
        """Make one change, check the answered state is `expected`, record it; its revision."""
        state = self.admin.request(method, action, body)
        answered = Expected(state["live"], *_canary_of(state))
        if answered != expected:
            raise AdminError(f"{name}: gateway answered {answered}, expected {expected}")
        self.recorder.phase(name, action, state["revision"], expected)
        return int(state["revision"])


def _canary_of(state: dict[str, Any]) -> tuple[str | None, float]:
    canary = state.get("canary")
    return (canary["variant"], float(canary["weight"])) if canary else (None, 0.0)


def other_variant(live: str) -> str:
    """The blue-green partner of `live` (blue for anything that is not blue)."""
    return next(variant for variant in BLUE_GREEN if variant != live)


def canary_ramp(ctx: Context) -> None:
    """Ramp the other variant 5% -> 25% -> 50% -> 100% as canary, then promote it."""
    live = ctx.baseline().live
    canary = other_variant(live)
    spacing = ctx.run_time / (len(CANARY_STEPS) + 2)  # baseline, steps, promoted: equal shares
    for step, weight in enumerate(CANARY_STEPS, start=1):
        ctx.wait_until(step * spacing)
        body = {"variant": canary, "weight": weight}
        ctx.apply(f"canary {weight:.0%}", "PUT", "canary", body, Expected(live, canary, weight))
    ctx.wait_until((len(CANARY_STEPS) + 1) * spacing)
    ctx.apply("promoted", "POST", "promote", None, Expected(canary))


def flip(ctx: Context) -> None:
    """Flip blue <-> green every few seconds (at least twice in the run)."""
    live = ctx.baseline().live
    interval = min(FLIP_EVERY_S, ctx.run_time / 3)
    at = interval
    while at < ctx.run_time - interval / 2:  # the last flip still gets some traffic
        ctx.wait_until(at)
        live = other_variant(live)
        ctx.apply(f"flip to {live}", "POST", "flip", {"to": live}, Expected(live))
        at += interval


def rollback(ctx: Context) -> None:
    """Ramp a canary 10% -> 50%, then roll back to the revision before the canary."""
    start = ctx.baseline()
    first = ctx.recorder.phases[-1].revision
    canary = other_variant(start.live)
    spacing = ctx.run_time / (len(ROLLBACK_STEPS) + 2)
    for step, weight in enumerate(ROLLBACK_STEPS, start=1):
        ctx.wait_until(step * spacing)
        body = {"variant": canary, "weight": weight}
        expected = Expected(start.live, canary, weight)
        ctx.apply(f"canary {weight:.0%}", "PUT", "canary", body, expected)
    ctx.wait_until((len(ROLLBACK_STEPS) + 1) * spacing)
    ctx.apply("rolled back", "POST", "rollback", {"to_revision": first}, start)


def rollout(ctx: Context) -> None:
    """Start a rollout of mlp and follow the gateway's decisions until it is over; each one's
    revision is recorded as a phase, so its traffic is judged like a canary step's."""
    ctx.baseline()
    ctx.wait_until(ctx.run_time * START_AT)
    record = ctx.admin.request("POST", "rollout", rollout_plan(ctx.run_time))
    log = DecisionLog(record["id"], record["plan"]["variant"], ctx.recorder.started)
    while True:
        if log.pending(record):
            _record_decisions(ctx, log.add(record, ctx.admin.history()))
        ctx.recorder.rollout = {
            **{key: record[key] for key in ("id", "model", "plan", "phase", "step", "message")},
            "decisions": log.rows,
        }
        if finished(record, log):
            return
        ctx.sleep(POLL_S)
        record = ctx.admin.request("GET", "rollout")


def _record_decisions(ctx: Context, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        name = f"{row['decision']}: {row['routing']}"
        expected = expected_of(row["state"])
        ctx.recorder.phase(name, row["decision"], row["revision"], expected, at=row["at"])


CONTROLLERS: dict[str, Callable[[Context], None] | None] = {
    "steady": None,
    "canary_ramp": canary_ramp,
    "flip": flip,
    "rollback": rollback,
    "rollout": rollout,
}
