{{/*
Names, labels and the shared pieces every template uses.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "model-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name: release-chart, or the release name alone when it already contains the chart
name. Truncated to 63 characters because some name fields are DNS labels.
*/}}
{{- define "model-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "model-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "model-gateway.labels" -}}
helm.sh/chart: {{ include "model-gateway.chart" . }}
{{ include "model-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the gateway pods; never change them after install (immutable selector). */}}
{{- define "model-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference. */}}
{{- define "model-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the ConfigMap is mounted; GATEWAY_CONFIG points at gateway.yaml inside it. */}}
{{- define "model-gateway.configDir" -}}
/etc/model-gateway
{{- end }}

{{/*
The gateway config file: .Values.config, with model_repository pointing at the models volume
when one is mounted, and the shutdown's drain_s and shutdown_timeout_s from .Values.shutdown
(which also sizes terminationGracePeriodSeconds).
*/}}
{{- define "model-gateway.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.modelsVolume.enabled }}
{{- $_ := set $config "model_repository" .Values.modelsVolume.mountPath }}
{{- end }}
{{- $_ := set $config "drain_s" (int .Values.shutdown.drainSeconds) }}
{{- $_ := set $config "shutdown_timeout_s" (int .Values.shutdown.timeoutSeconds) }}
{{- toYaml $config }}
{{- end }}

{{/*
The least grace a pod needs: Kubernetes counts the preStop hook inside
terminationGracePeriodSeconds, then the gateway drains, then gives requests in flight their
timeout, then closes everything (Kubernetes docs, "Pod Lifecycle", Termination of Pods).
*/}}
{{- define "model-gateway.neededGraceSeconds" -}}
{{- $shutdown := .Values.shutdown }}
{{- add (int .Values.preStopSleepSeconds) (int $shutdown.drainSeconds) (int $shutdown.timeoutSeconds) (int $shutdown.marginSeconds) }}
{{- end }}

{{/* terminationGracePeriodSeconds: the value when set, else the least grace a pod needs. */}}
{{- define "model-gateway.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- include "model-gateway.neededGraceSeconds" . }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* True (non-empty) when some Redis URL is configured. */}}
{{- define "model-gateway.hasRedis" -}}
{{- if or .Values.redis.existingSecret .Values.redis.url .Values.config.redis_url }}true{{ end }}
{{- end }}

{{/*
Refuse settings the gateway cannot honour: several pods or workers in embedded mode would each
keep their own routing state, so a flip on one would not reach the others (the README's "Shipping new versions" section);
a drain set in config alone would not size the grace period, and a grace period shorter than the
shutdown would kill pods in the middle of it.
*/}}
{{- define "model-gateway.validate" -}}
{{- range $key := list "drain_s" "shutdown_timeout_s" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "model-gateway: set shutdown.drainSeconds and shutdown.timeoutSeconds, not config.%s: they also size terminationGracePeriodSeconds" $key) }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- $needed := int (include "model-gateway.neededGraceSeconds" .) }}
{{- if lt (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "model-gateway: terminationGracePeriodSeconds %d is shorter than preStopSleepSeconds + shutdown.drainSeconds + shutdown.timeoutSeconds + shutdown.marginSeconds (%d): pods would be killed mid-drain; raise it or leave it null" (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- end }}
{{- if and .Values.grpc.enabled (eq (int .Values.grpc.containerPort) (int .Values.containerPort)) }}
{{- fail (printf "model-gateway: grpc.containerPort %d is the HTTP containerPort; give gRPC a port of its own" (int .Values.grpc.containerPort)) }}
{{- end }}
{{- $pods := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- $pods = int .Values.autoscaling.maxReplicas }}
{{- end }}
{{- if not (include "model-gateway.hasRedis" .) }}
{{- if gt $pods 1 }}
{{- fail (printf "model-gateway: %d pods (replicaCount or autoscaling.maxReplicas) need Redis to share routing state; set redis.url or redis.existingSecret, or run one pod" $pods) }}
{{- end }}
{{- if gt (int .Values.workers) 1 }}
{{- fail (printf "model-gateway: workers=%d needs Redis to share routing state between workers; set redis.url or redis.existingSecret, or use workers=1" (int .Values.workers)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates for the admin token and the Redis URL. */}}
{{- define "model-gateway.secretName" -}}
{{- include "model-gateway.fullname" . }}
{{- end }}

{{/* True when the chart's own Secret holds the admin token. */}}
{{- define "model-gateway.ownsAdminToken" -}}
{{- if and .Values.admin.enabled (not .Values.admin.existingSecret) }}true{{ end }}
{{- end }}

{{/* True when the chart's own Secret holds the Redis URL. */}}
{{- define "model-gateway.ownsRedisUrl" -}}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/*
The admin token for the chart's Secret: admin.token, else the one already in the cluster (so an
upgrade does not rotate it), else a new random one.
*/}}
{{- define "model-gateway.adminToken" -}}
{{- if .Values.admin.token }}
{{- .Values.admin.token }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "model-gateway.secretName" .) }}
{{- $data := default dict (get (default dict $existing) "data") }}
{{- if hasKey $data "admin-token" }}
{{- index $data "admin-token" | b64dec }}
{{- else }}
{{- randAlphaNum 40 }}
{{- end }}
{{- end }}
{{- end }}
