{{/*
Names and labels. Every selector in the chart (Service, PDB, NetworkPolicy, ServiceMonitor, HPA target via
the Deployment) is built from reranker.selectorLabels, the same helper that builds the pod labels.
*/}}

{{- define "reranker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reranker.fullname" -}}
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

{{- define "reranker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: the only labels any selector uses. component=server keeps the test pod out. */}}
{{- define "reranker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reranker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Labels on every object (selector labels + metadata). */}}
{{- define "reranker.labels" -}}
helm.sh/chart: {{ include "reranker.chart" . }}
{{ include "reranker.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "reranker.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod template labels: selector labels + version + user pod labels. */}}
{{- define "reranker.podLabels" -}}
{{ include "reranker.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "reranker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reranker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reranker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* Name of the auth Secret (existing or created). */}}
{{- define "reranker.authSecretName" -}}
{{- default (printf "%s-auth" (include "reranker.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "reranker.cacheClaimName" -}}
{{- default (printf "%s-cache" (include "reranker.fullname" .)) .Values.cache.pvc.existingClaim }}
{{- end }}

{{/* RERANKER_MODEL as the container sees it. */}}
{{- define "reranker.modelRef" -}}
{{- if eq .Values.model.source "hub" -}}
{{- .Values.model.id -}}
{{- else if .Values.model.path -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.path) -}}
{{- else -}}
{{- .Values.model.mountPath -}}
{{- end -}}
{{- end }}

{{/*
Render a value as the text of an env var: strings as-is, everything else as JSON (ints stay ints, no
1.6777216e+07; booleans true/false; lists as JSON lists, which the settings parse).
*/}}
{{- define "reranker.envText" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end }}

{{/*
Emit `- name: RERANKER_<FIELD>` entries for a values map. Args: (list $valuesMap $mapping) where
$mapping is a dict valuesKey -> FIELD. Null values are skipped (the launcher default applies).
*/}}
{{- define "reranker.envFromMap" -}}
{{- $values := index . 0 -}}
{{- $mapping := index . 1 -}}
{{- range $key := keys $mapping | sortAlpha }}
{{- $v := index $values $key }}
{{- if not (kindIs "invalid" $v) }}
- name: RERANKER_{{ index $mapping $key }}
  value: {{ include "reranker.envText" $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The drain window: drain.windowSeconds, or its deprecated name drain.launcherDelaySeconds when set. */}}
{{- define "reranker.drainWindow" -}}
{{- $d := .Values.drain -}}
{{- if kindIs "invalid" $d.launcherDelaySeconds }}{{ int $d.windowSeconds }}{{ else }}{{ int $d.launcherDelaySeconds }}{{ end -}}
{{- end }}

{{/* Termination grace: the drain sum, and the value rendered (explicit, checked, or computed). */}}
{{- define "reranker.drainSeconds" -}}
{{- $d := .Values.drain -}}
{{- add (int $d.preStopSleepSeconds) (include "reranker.drainWindow" . | int) (int $d.timeoutSeconds) (int .Values.vllm.shutdownTimeout) -}}
{{- end }}

{{- define "reranker.terminationGracePeriodSeconds" -}}
{{- $needed := add (include "reranker.drainSeconds" . | int) (int .Values.drain.bufferSeconds) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $needed -}}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds=%d is too small: the drain needs drain.preStopSleepSeconds(%d) + drain.windowSeconds(%d) + drain.timeoutSeconds(%d) + vllm.shutdownTimeout(%d) + drain.bufferSeconds(%d) = %d seconds; raise it or unset it (null) to compute it" (int .Values.terminationGracePeriodSeconds) (int .Values.drain.preStopSleepSeconds) (include "reranker.drainWindow" . | int) (int .Values.drain.timeoutSeconds) (int .Values.vllm.shutdownTimeout) (int .Values.drain.bufferSeconds) (int $needed)) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end }}

{{/* Cross-value checks that a JSON schema cannot express. Included from the Deployment. */}}
{{- define "reranker.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: both would own the Deployment's replicas (KEDA creates its own HPA). Disable one." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) must be <= autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.saturation.enabled) (not .Values.autoscaling.requestsPerSecond.enabled) (empty .Values.autoscaling.extraMetrics) }}
{{- fail "autoscaling.enabled needs at least one metric: saturation.enabled, targetCPUUtilizationPercentage, requestsPerSecond.enabled or extraMetrics" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail (printf "keda.minReplicaCount (%d) must be <= keda.maxReplicaCount (%d)" (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- if and (gt (int .Values.gpu.count) 0) (gt (int .Values.vllm.tensorParallelSize) (int .Values.gpu.count)) }}
{{- fail (printf "vllm.tensorParallelSize (%d) exceeds gpu.count (%d)" (int .Values.vllm.tensorParallelSize) (int .Values.gpu.count)) }}
{{- end }}
{{- if and (gt (int .Values.gpu.count) 0) (ne 0 (mod (int .Values.gpu.count) (max 1 (int .Values.vllm.tensorParallelSize)))) }}
{{- fail (printf "gpu.count (%d) is not a multiple of vllm.tensorParallelSize (%d): each engine replica takes tensorParallelSize GPUs, a remainder would sit idle" (int .Values.gpu.count) (int .Values.vllm.tensorParallelSize)) }}
{{- end }}
{{- if and (eq .Values.model.source "hub") (not .Values.model.id) }}
{{- fail "model.source=hub needs model.id (a Hugging Face hub id)" }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.existingClaim.name) }}
{{- fail "model.source=pvc needs model.existingClaim.name" }}
{{- end }}
{{- if and (eq .Values.model.source "hostPath") (not .Values.model.hostPath.path) }}
{{- fail "model.source=hostPath needs model.hostPath.path" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (empty .Values.auth.apiKeys) (not .Values.auth.jwt.secret) (not .Values.auth.jwt.publicKey) }}
{{- fail "auth.enabled needs auth.existingSecret, or auth.apiKeys / auth.jwt.secret / auth.jwt.publicKey for a created Secret" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) .Values.auth.jwt.secret (not .Values.auth.jwt.secretKey) }}
{{- fail "auth.jwt.secret is set: also set auth.jwt.secretKey (the key it is stored under, e.g. jwt-secret)" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) .Values.auth.jwt.publicKey (not .Values.auth.jwt.publicKeyKey) }}
{{- fail "auth.jwt.publicKey is set: also set auth.jwt.publicKeyKey (the key it is stored under, e.g. jwt-public-key.pem)" }}
{{- end }}
{{- if and (eq .Values.drain.preStopAction "sleepAction") (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail "drain.preStopAction=sleepAction needs Kubernetes >= 1.30 (PodLifecycleSleepAction); use exec" }}
{{- end }}
{{- $startupBudget := mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) }}
{{- if lt (int $startupBudget) (int .Values.vllm.startupTimeout) }}
{{- fail (printf "startup probe budget probes.startup.periodSeconds x failureThreshold = %ds is shorter than vllm.startupTimeout (%ds): the kubelet would kill the pod while the launcher still waits for vLLM. Raise failureThreshold or lower vllm.startupTimeout." (int $startupBudget) (int .Values.vllm.startupTimeout)) }}
{{- end }}
{{- end }}

{{/* Engine replicas per pod (RERANKER_ENGINES): gpu.count / vllm.tensorParallelSize, 1 on a CPU. */}}
{{- define "reranker.engines" -}}
{{- if gt (int .Values.gpu.count) 0 -}}
{{- mul (div (int .Values.gpu.count) (max 1 (int .Values.vllm.tensorParallelSize))) (max 1 (int (.Values.gpu.enginesPerGpu | default 1))) -}}
{{- else -}}
1
{{- end -}}
{{- end }}
