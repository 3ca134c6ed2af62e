"""The Helm chart's dashboard, alert rules and values: they use only what the gateway exports.

PromQL is checked with a small scanner, not a full parser: enough to find every metric name and
every label an expression selects or groups by, and to fail when one of them does not exist
(the README's "Metrics and logs" section), so a renamed metric cannot leave a silently empty panel or a dead alert behind.
"""

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.http.endpoints import ROUTES
from gateway.metrics import Metrics
from gateway.monitoring.monitor import _Gauges
from gateway.routing.state import Canary, RoutingState
from gateway.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "helm" / "model-gateway"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
ALERTS = CHART / "files" / "alerts.yaml"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))

# Prometheus adds the target labels to every scraped series, and `up` is its own per target.
TARGET_LABELS = frozenset({"job", "instance"})
BUILTIN_METRICS: dict[str, frozenset[str]] = {"up": frozenset()}
REQUIRED_ALERTS = {
    "GatewayCanaryErrorRateAboveLive",
    "GatewayCanaryP99AboveLive",
    "GatewayShadowRecordsDropped",
    "GatewayNotReady",
    "GatewayFeatureDrift",
    "GatewayOutputDrift",
    "GatewayOnlineAccuracyBelowLive",
    "GatewayOnlineErrorAboveLive",
    "GatewayFeatureMissingValues",
    "GatewayRolloutRolledBack",
}
# Model monitoring's series (README "Monitoring"): the gauges the monitor exports at each scrape,
# and the counters of Metrics it records.
MONITORING_METRICS = {
    "gateway_feature_drift": {"model", "variant", "feature", "statistic"},
    "gateway_output_drift": {"model", "variant", "output", "statistic"},
    "gateway_feature_missing_ratio": {"model", "variant", "feature"},
    "gateway_feature_out_of_range_ratio": {"model", "variant", "feature"},
    "gateway_output_class_ratio": {"model", "variant", "output", "class"},
    "gateway_monitor_window_rows": {"model", "variant"},
    "gateway_online_metric": {"model", "variant", "metric"},
    "gateway_feedback_total": {"model", "variant", "outcome"},
    "gateway_monitor_dropped_total": {"model"},
}
ROUTING_METRICS = {"gateway_live_variant", "gateway_canary_weight"}

# --- what the gateway exports ------------------------------------------------------------------


@cache
def exported() -> dict[str, frozenset[str]]:
    """Sample name -> label names of a fresh Metrics and the monitor's gauges, one child each."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # Labelled collectors export no sample until a child exists; the recording methods make one.
    metrics.observe_request("m", "blue", "live", 200, 0.01)
    metrics.observe_inference("m", "blue", 0.01)
    metrics.shadow_record("m", "green", "logged")
    metrics.shadow_comparison("m", "green", True)
    metrics.set_routing("m", RoutingState(live="blue", canary=Canary("green", 0.1)), ["blue"])
    metrics.feedback("m", "blue", "joined", 1)
    metrics.monitor_dropped("m")
    metrics.rollout_decision("m", "advance")
    metrics.observe_batch("m", "blue", 4)
    metrics.observe_queue("m", "blue", 0.001)
    metrics.rejected("m", "blue", "queue_full")
    registry.register(MonitoringGauges())
    registry.register(RolloutGauges())
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        assert family.samples, f"{family.name} exports nothing: record a sample of it above"
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


class MonitoringGauges:
    """The monitor's gauges of one scrape, for one variant with every statistic known."""

    def collect(self) -> Iterator[Metric]:
        gauges = _Gauges()
        drift = {"psi": 0.3, "wasserstein": 1.5}
        feature = {"feature": "x", **drift, "missing_ratio": 0.0, "out_of_range_ratio": 0.1}
        gauges.add(
            "m",
            "blue",
            {
                "rows": 100,
                "inputs": [feature],
                "outputs": [{"output": "score", **drift}],
                "classes": {"label": {"psi": 0.2, "shares": {"0": 0.5, "1": 0.5}}},
                "online": {"accuracy": 0.9, "mae": 0.1, "rmse": 0.2},
            },
        )
        yield from gauges.all()


