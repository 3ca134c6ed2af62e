"""Admin subcommands of the `gateway` CLI: HTTP calls to a running gateway's admin API."""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

DEFAULT_URL = "http://127.0.0.1:8000"

Request = tuple[str, str, Any]  # method, path, JSON body or None


@dataclass(frozen=True)
class AdminCommand:
    """One CLI subcommand: its arguments and the admin call it makes."""

    name: str
    help: str
    arguments: tuple[tuple[str, dict[str, Any]], ...]
    request: Callable[[argparse.Namespace], Request]

    def add_to(self, commands: Any) -> None:
        parser = commands.add_parser(self.name, help=self.help)
        for flag, options in self.arguments:
            parser.add_argument(flag, **options)
        parser.add_argument(
            "--url", default=os.environ.get("GATEWAY_URL", DEFAULT_URL), help="gateway base URL"
        )


def _shadow_spec(text: str) -> dict[str, Any]:
    variant, _, sample = text.partition(":")
    try:
        return {"variant": variant, "sample": float(sample) if sample else 1.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected VARIANT or VARIANT:SAMPLE") from None


def _feedback_item(text: str) -> dict[str, Any]:
    request_id, _, truth = text.rpartition("=")
    try:
        values = [json.loads(part) for part in truth.split(",")]
        if not request_id or not all(type(v) in (int, float) for v in values):
            raise ValueError(truth)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected REQUEST_ID=NUMBER[,NUMBER...]"
        ) from None
    return {"request_id": request_id, "truth": values[0] if len(values) == 1 else values}


def _monitor_request(args: argparse.Namespace) -> Request:
    path = f"/admin/models/{args.model}"
    if args.pin_reference:
        return "POST", f"{path}/reference", {"rows": args.rows} if args.rows else None
    if args.clear_reference:
        return "DELETE", f"{path}/reference", None
    return "GET", f"{path}/monitor", None


def _rollout_request(args: argparse.Namespace) -> Request:
    path = f"/admin/models/{args.model}/rollout"
    if args.action == "status":
        return "GET", path, None
    if args.action == "start":
        return "POST", path, None if args.plan is None else _read_plan(args.plan)
    if args.action == "promote":
        return "POST", f"{path}/promote", {"full": True} if args.full else None
    return "POST", f"{path}/{args.action}", None


def _read_plan(path: str) -> Any:
    """A rollout plan from a YAML or JSON file (its shape: README "Rollouts")."""
    try:
        with open(path, encoding="utf-8") as file:
            plan = yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"gateway: cannot read the plan {path}: {exc}") from None
    if not isinstance(plan, dict):  # empty: it would mean "the config's plan"
        raise SystemExit(f"gateway: {path}: a plan is a mapping with variant and steps")
    return plan


WATCH_PATIENCE_S = 30.0  # `--watch` waits this long for a gateway that does not answer
ROLLOUT_ACTIONS = ("start", "status", "pause", "resume", "promote", "abort", "undo")
MODEL = ("model", {"help": "model name"})
ADMIN_COMMANDS = (
    AdminCommand(
        "status", "show routing state",
        (("model", {"nargs": "?", "help": "one model (default: all)"}),),
        lambda a: ("GET", f"/admin/models/{a.model}" if a.model else "/admin/models", None),
    ),
    AdminCommand(
        "history", "show a model's routing revisions", (MODEL,),
        lambda a: ("GET", f"/admin/models/{a.model}/history", None),
    ),
    AdminCommand(
        "canary", "start or ramp a canary",
        (MODEL, ("variant", {}), ("weight", {"type": float})),
        lambda a: ("PUT", f"/admin/models/{a.model}/canary",
                   {"variant": a.variant, "weight": a.weight}),
    ),
    AdminCommand(
        "abort", "abort a model's canary", (MODEL,),
        lambda a: ("DELETE", f"/admin/models/{a.model}/canary", None),
    ),
    AdminCommand(
        "promote", "make the canary live", (MODEL,),
        lambda a: ("POST", f"/admin/models/{a.model}/promote", None),
    ),
    AdminCommand(
        "flip", "blue-green flip to a variant", (MODEL, ("variant", {})),
        lambda a: ("POST", f"/admin/models/{a.model}/flip", {"to": a.variant}),
    ),
    AdminCommand(
        "rollback", "restore the previous (or a given) revision",
        (MODEL, ("--to", {"type": int, "dest": "to_revision", "help": "revision to restore"})),
        lambda a: ("POST", f"/admin/models/{a.model}/rollback",
                   {"to_revision": a.to_revision} if a.to_revision is not None else None),
    ),
    AdminCommand(
        "shadow", "replace a model's shadows (none given: remove all)",
        (MODEL, ("shadows", {"nargs": "*", "type": _shadow_spec, "metavar": "VARIANT[:SAMPLE]"})),
        lambda a: ("PUT", f"/admin/models/{a.model}/shadows", a.shadows),
    ),
    AdminCommand(
        "reload", "re-read the config file and load new or changed variants", (),
        lambda a: ("POST", "/admin/reload", None),
    ),
    AdminCommand(
        "monitor", "show a model's drift, output distribution and online metrics",
        (MODEL,
         ("--json", {"action": "store_true", "help": "print the admin API's JSON"}),
         ("--pin-reference", {"action": "store_true",
                              "help": "pin a reference profile from recent live rows"}),
         ("--rows", {"type": int, "help": "with --pin-reference: the last ROWS rows"}),
         ("--clear-reference", {"action": "store_true", "help": "remove the reference profile"})),
        _monitor_request,
    ),
    AdminCommand(
        "rollout", "start, show or steer a model's rollout (Argo Rollouts' verbs)",
        (("action", {"choices": ROLLOUT_ACTIONS}), MODEL,
         ("--plan", {"help": "with start: a YAML or JSON plan (default: the config's)"}),
         ("--full", {"action": "store_true", "help": "with promote: skip every step left"}),
         ("--watch", {"action": "store_true",
                      "help": "then follow the rollout until it is no longer progressing"}),
         ("--json", {"action": "store_true", "help": "print the admin API's JSON"})),
        _rollout_request,
    ),
    AdminCommand(
        "feedback", "send ground truth for earlier answers (REQUEST_ID=TRUTH, TRUTH a number "
        "or comma-separated numbers, one per row)",
        (MODEL, ("items", {"nargs": "+", "type": _feedback_item, "metavar": "REQUEST_ID=TRUTH"})),
        lambda a: ("POST", f"/v2/models/{a.model}/feedback", a.items),
    ),
)  # fmt: skip
_BY_NAME = {command.name: command for command in ADMIN_COMMANDS}


