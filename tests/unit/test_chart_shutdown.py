"""The Helm chart's shutdown values agree with the gateway's settings (README "Graceful shutdown")."""

import json

from support import CHART, chart_template, chart_values

from gateway.settings import Settings


def test_shutdown_defaults_are_the_gateways_own() -> None:
    """shutdown.drainSeconds and timeoutSeconds default to drain_s and shutdown_timeout_s;
    no preStop sleep, and the grace period is computed (null)."""
    values = chart_values()
    fields = Settings.model_fields
    assert values["shutdown"]["drainSeconds"] == fields["drain_s"].default
    assert values["shutdown"]["timeoutSeconds"] == fields["shutdown_timeout_s"].default
    assert values["preStopSleepSeconds"] == 0
    assert values["terminationGracePeriodSeconds"] is None


def test_templates_wire_the_shutdown_values() -> None:
    """The config file takes drain_s and shutdown_timeout_s from .Values.shutdown, and the pod's
    terminationGracePeriodSeconds is the helper that sums preStop, drain, timeout and margin."""
    helpers = chart_template("_helpers.tpl")
    assert '"drain_s" (int .Values.shutdown.drainSeconds)' in helpers
    assert '"shutdown_timeout_s" (int .Values.shutdown.timeoutSeconds)' in helpers
    needed = helpers.split('define "model-gateway.neededGraceSeconds"')[1].split("{{- end }}")[0]
    for value in ("preStopSleepSeconds", "drainSeconds", "timeoutSeconds", "marginSeconds"):
        assert value in needed
    deployment = chart_template("deployment.yaml")
    wired = (
        'terminationGracePeriodSeconds: {{ include "model-gateway.terminationGracePeriodSeconds"'
    )
    assert wired in deployment


def test_the_schema_lists_the_shutdown_values() -> None:
    """values.schema.json describes shutdown (closed object) and a nullable grace period."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    shutdown = schema["properties"]["shutdown"]
    assert set(shutdown["properties"]) == {"drainSeconds", "timeoutSeconds", "marginSeconds"}
    assert shutdown["additionalProperties"] is False
    assert "null" in schema["properties"]["terminationGracePeriodSeconds"]["type"]