class RolloutGauges:
    """The rollout controller's gauge of one scrape (`RolloutController.collect`), for one model."""

    def collect(self) -> Iterator[Metric]:
        step = GaugeMetricFamily(
            "gateway_rollout_step", "Current step of the model's rollout.", labels=["model"]
        )
        step.add_metric(["m"], 1)
        yield step


def known_metrics() -> dict[str, frozenset[str]]:
    return {**exported(), **BUILTIN_METRICS}


# --- a PromQL scanner --------------------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# ${datasource}, ${model:regex}, $model, $__rate_interval
GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")
RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [1h:5m]
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
NUMBER = re.compile(r"\b\d[\w.]*")  # 0.99, 1.5e3, 5m, 1h30m: no name starts with a digit
IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def clean(expr: str) -> str:
    """The expression without strings, Grafana variables and range selectors."""
    expr = STRING.sub('""', expr)
    expr = GRAFANA_VARIABLE.sub("", expr)
    return RANGE.sub("", expr)


def metric_names(expr: str) -> set[str]:
    """Every metric name in a PromQL expression (a name followed by `(` is a function)."""
    expr = SELECTOR.sub(lambda match: (match.group(1) or "") + " ", clean(expr))
    expr = NUMBER.sub(" ", CLAUSE.sub(" ", expr))
    names = set()
    for match in IDENTIFIER.finditer(expr):
        is_call = expr[match.end() :].lstrip().startswith("(")
        if not is_call and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def _group(expr: str, open_at: int) -> str:
    """The balanced parenthesised group that opens at `open_at`."""
    depth = 0
    for index in range(open_at, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[open_at : index + 1]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def _group_before(expr: str, close_at: int) -> str:
    """The balanced parenthesised group that closes at `close_at`."""
    depth = 0
    for index in range(close_at, -1, -1):
        depth += {")": 1, "(": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[index : close_at + 1]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def _aggregated(expr: str, clause: re.Match[str]) -> str:
    """What a `by (...)` or `without (...)` clause groups: `sum by (l) (x)` or `sum (x) by (l)`."""
    after = expr[clause.end() :]
    if after.lstrip().startswith("("):
        return _group(expr, clause.end() + len(after) - len(after.lstrip()))
    return _group_before(expr, len(expr[: clause.start()].rstrip()) - 1)


def label_uses(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for every label matcher and every `by`/`without` label of a metric."""
    expr = clean(expr)
    for selector in SELECTOR.finditer(expr):
        for label in MATCHER_LABEL.findall(selector.group(2)):
            yield selector.group(1) or "", label
    for clause in CLAUSE.finditer(expr):
        if clause.group(1) not in ("by", "without"):
            continue
        labels = [label.strip() for label in clause.group(2).split(",") if label.strip()]
        for metric in metric_names(_aggregated(expr, clause)):
            yield from ((metric, label) for label in labels)


def balanced(expr: str) -> bool:
    """Whether every bracket of the expression (strings aside) closes, and in order."""
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - known_metrics().keys()


def unknown_labels(expr: str) -> set[str]:
    metrics = known_metrics()
    return {
        f"{metric}:{label}"
        for metric, label in label_uses(expr)
        if metric in metrics and label not in metrics[metric] | TARGET_LABELS
    }


# --- the files ---------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def load_alerts() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return rules


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded into collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def row_panels(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels of a row: folded into it when collapsed, else those up to the next row."""
    panels: list[dict[str, Any]] | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            if panels is not None:
                break
            if panel["title"] == title:
                panels = list(panel.get("panels", []))
        elif panels is not None:
            panels.append(panel)
    assert panels, f"no row {title!r} with panels"
    return panels


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_alerts()["groups"] for rule in group["rules"]]


def alert_group(name: str) -> dict[str, dict[str, Any]]:
    """One rule group's rules, by alert name."""
    groups = {group["name"]: group["rules"] for group in load_alerts()["groups"]}
    assert name in groups, f"no rule group {name!r}"
    return {rule["alert"]: rule for rule in groups[name]}


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def variable_queries() -> dict[str, re.Match[str]]:
    """Grafana query variables, parsed as label_values([selector,] label)."""
    queries = {}
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text.strip())
            assert match, f"variable {variable['name']}: expected label_values(...), got {text!r}"
            queries[variable["name"]] = match
    return queries


def expressions() -> dict[str, str]:
    """Every PromQL expression of the chart, keyed by where it comes from."""
    found = {}
    for panel in all_panels(load_dashboard()):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for name, match in variable_queries().items():
        found[f"variable {name}"] = match.group("selector") or ""
    for rule in alert_rules():
        found[f"alert {rule['alert']}"] = rule["expr"]
    return found


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over the chart's values: maps merge, the rest replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def scenario_values(path: Path) -> dict[str, Any]:
    return merge(chart_values(), yaml.safe_load(path.read_text(encoding="utf-8")) or {})


EXPRESSIONS = expressions()

# --- the scanner itself ------------------------------------------------------------------------


def test_scanner_finds_metric_names_and_skips_the_rest() -> None:
    """Functions, label names, strings, clauses, numbers, durations and variables are no metrics."""
    expr = (
        'sum by (model, le) (rate(gateway_bogus_bucket{model=~"$model", code=~"5.."}[$__rate_interval]))'
        " / on (model) group_left () histogram_quantile(0.99, other_metric) > bool 1.5e3"
        " and up offset 1h30m or sum(x:recorded) without (instance)"
    )
    assert metric_names(expr) == {"gateway_bogus_bucket", "other_metric", "up", "x:recorded"}


def test_scanner_checks_brackets() -> None:
    """Unclosed, extra or crossed brackets are caught; brackets inside strings are not."""
    assert balanced('sum by (model) (rate(x{code=~"5(.."}[5m]))')
    assert not balanced("sum by (model) (rate(x[5m])")
    assert not balanced("rate(x[5m)]")
    assert not balanced("x)")


def test_scanner_reports_unknown_metrics_and_labels() -> None:
    """A misspelt metric, an unknown matcher label and an unknown grouping label are caught."""
    assert unknown_metrics("rate(gateway_request_total[5m])") == {"gateway_request_total"}
    expr = 'sum by (model, pod, job) (rate(gateway_requests_total{colour="red"}[5m]))'
    assert unknown_labels(expr) == {"gateway_requests_total:pod", "gateway_requests_total:colour"}
    grouped_after = "sum(rate(gateway_inflight_requests[5m])) by (model)"
    assert unknown_labels(grouped_after) == {"gateway_inflight_requests:model"}


def test_exported_metrics_are_the_contract_ones() -> None:
    """The derived export list holds the README's "Metrics and logs" section's series, with their labels."""
    metrics = exported()
    assert metrics["gateway_requests_total"] == {"model", "variant", "role", "code"}
    assert metrics["gateway_request_duration_seconds_bucket"] == {"model", "variant", "role", "le"}
    assert metrics["gateway_inflight_requests"] == frozenset()
    assert {"gateway_canary_weight", "gateway_live_variant", "gateway_routing_revision"} <= set(
        metrics
    )
    assert {name: metrics[name] for name in MONITORING_METRICS} == MONITORING_METRICS


# --- the dashboard -----------------------------------------------------------------------------


def test_dashboard_has_titled_panels_with_targets() -> None:
    """The dashboard JSON loads, and every panel has a title and PromQL targets on ${datasource}."""
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    panels = [panel for panel in all_panels(dashboard) if panel["type"] != "row"]
    assert len(panels) >= 8
    assert len({panel["id"] for panel in all_panels(dashboard)}) == len(list(all_panels(dashboard)))
    for panel in panels:
        assert panel.get("title"), panel
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_variables() -> None:
    """A Prometheus datasource variable, and model and variant variables from label_values."""
    variables = {item["name"]: item for item in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = variable_queries()
    assert queries["model"].group("label") == "model"
    assert queries["variant"].group("label") == "variant"
    assert "$model" in (queries["variant"].group("selector") or "")


def test_dashboard_covers_every_gateway_metric() -> None:
    """Traffic, p50/p95/p99, errors, rollout gauges, shadow and in-flight series all have panels."""
    targets = [
        target["expr"]
        for panel in all_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]
    used = set().union(*(metric_names(expr) for expr in targets))
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_canary_weight",
        "gateway_live_variant",
        "gateway_routing_revision",
        "gateway_shadow_comparisons_total",
        "gateway_shadow_records_total",
        "gateway_inflight_requests",
    } <= used
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in expr and "gateway_request_duration_seconds" in expr
            for expr in targets
        ), quantile
    assert any('code=~"5.."' in expr for expr in targets)
    assert any('agree="true"' in expr for expr in targets)


