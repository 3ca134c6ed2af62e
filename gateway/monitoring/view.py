"""`gateway monitor MODEL`: a monitor report (README "Monitoring") as tables, drawn with rich."""

import io
from typing import Any

from rich.console import Console
from rich.table import Table


def render_report(report: dict[str, Any]) -> str:
    """Per variant: online metrics, input drift table, output drift, class shares."""
    output = io.StringIO()
    console = Console(file=output, width=120, force_terminal=False, color_system=None)
    reference = report["reference"]
    source = "none" if reference is None else f"{reference['source']} ({reference['rows']} rows)"
    console.print(
        f"model {report['model']}: window {report['window_s']:g} s, reference {source}, "
        f"drift when PSI > {report['psi_threshold']:g}, "
        f"unmatched feedback {report['feedback']['unmatched']}"
    )
    for variant, found in report["variants"].items():
        console.print(f"\nvariant {variant}: {found['rows']} rows in the window")
        console.print(_online(found["online"]))
        console.print(_features("input feature", "feature", found["inputs"]))
        if found["outputs"]:
            console.print(_features("output", "output", found["outputs"]))
        for name, classes in found["classes"].items():
            shares = ", ".join(
                f"{label}: {share:.1%}" for label, share in classes["shares"].items()
            )
            console.print(f"classes of {name}: {shares or '-'} (PSI {_number(classes['psi'])})")
    return output.getvalue().rstrip()


def _online(online: dict[str, Any]) -> str:
    if online["task"] is None:
        return "online metric: - (no output to score)"
    metrics = ", ".join(
        f"{name} {_number(online[name])}" for name in ("accuracy", "mae", "rmse") if name in online
    )
    return f"online ({online['task']}): {metrics}, from {online['joined']} feedback items"


def _features(title: str, key: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=None, show_edge=False, pad_edge=False)
    columns = [title, "mean", "std", "missing", "out of range", "PSI", "Wasserstein", "drift"]
    for column in columns:
        table.add_column(column, justify="left" if column == title else "right")
    for row in rows:
        table.add_row(
            row[key], _number(row["mean"]), _number(row["std"]),
            _share(row.get("missing_ratio")), _share(row.get("out_of_range_ratio")),
            _number(row["psi"]), _number(row["wasserstein"]), "DRIFT" if row["drift"] else "",
        )  # fmt: skip
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
