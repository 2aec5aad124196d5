{{/*
Rate limits: the shared store (server.rateLimitStorage or the bundled redis) and its checks.
Kept apart from _helpers.tpl so the feature reads in one place (chart README "Rate limits").
*/}}

{{- define "reranker.redisName" -}}
{{- printf "%s-redis" (include "reranker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The bundled Redis's own selector: component=redis, so no reranker selector ever matches it. */}}
{{- define "reranker.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "reranker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "reranker.redisLabels" -}}
helm.sh/chart: {{ include "reranker.chart" . }}
{{ include "reranker.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "reranker.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* env entries for the shim container: RERANKER_RATE_LIMIT_STORAGE(_TIMEOUT). */}}
{{- define "reranker.rateLimitStorageEnv" -}}
{{- $store := .Values.server.rateLimitStorage -}}
{{- if $store.existingSecret }}
- name: RERANKER_RATE_LIMIT_STORAGE
  valueFrom:
    secretKeyRef:
      name: {{ $store.existingSecret }}
      key: {{ $store.existingSecretKey }}
{{- else if $store.uri }}
- name: RERANKER_RATE_LIMIT_STORAGE
  value: {{ $store.uri | quote }}
{{- else if .Values.redis.enabled }}
- name: RERANKER_RATE_LIMIT_STORAGE
  value: {{ printf "redis://%s:6379/0" (include "reranker.redisName" .) | quote }}
{{- end }}
{{- if not (kindIs "invalid" $store.timeoutSeconds) }}
- name: RERANKER_RATE_LIMIT_STORAGE_TIMEOUT
  value: {{ include "reranker.envText" $store.timeoutSeconds | quote }}
{{- end }}
{{- end }}

{{/* Cross-value checks; included from reranker.validate's caller (the Deployment). */}}
{{- define "reranker.validateRateLimits" -}}
{{- $store := .Values.server.rateLimitStorage -}}
{{- $stores := 0 -}}
{{- range (list $store.uri $store.existingSecret .Values.redis.enabled) }}{{ if . }}{{ $stores = add1 $stores }}{{ end }}{{ end }}
{{- if gt (int $stores) 1 }}
{{- fail "rate-limit store: set only one of server.rateLimitStorage.uri, server.rateLimitStorage.existingSecret and redis.enabled" }}
{{- end }}
{{- if and (gt (int $stores) 0) (not .Values.server.rateLimit) }}
{{- fail "a rate-limit store (server.rateLimitStorage / redis.enabled) without server.rateLimit limits nothing: set server.rateLimit, e.g. 600/minute" }}
{{- end }}
{{- end }}