def test_monitoring_row_covers_the_monitoring_metrics() -> None:
    """The "Model monitoring" row reads only monitoring and routing series, every one of them,
    filtered by the model variable; its PSI panels draw the 0.1 and 0.25 thresholds."""
    panels = row_panels(load_dashboard(), "Model monitoring")
    targets = {
        f"{panel['title']!r} {target['refId']}": target["expr"]
        for panel in panels
        for target in panel["targets"]
    }
    used = set().union(*(metric_names(expr) for expr in targets.values()))
    assert used <= MONITORING_METRICS.keys() | ROUTING_METRICS
    assert used >= MONITORING_METRICS.keys()
    for where, expr in targets.items():
        assert 'model=~"$model"' in expr, where
    psi_panels = [
        panel
        for panel in panels
        if any('statistic="psi"' in target["expr"] for target in panel["targets"])
    ]
    assert len(psi_panels) == 2  # input and output drift
    for panel in psi_panels:
        defaults = panel["fieldConfig"]["defaults"]
        steps = [step["value"] for step in defaults["thresholds"]["steps"]]
        assert steps == [None, 0.1, 0.25], panel["title"]
        assert defaults["custom"]["thresholdsStyle"]["mode"].startswith("line"), panel["title"]
    per_variant = [
        expr
        for expr in targets.values()
        if metric_names(expr) & {"gateway_online_metric", "gateway_output_class_ratio"}
    ]
    assert len(per_variant) == 2
    assert all(re.search(r"by \([^)]*\bvariant\b", expr) for expr in per_variant)
    feedback = [expr for expr in targets.values() if "gateway_feedback_total" in expr]
    assert any('outcome="joined"' in expr for expr in feedback)
    assert any('outcome="unmatched"' in expr for expr in feedback)
    assert all("rate(gateway_feedback_total" in expr for expr in feedback)


