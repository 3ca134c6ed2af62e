"""`gateway rollout status MODEL [--watch]`: a rollout as a table of steps with progress bars."""

import io
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

RECENT_DECISIONS = 6


def rollout_view(record: dict[str, Any]) -> Group:
    """The header line, one row per step (done, current with its bar, to come), and the
    latest decisions with their reasons."""
    header = Text(
        f"rollout {record['id']} of {record['model']}: {record['plan']['variant']} -> "
        f"{record['phase']}" + (f" ({record['message']})" if record["message"] else "")
    )
    steps = Table(box=None, pad_edge=False)
    for column in ("#", "step", "minimum", "", "progress"):
        steps.add_column(column)
    for i, step in enumerate(record["plan"]["steps"]):
        steps.add_row(str(i + 1), _step_name(step), _minimum(step), *_progress(record, i))
    decisions = Table(box=None, pad_edge=False)
    for column in ("#", "step", "decision", "reason"):
        decisions.add_column(column)
    for decision in record["decisions"][-RECENT_DECISIONS:]:
        decisions.add_row(
            str(decision["number"]), str(decision["step"] + 1), decision["decision"],
            decision["reason"],
        )  # fmt: skip
    return Group(header, steps, Text("decisions:"), decisions)


def render_rollout(record: dict[str, Any]) -> str:
    output = io.StringIO()
    Console(file=output, width=120, force_terminal=False, color_system=None).print(
        rollout_view(record)
    )
    return output.getvalue().rstrip()


def _step_name(step: dict[str, Any]) -> str:
    if step["pause"]:
        return "pause"
    if step["shadow"] is not None:
        return f"shadow {step['shadow']:g}"
    return f"canary {step['canary']:g}"


def _minimum(step: dict[str, Any]) -> str:
    if step["pause"]:
        return "until resumed"
    return f"{step['duration']:g} s, {step['min_requests']} requests"


def _progress(record: dict[str, Any], i: int) -> tuple[Any, str]:
    done = i < record["step"] or record["phase"] == "Healthy"
    if done:
        return ProgressBar(total=1, completed=1, width=30), "passed"
    progress = record.get("progress")
    if i > record["step"] or progress is None:
        return "", "rolled back" if record["phase"] == "Degraded" and i == record["step"] else ""
    if record["plan"]["steps"][i]["pause"]:
        return ProgressBar(total=1, completed=0, width=30), "paused: `gateway rollout resume`"
    time_share = progress["elapsed_s"] / progress["duration_s"] if progress["duration_s"] else 1.0
    wanted = progress["min_requests"]
    request_share = progress["requests"] / wanted if wanted else 1.0
    share = min(time_share, request_share, 1.0)
    detail = (
        f"{progress['elapsed_s']:.0f}/{progress['duration_s']:g} s, "
        f"{progress['requests']}/{wanted} requests, next analysis in "
        f"{progress['next_analysis_s']:.0f} s"
    )
    return ProgressBar(total=1, completed=share, width=30), detail