def run_admin_command(args: argparse.Namespace) -> int:
    """Make the admin call of `args.command`, print the answer; 0 on success, 1 on refusal."""
    method, path, body = _BY_NAME[args.command].request(args)
    try:
        status, answer = call(args.url, method, path, body)
    except OSError as exc:
        print(f"gateway: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if status >= 400:
        print(f"gateway: {status}: {_message(answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if getattr(args, "json", False) else render(answer))
    if getattr(args, "watch", False):
        return watch_rollout(args.url, args.model)
    return 0


def watch_rollout(url: str, model: str, interval: float = 1.0) -> int:
    """Redraw a rollout's status until it stops progressing: 0 when it is Healthy or Paused,
    1 when it is Degraded (rolled back or aborted), as Argo's `rollouts status --watch` does;
    2 when it cannot be followed: a refusal (4xx), or no answer for WATCH_PATIENCE_S (a
    gateway restarting or Redis down for a moment is waited for)."""
    from rich.live import Live

    from gateway.rollout.view import rollout_view

    path = f"/admin/models/{model}/rollout"
    last_answer = time.monotonic()
    with Live(auto_refresh=False) as live:
        while True:
            try:
                status, answer = call(url, "GET", path)
            except OSError as exc:
                status, answer = 0, {"error": f"cannot reach {url}: {exc}"}
            if 400 <= status < 500 or time.monotonic() - last_answer > WATCH_PATIENCE_S:
                print(f"gateway: {status or ''} {_message(answer)}".strip(), file=sys.stderr)
                return 2
            if status == 200:
                last_answer = time.monotonic()
                live.update(rollout_view(answer), refresh=True)
                if answer["phase"] != "Progressing":
                    return 1 if answer["phase"] == "Degraded" else 0
            time.sleep(interval)


def _message(answer: Any) -> Any:
    return answer.get("error", answer) if isinstance(answer, dict) else answer


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin call with the token from GATEWAY_ADMIN_TOKEN; (status, decoded JSON)."""
    # default=str: a YAML date in a plan reaches the gateway, which names the field.
    data = json.dumps(body, default=str).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def render(answer: Any) -> str:
    """Routing states as a table; history as one line per revision; anything else as JSON."""
    if isinstance(answer, dict) and "decisions" in answer and "plan" in answer:
        from gateway.rollout.view import render_rollout

        return render_rollout(answer)
    if isinstance(answer, dict) and "psi_threshold" in answer:
        from gateway.monitoring.view import render_report  # rich: only when a report is drawn

        return render_report(answer)
    if isinstance(answer, dict) and "models" in answer:
        answer = answer["models"]
    if isinstance(answer, dict) and "live" in answer:
        answer = [answer]
    if isinstance(answer, list) and answer and all("live" in row for row in answer):
        return _table(["model", "rev", "live", "canary", "shadows", "sticky", "variants"],
                      [_state_row(row) for row in answer])  # fmt: skip
    if isinstance(answer, list) and answer and all("action" in row for row in answer):
        return _table(["rev", "action", "live", "canary", "shadows"],
                      [_history_row(row) for row in answer])  # fmt: skip
    return json.dumps(answer, indent=2)


def _state_row(state: dict[str, Any]) -> list[str]:
    return [
        state["model"], str(state["revision"]), state["live"], _canary(state),
        _shadows(state), state.get("sticky_header") or "-", ",".join(state["variants"]),
    ]  # fmt: skip


def _history_row(entry: dict[str, Any]) -> list[str]:
    state = entry["state"]
    return [str(entry["revision"]), entry["action"], state["live"], _canary(state), _shadows(state)]


def _canary(state: dict[str, Any]) -> str:
    canary = state.get("canary")
    return f"{canary['variant']}@{canary['weight']:g}" if canary else "-"


def _shadows(state: dict[str, Any]) -> str:
    shadows = state.get("shadows") or []
    return ",".join(f"{s['variant']}:{s['sample']:g}" for s in shadows) or "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