@pytest.mark.parametrize("expr", EXPRESSIONS.values(), ids=EXPRESSIONS.keys())
def test_expression_names_only_exported_metrics(expr: str) -> None:
    """Every metric an expression names is one the gateway exports (or Prometheus' `up`)."""
    assert metric_names(expr), "no metric found: the scanner or the expression is wrong"
    assert not unknown_metrics(expr)


@pytest.mark.parametrize("expr", EXPRESSIONS.values(), ids=EXPRESSIONS.keys())
def test_expression_brackets_balance(expr: str) -> None:
    """Every parenthesis, range and selector bracket of an expression closes, in order."""
    assert balanced(expr)


@pytest.mark.parametrize("expr", EXPRESSIONS.values(), ids=EXPRESSIONS.keys())
def test_expression_uses_only_labels_of_its_metrics(expr: str) -> None:
    """Every label matched or grouped by is one its metric has (le for buckets, job, instance)."""
    assert not unknown_labels(expr)


def test_variable_labels_exist() -> None:
    """label_values() asks each variable's metric for a label it has."""
    metrics = known_metrics()
    for name, match in variable_queries().items():
        for metric in metric_names(match.group("selector") or ""):
            assert match.group("label") in metrics[metric], name


# --- the alert rules ---------------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    """Every rule has alert, expr, for, a severity, a summary and a description."""
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert rule["alert"] and rule["expr"].strip(), rule
        assert re.fullmatch(r"(\d+[smhd])+", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_required_alerts_watch_the_right_series() -> None:
    """Canary errors and p99 against live, shadow drops and not-ready alerts are there."""
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    errors = rules["GatewayCanaryErrorRateAboveLive"]
    assert 'role="canary"' in errors and 'role="live"' in errors and 'code=~"5.."' in errors
    latency = rules["GatewayCanaryP99AboveLive"]
    assert latency.count("histogram_quantile(0.99,") == 2 and 'role="live"' in latency
    assert 'outcome="dropped"' in rules["GatewayShadowRecordsDropped"]
    assert metric_names(rules["GatewayNotReady"]) == {"up"}


def test_monitoring_alerts_watch_the_right_series() -> None:
    """Drift on full windows, online metrics against live with enough feedback, missing values."""
    rules = alert_group("model-gateway.monitoring")
    assert set(rules) == {
        "GatewayFeatureDrift",
        "GatewayOutputDrift",
        "GatewayOnlineAccuracyBelowLive",
        "GatewayOnlineErrorAboveLive",
        "GatewayFeatureMissingValues",
    }
    for name, rule in rules.items():
        assert rule["for"] == "15m", name
        assert rule["labels"]["severity"] == "warning", name
        assert metric_names(rule["expr"]) <= MONITORING_METRICS.keys() | ROUTING_METRICS, name
    for name, drift in (
        ("GatewayFeatureDrift", "gateway_feature_drift"),
        ("GatewayOutputDrift", "gateway_output_drift"),
    ):
        expr = rules[name]["expr"]
        assert f'{drift}{{statistic="psi"}}) > 0.25' in expr, name
        assert "and on (model, variant)" in expr, name
        assert "(gateway_monitor_window_rows) >= 100" in expr, name
    for name, metric in (
        ("GatewayOnlineAccuracyBelowLive", "accuracy"),
        ("GatewayOnlineErrorAboveLive", "mae"),
    ):
        expr = rules[name]["expr"]
        assert expr.count(f'gateway_online_metric{{metric="{metric}"}}') == 2, name
        assert expr.count("(gateway_live_variant) == 1)") == 2, name
        assert "unless on (model, variant)" in expr and "on (model) group_left ()" in expr, name
        assert 'increase(gateway_feedback_total{outcome="joined"}[1h])) > 50' in expr, name
        description = rules[name]["annotations"]["description"]
        assert "gateway abort" in description and "gateway rollback" in description, name
    assert "- 0.02" in rules["GatewayOnlineAccuracyBelowLive"]["expr"]
    assert "1.1 * max by (model)" in rules["GatewayOnlineErrorAboveLive"]["expr"]
    missing = rules["GatewayFeatureMissingValues"]
    assert "(gateway_feature_missing_ratio) > 0.05" in missing["expr"]
    assert "upstream data pipeline" in missing["annotations"]["description"]


# --- the chart's values ------------------------------------------------------------------------


def test_values_schema_is_json_and_ci_values_load() -> None:
    """values.schema.json is a JSON object schema; every ci/*-values.yaml is a YAML mapping."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["type"] == "object" and "config" in schema["properties"]
    assert {path.name for path in SCENARIOS} >= {
        "default-values.yaml",
        "redis-values.yaml",
        "extras-values.yaml",
        "rollout-values.yaml",
    }
    for path in SCENARIOS:
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path.name


def test_values_validate_against_schema() -> None:
    """values.yaml, and each ci scenario merged over it, validate against values.schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(chart_values(), schema)
    for path in SCENARIOS:
        jsonschema.validate(scenario_values(path), schema)


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.name for path in SCENARIOS])
def test_chart_config_is_a_valid_gateway_config(path: Path) -> None:
    """The gateway config each scenario renders passes the gateway's own validation (§1)."""
    settings = Settings.model_validate(scenario_values(path)["config"])
    assert settings.model_repository.is_absolute() and settings.data_dir.is_absolute()


def test_probes_call_health_routes_the_gateway_serves() -> None:
    """The chart's startup, liveness and readiness probes use /v2/health/live and /ready."""
    paths = {route.path for route in ROUTES}
    probes = chart_values()["probes"]
    assert probes["readiness"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in probes.values():
        assert probe["httpGet"]["path"] in paths


def test_templates_load_only_files_that_exist() -> None:
    """Every .Files.Get in the templates names a file shipped in the chart."""
    wanted = set()
    for template in (CHART / "templates").iterdir():
        wanted.update(re.findall(r'\.Files\.Get\s+"([^"]+)"', template.read_text(encoding="utf-8")))
    assert wanted >= {"files/alerts.yaml", "files/grafana-dashboard.json"}
    for name in wanted:
        assert (CHART / name).is_file(), name


def test_promtool_accepts_the_alert_rules() -> None:
    """Prometheus' own checker parses every rule (tests/run.sh puts promtool beside Python)."""
    promtool = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    assert Path(promtool).exists(), "promtool is missing: tests/run.sh installs it into .venv/bin"
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
