"""docs/benchmarks.md and its plots, from the results of a run (see run.py)."""

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Case, Sample
from load import (
    CONNECTION_LIMIT,
    LOAD_OFF,
    LOAD_ON,
    OVERLOAD,
    PROBE_INTERVAL_S,
    PROBE_WITHIN_S,
    REJECTED_WITHIN_S,
    REQUEST_TIMEOUT_S,
    LoadResults,
    percentile,
    probe_summary,
)
from memory import SOAK_BASELINE_S, Footprint, Soak
from openloop import FAILED, NO_CONNECTION, UNANSWERED
from rounds import (
    AGAIN,
    CANARY,
    HEAVY,
    HEAVY_OFF,
    HEAVY_ON,
    LIVE,
    MLP,
    PACED,
    SHADOW,
    UNMONITORED,
    Results,
    Suite,
)

FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_us")
RSS_TARGET_MB, RSS_FLAT = 150.0, 0.05


def paired(results: Results, case: Case, base: Case, key: int | str) -> list[tuple[Sample, Sample]]:
    """(case, base) samples of the same rounds."""
    return list(
        zip(results.samples[(case.name, key)], results.samples[(base.name, key)], strict=True)
    )


def ratio(results: Results, case: Case, base: Case, key: int | str, figure: str) -> float:
    """Median over rounds of case ÷ base for `figure`, both measured in the same round."""
    pairs = paired(results, case, base, key)
    return float(statistics.median(getattr(c, figure) / getattr(b, figure) for c, b in pairs))


def keys_of(suite: Suite, results: Results) -> list[int | str]:
    keys: list[int | str] = [*suite.concurrencies]
    if any((case.name, AGAIN) in results.samples for case in suite.cases):
        keys.append(AGAIN)
    return keys


