# syntax=docker/dockerfile:1
# The gateway with the bundled example models, serving gateway.yaml on port 8000.
#   docker build -t model-gateway .
#   docker run --rm -p 8000:8000 model-gateway
# Settings come from the environment (GATEWAY_CONFIG, GATEWAY_HOST, GATEWAY_PORT, GATEWAY_WORKERS,
# GATEWAY_REDIS_URL, GATEWAY_ADMIN_TOKEN, GATEWAY_GRPC_PORT, GATEWAY_OTEL_ENDPOINT), so the Helm
# chart can point GATEWAY_CONFIG at a ConfigMap without overriding the command.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its wheels into a venv the runtime stage copies whole ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` reads (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Optional extras (pyproject.toml): gRPC and OpenTelemetry, which the chart's grpc.enabled and
# otel.endpoint switch on; `--build-arg EXTRAS=grpc,otel,mlflow` adds MLflow model sources.
ARG EXTRAS=grpc,otel
RUN pip install ".[${EXTRAS}]"

# --- runtime: no build tools, no source tree, a non-root user ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/app/gateway.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_WORKERS=1
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Models and config stay root-owned (read-only for the gateway); only data_dir is writable,
# because embedded mode keeps routing history and the shadow log there, and with Redis each
# model's last-known routing (.gateway next to the config file).
COPY models/ ./models/
COPY gateway.yaml ./
RUN mkdir -p /app/.gateway && chown gateway:gateway /app/.gateway
USER 10001:10001
EXPOSE 8000
# Readiness, not liveness: the gateway is healthy once every model is loaded and warm. Python,
# because the slim image has no curl; an HTTP error (503) raises and exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('GATEWAY_PORT', '8000'), timeout=3)"]
CMD ["gateway", "serve"]
