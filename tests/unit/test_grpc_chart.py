"""The Helm chart's gRPC port and OpenTelemetry values reach the container and the Service
(README "gRPC", "Tracing"), off by default."""

import json

from support import CHART, chart_template, chart_values

from gateway.settings import ENV_OVERRIDES, Settings


def test_grpc_and_tracing_are_off_by_default_as_in_the_gateway() -> None:
    """grpc.enabled false and otel.endpoint empty, as grpc_port and otel_endpoint default to
    None; the gRPC port differs from the HTTP one."""
    chart = chart_values()
    assert chart["grpc"]["enabled"] is False and chart["otel"]["endpoint"] == ""
    assert Settings.model_fields["grpc_port"].default is None
    assert Settings.model_fields["otel_endpoint"].default is None
    assert chart["grpc"]["containerPort"] != chart["containerPort"]


def test_templates_pass_the_values_as_the_gateways_variables() -> None:
    """The Deployment sets GATEWAY_GRPC_PORT and GATEWAY_OTEL_ENDPOINT (variables the gateway
    reads) and a container port named grpc, which the Service targets; probes stay on HTTP."""
    deployment, service = chart_template("deployment.yaml"), chart_template("service.yaml")
    assert ENV_OVERRIDES["GATEWAY_GRPC_PORT"] == "grpc_port"
    assert ENV_OVERRIDES["GATEWAY_OTEL_ENDPOINT"] == "otel_endpoint"
    assert "- name: GATEWAY_GRPC_PORT\n              value: {{ .Values.grpc.containerPort" in (
        deployment
    )
    assert "- name: GATEWAY_OTEL_ENDPOINT" in deployment and "OTEL_TRACES_SAMPLER_ARG" in deployment
    assert (
        "- name: grpc\n              containerPort: {{ .Values.grpc.containerPort }}" in deployment
    )
    assert "targetPort: grpc" in service and "appProtocol: grpc" in service
    assert all(probe["httpGet"]["port"] == "http" for probe in chart_values()["probes"].values())


def test_the_schema_closes_the_grpc_and_otel_values() -> None:
    """values.schema.json lists exactly the grpc and otel values (closed objects)."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    grpc, otel = schema["properties"]["grpc"], schema["properties"]["otel"]
    assert (
        set(grpc["properties"]) == set(chart_values()["grpc"]) and not grpc["additionalProperties"]
    )
    assert (
        set(otel["properties"]) == set(chart_values()["otel"]) and not otel["additionalProperties"]
    )