def table(results: Results, suite: Suite) -> str:
    lines = [
        "| case | c | req/s | p50 ms | p99 ms | CPU µs/req | req/s ÷ floor | p50 ÷ floor "
        "| p99 ÷ floor | CPU ÷ floor | rows/run | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in keys_of(suite, results):
        for case in suite.cases:
            if (case.name, key) not in results.samples:
                continue
            runs = results.samples[(case.name, key)]
            med = {f: statistics.median(getattr(s, f) for s in runs) for f in FIGURES}
            r = {f: ratio(results, case, suite.floor, key, f) for f in FIGURES}
            rows = results.batch_rows.get((case.name, key))
            lines.append(
                f"| {case.name} | {key} | {med['rps']:.0f} | {med['p50_ms']:.3f} | "
                f"{med['p99_ms']:.3f} | {med['cpu_us']:.0f} | {r['rps']:.2f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['cpu_us']:.2f} | "
                f"{f'{statistics.median(rows):.1f}' if rows else '—'} | "
                f"{sum(s.errors for s in runs)} |"
            )
    return "\n".join(lines)


def shadow_cost(results: Results) -> str:
    """The 100% shadow case against live only (medians of the per-round ratios), and the share
    of shadow runs that were logged rather than dropped (all rounds together)."""
    lines = []
    keys: list[int | str] = [*MLP.concurrencies, "paced"]
    for key in keys:
        counts = results.shadows[key]
        logged = sum(c.get("logged", 0.0) for c in counts)
        dropped = sum(c.get("dropped", 0.0) for c in counts)
        live_rps = statistics.median(s.rps for s in results.samples[(LIVE.name, key)])
        load = (
            f"c={key}"
            if key != "paced"
            else f"partial load ({PACED[0]} connections, {PACED[1]} ms pause after each answer, "
            f"live only {live_rps:.0f} req/s)"
        )
        lines.append(
            f"- {load}: caller p50 {ratio(results, SHADOW, LIVE, key, 'p50_ms'):.2f} times live "
            f"only's, p99 {ratio(results, SHADOW, LIVE, key, 'p99_ms'):.2f} times, throughput "
            f"{ratio(results, SHADOW, LIVE, key, 'rps'):.2f} times; shadow runs logged "
            f"{logged / max(logged + dropped, 1):.0%} ({logged:.0f} logged, {dropped:.0f} dropped)"
        )
    return "\n".join(lines)


def monitoring_cost(results: Results) -> str:
    """Live only with monitoring on against off (medians of the per-round ratios)."""
    lines = []
    for key in MLP.concurrencies:
        r = {f: ratio(results, LIVE, UNMONITORED, key, f) for f in FIGURES}
        lines.append(
            f"- c={key}: throughput {r['rps']:.3f} times monitoring off's, p50 "
            f"{r['p50_ms']:.3f} times, p99 {r['p99_ms']:.3f} times, CPU per request "
            f"{r['cpu_us']:.3f} times"
        )
    return "\n".join(lines)


def batching_gain(results: Results, on: Case, off: Case, keys: Sequence[int]) -> str:
    """Batching on against off, same rounds (medians of the per-round ratios)."""
    lines = []
    for key in keys:
        r = {f: ratio(results, on, off, key, f) for f in FIGURES}
        rows = results.batch_rows.get((on.name, key), [])
        lines.append(
            f"- c={key}: throughput {r['rps']:.2f} times batching off's, p50 {r['p50_ms']:.2f} "
            f"times, p99 {r['p99_ms']:.2f} times, CPU per request {r['cpu_us']:.2f} times; "
            f"{statistics.median(rows) if rows else float('nan'):.1f} rows per run"
        )
    return "\n".join(lines)


def plot_mlp(results: Results, path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    cases = MLP.cases
    width = 0.8 / len(MLP.concurrencies)
    for i, key in enumerate(MLP.concurrencies):
        x = [n + i * width for n in range(len(cases))]
        for axis, figure_name in zip(axes, ("rps", "p50_ms"), strict=True):
            values = [
                ratio(results, case, MLP.floor, key, figure_name)
                if (case.name, key) in results.samples
                else math.nan
                for case in cases
            ]
            axis.bar(x, values, width, label=f"c={key}")
    for axis, title in zip(
        axes,
        ["throughput ÷ floor (higher is better)", "p50 latency ÷ floor (lower is better)"],
        strict=True,
    ):
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([n + 0.4 - width / 2 for n in range(len(cases))])
        labels = [case.name.replace("gateway: ", "") for case in cases]
        axis.set_xticklabels(labels, rotation=20, ha="right")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_heavy(results: Results, path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = list(HEAVY.concurrencies)
    width = 0.8 / len(HEAVY.cases)
    for i, case in enumerate(HEAVY.cases):
        x = [n + i * width for n in range(len(keys))]
        rps = [results.median(case, key, "rps") for key in keys]
        p99 = [results.median(case, key, "p99_ms") for key in keys]
        label = case.name.replace("heavy: ", "")
        axes[0].bar(x, rps, width, label=label)
        axes[1].bar(x, p99, width, label=label)
    for axis, title in zip(
        axes, ["requests/s (higher is better)", "p99 latency, ms (lower is better)"], strict=True
    ):
        axis.set_xticks([n + 0.4 - width / 2 for n in range(len(keys))])
        axis.set_xticklabels([f"c={key}" for key in keys])
        axis.set_title(f"heavy model: {title}")
        axis.legend()
    axes[1].set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_load(load: LoadResults, path: Path) -> None:
    """Latency of answered (200) requests and goodput against offered load."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for case, colour in ((LOAD_OFF, "tab:orange"), (LOAD_ON, "tab:green")):
        points = load.sweep.get(case.name, [])
        rates = [p.rate for p in points]
        label = case.name.replace("heavy: ", "").replace(", admission", "")
        for q, style in ((50, "--"), (99, "-")):
            latencies = [p.percentile(q, 200) * 1e3 for p in points]
            axes[0].plot(rates, latencies, style, color=colour, marker="o", label=f"{label} p{q}")
        axes[1].plot(rates, [p.goodput for p in points], color=colour, marker="o", label=label)
    axes[0].axhline(REQUEST_TIMEOUT_S * 1e3, color="black", linewidth=0.8, linestyle=":")
    axes[0].set_yscale("log")
    axes[0].set_title("heavy model: latency of 200 answers, ms (deadline dotted)")
    top = max(p.rate for points in load.sweep.values() for p in points)
    axes[1].plot([0, top], [0, top], color="black", linewidth=0.8, linestyle=":", label="offered")
    axes[1].set_title("heavy model: answered (200) requests/s")
    for axis in axes:
        axis.set_xlabel("offered load, requests/s (open loop)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_soak(soak: Soak, path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot([t / 60 for t in soak.times], [sum(r) for r in soak.rss], marker=".")
    axis.axhline(soak.baseline() * (1 + RSS_FLAT), color="black", linewidth=0.8, linestyle=":")
    axis.set_xlabel("minutes of load")
    axis.set_ylabel("RSS, MB")
    axis.set_title("gateway (bundled models, one worker): RSS under load (+5% dotted)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ms(seconds: float) -> str:
    """Seconds as milliseconds; a dash for no figure (no such answer, or no answer at all)."""
    return f"{seconds * 1e3:.1f}" if math.isfinite(seconds) else "—"


def sweep_table(load: LoadResults) -> str:
    lines = [
        "| gateway | offered req/s | ÷ capacity | 200/s | 200 p50 ms | 200 p99 ms | 429 | 504 "
        "| other | 429/504 p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in (LOAD_OFF, LOAD_ON):
        for p in load.sweep.get(case.name, []):
            lines.append(
                f"| {case.name.replace('heavy: ', '')} | {p.rate:.0f} | "
                f"{p.rate / load.capacity:.2f} | {p.goodput:.0f} | {ms(p.percentile(50, 200))} | "
                f"{ms(p.percentile(99, 200))} | {p.share(429):.1%} | {p.share(504):.1%} | "
                f"{p.other_errors()} | {ms(p.percentile(99, 429, 504))} |"
            )
    return "\n".join(lines)


def overload_text(load: LoadResults) -> str:
    o = load.overload
    if o is None:
        return "Not run."
    rejected = sorted(v for s in (429, 504) for v in o.latencies.get(s, []))
    within = sum(1 for v in rejected if v <= REJECTED_WITHIN_S) / max(len(rejected), 1)
    lines = [
        f"Offered {o.rate:.0f} requests/s for {o.seconds:g} s ({OVERLOAD:g} x the capacity of "
        f"{load.capacity:.0f} requests/s), {o.total} requests; the client's send lag p99 "
        f"{ms(o.lag_p99_s)} ms, its core {o.client_busy:.0%} busy, {o.connections} connections.",
        "",
        "| answer | count | share | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for status, values in sorted(o.latencies.items()):
        name = STATUS_NAMES.get(status, str(status))
        lines.append(
            f"| {name} | {len(values)} | {len(values) / o.total:.1%} | "
            f"{ms(o.percentile(50, status))} | {ms(o.percentile(99, status))} | {ms(values[-1])} |"
        )
    lines += [
        "",
        f"- Answered 200: {o.goodput:.0f} requests/s; p99 {ms(o.percentile(99, 200))} ms against "
        f"the {REQUEST_TIMEOUT_S * 1e3:.0f} ms deadline.",
        f"- Rejected (429 and 504): {len(rejected)}, {within:.1%} of them answered within "
        f"{REJECTED_WITHIN_S * 1e3:.0f} ms; the gateway counted "
        f"{dict(load.overload_rejections) or 'none'} in `gateway_rejected_requests_total`.",
        f"- Other answers and failures (5xx but 504, no answer, a failed or unsent request): "
        f"{o.other_errors()}.",
    ]
    if load.rejecting is not None:
        rate, share, cpu_us = load.rejecting
        lines.append(
            f"- For scale: with a queue of one (`max_queue_size: 1`, wrk at c=64), where "
            f"{share:.1%} of the answers are 429, the gateway answered {rate:.0f} requests/s "
            f"at {cpu_us:.0f} µs of its core each: about the most it can turn away. The "
            f"overload offered {o.rate / rate:.1f} times that."
        )
    for route, (p99, worst, failures) in probe_summary(o).items():
        lines.append(
            f"- `GET {route}` every {2 * PROBE_INTERVAL_S:g} s on a new connection meanwhile: p99 "
            f"{ms(p99)} ms, max {ms(worst)} ms, {failures} not 200."
        )
    return "\n".join(lines)


STATUS_NAMES = {
    UNANSWERED: "no answer",
    FAILED: "connection failed",
    NO_CONNECTION: "not sent (client at its connection limit)",
}


def memory_table(footprints: list[Footprint]) -> str:
    lines = [
        "| workers | RSS per worker when ready, MB | after load, MB | load |",
        "| ---: | --- | --- | --- |",
    ]
    for f in footprints:
        lines.append(
            f"| {f.workers} | {', '.join(f'{r:.0f}' for r in f.ready)} | "
            f"{', '.join(f'{r:.0f}' for r in f.loaded)} | {f.seconds:g} s, "
            f"{f.requests_per_s:.0f} req/s |"
        )
    return "\n".join(lines)


def soak_summary(soak: Soak) -> str:
    totals = [sum(r) for r in soak.rss]
    return (
        f"{soak.seconds / 60:g} minutes of mixed load ({soak.requests_per_s:.0f} req/s, "
        f"{soak.errors} errors), one worker: RSS {totals[0]:.0f} MB at the start, "
        f"{soak.baseline():.0f} MB after {SOAK_BASELINE_S:g} s, {totals[-1]:.0f} MB at the end, "
        f"at most {max(totals):.0f} MB: {soak.growth():+.1%} against the value after "
        f"{SOAK_BASELINE_S:g} s"
    )


def save_soak(soak: Soak, directory: Path) -> None:
    (directory / "benchmarks-soak.json").write_text(json.dumps(soak.__dict__, indent=1) + "\n")
    plot_soak(soak, directory / "benchmarks-soak.png")


def load_soak(directory: Path) -> Soak | None:
    path = directory / "benchmarks-soak.json"
    return Soak(**json.loads(path.read_text())) if path.exists() else None


@dataclass
class Target:
    what: str
    measured: str
    met: bool | None  # None: not measured here


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "elsewhere"}[met]


def targets(
    results: Results, load: LoadResults, footprints: list[Footprint], soak: Soak | None
) -> str:
    found = [*heavy_targets(results), *mlp_targets(results), *overload_targets(load)]
    found += memory_targets(footprints, soak)
    lines = ["| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {t.what} | {t.measured} | {verdict(t.met)} |" for t in found]
    return "\n".join(lines)


def heavy_targets(results: Results) -> list[Target]:
    def gain(key: int, figure: str) -> float:
        return ratio(results, HEAVY_ON, HEAVY_OFF, key, figure)

    rps, p99, p50 = gain(32, "rps"), gain(32, "p99_ms"), gain(1, "p50_ms")
    return [
        Target("heavy, c=32: batching on >= 3x the req/s of off", f"{rps:.2f}x", rps >= 3),
        Target("heavy, c=32: batching on p99 <= 1.5x off's", f"{p99:.2f}x", p99 <= 1.5),
        Target("heavy, c=1: batching on p50 within 10% of off's", f"{p50:.2f}x", p50 <= 1.1),
    ]


def mlp_targets(results: Results) -> list[Target]:
    floor = MLP.floor
    p50 = {
        (case.name, key): ratio(results, case, floor, key, "p50_ms")
        for case in (LIVE, CANARY)
        for key in (1, AGAIN)
    }
    worst = max(p50.values())
    described = "; ".join(
        f"{name.replace('gateway: ', '')} {'c=1' if key == 1 else 'c=1 after c=32'} {v:.2f}x"
        for (name, key), v in p50.items()
    )
    rps = {case.name: ratio(results, case, floor, 32, "rps") for case in (LIVE, CANARY)}
    return [
        Target("mlp, c=1: p50 <= 1.1x the floor whatever ran before", described, worst <= 1.1),
        Target(
            "mlp, c=32: >= 1.2x the floor's req/s",
            "; ".join(f"{n.replace('gateway: ', '')} {v:.2f}x" for n, v in rps.items()),
            min(rps.values()) >= 1.2,
        ),
        Target("mlp: >= 5x KServe's and MLServer's req/s", "[peers.md](peers.md)", None),
    ]


def overload_targets(load: LoadResults) -> list[Target]:
    o = load.overload
    if o is None:
        return []
    p99 = o.percentile(99, 200)
    rejected = sorted(v for s in (429, 504) for v in o.latencies.get(s, []))
    within = sum(1 for v in rejected if v <= REJECTED_WITHIN_S) / max(len(rejected), 1)
    probes = probe_summary(o)
    worst_probe = max((worst for _, worst, _ in probes.values()), default=math.nan)
    return [
        Target(
            f"overload {OVERLOAD:g}x: p99 of admitted < the deadline",
            f"{ms(p99)} ms against {REQUEST_TIMEOUT_S * 1e3:.0f} ms",
            p99 < REQUEST_TIMEOUT_S,
        ),
        Target(
            "overload: every other request 429/504 within 10 ms",
            f"{within:.1%} of {len(rejected)} within 10 ms (p99 "
            f"{ms(percentile(rejected, 99))} ms); {o.other_errors()} other",
            within == 1.0 and o.other_errors() == 0,
        ),
        Target(
            "overload: zero 5xx (but 504)",
            f"{o.count(500, 502, 503)}; and {o.count(UNANSWERED, FAILED)} unanswered, "
            f"{o.count(NO_CONNECTION)} not sent (all {CONNECTION_LIMIT} connections waiting)",
            o.count(500, 502, 503, UNANSWERED, FAILED) == 0,
        ),
        Target(
            "overload: health and /metrics within 50 ms",
            f"max {ms(worst_probe)} ms",
            worst_probe <= PROBE_WITHIN_S,
        ),
    ]


def memory_targets(footprints: list[Footprint], soak: Soak | None) -> list[Target]:
    found = []
    if footprints:
        worst = max(max(f.loaded + f.ready) for f in footprints)
        measured = f"max {worst:.0f} MB (ready and after {footprints[0].seconds:g} s of load)"
        if soak is not None:
            longest = max(max(r) for r in soak.rss)
            measured += f"; {longest:.0f} MB over the {soak.seconds / 60:g}-minute soak"
            worst = max(worst, longest)
        found.append(
            Target("RSS per worker, bundled models, <= 150 MB", measured, worst <= RSS_TARGET_MB)
        )
    if soak is not None:
        found.append(
            Target(
                "RSS flat (within 5%) over a 10-minute load",
                f"{soak.growth():+.1%} over {soak.seconds / 60:g} min",
                soak.growth() <= RSS_FLAT and soak.seconds >= 600,
            )
        )
    else:
        found.append(Target("RSS flat over a 10-minute load", "not run (`--soak 600`)", None))
    found.append(Target("rolling restart: zero failed requests", "loadtests/README.md", None))
    return found
