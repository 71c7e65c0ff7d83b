{{/* The release's resource name, at most 63 characters. */}}
{{- define "modelpress.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelpress.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelpress.labels" -}}
{{ include "modelpress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelpress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelpress.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The kopf peering object the replicas share. */}}
{{- define "modelpress.peeringName" -}}
{{- default (include "modelpress.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/* The namespace whose jobs the operator watches (namespaced mode). */}}
{{- define "modelpress.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace -}}
{{- end -}}

{{/* The image of pipeline steps (and of the only spec.image allowed by default). */}}
{{- define "modelpress.stepImage" -}}
{{- printf "%s:%s" .Values.image.step.repository (default .Chart.AppVersion .Values.image.step.tag) -}}
{{- end -}}

{{/* The local backend runs the steps inside the operator pod: it needs the step image. */}}
{{- define "modelpress.image" -}}
{{- $image := ternary .Values.image.step .Values.image.operator (eq .Values.backend "local") -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The scrape job name the alert rules and dashboards select on (files/). */}}
{{- define "modelpress.scrapeJob" -}}
modelpress-operator
{{- end -}}

{{/* The operator's settings (modelpress/settings.py, operator/config.py). */}}
{{- define "modelpress.env" -}}
# The root filesystem is read-only: libraries that write under $HOME get /tmp.
- name: HOME
  value: /tmp
- name: MODELPRESS_CACHE_DIR
  value: /var/cache/modelpress
- name: MODELPRESS_LIVENESS_ENDPOINT
  value: {{ printf "http://0.0.0.0:%d/healthz" (int .Values.healthPort) | quote }}
- name: MODELPRESS_DEFAULT_OUTPUT
  value: {{ .Values.operator.defaultOutput | quote }}
- name: MODELPRESS_MAX_RUNS_IN_FLIGHT
  value: {{ .Values.operator.maxRunsInFlight | quote }}
- name: MODELPRESS_MAX_RUNS_PER_NAMESPACE
  value: {{ .Values.operator.maxRunsPerNamespace | quote }}
- name: MODELPRESS_MAX_DEADLINE_SECONDS
  value: {{ .Values.operator.maxDeadlineSeconds | quote }}
- name: MODELPRESS_NAMESPACE_PREFIXES
  value: {{ .Values.tenancy.prefixes | toJson | quote }}
- name: MODELPRESS_STEP_IMAGE
  value: {{ include "modelpress.stepImage" . | quote }}
{{- with .Values.tenancy.allowedImages }}
- name: MODELPRESS_ALLOWED_IMAGES
  value: {{ . | toJson | quote }}
{{- end }}
- name: MODELPRESS_POLL_INTERVAL_SECONDS
  value: {{ .Values.operator.pollIntervalSeconds | quote }}
- name: MODELPRESS_SYNC_WORKERS
  value: {{ .Values.operator.syncWorkers | quote }}
- name: MODELPRESS_CONTROL_NICENESS
  value: {{ .Values.operator.controlNiceness | quote }}
- name: MODELPRESS_WORKER_NICENESS
  value: {{ .Values.operator.workerNiceness | quote }}
{{- with .Values.promotion.registry }}
- name: MODELPRESS_REGISTRY_MODELS
  value: {{ .models | toJson | quote }}
- name: MLFLOW_HTTP_REQUEST_MAX_RETRIES
  value: {{ .maxRetries | quote }}
- name: MLFLOW_HTTP_REQUEST_TIMEOUT
  value: {{ .timeoutSeconds | quote }}
{{- if .trackingUri }}
- name: MLFLOW_TRACKING_URI
  value: {{ .trackingUri | quote }}
{{- end }}
{{- $secret := .existingSecret }}
{{- if $secret }}
{{- range list "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" "MLFLOW_TRACKING_TOKEN" }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
- name: MODELPRESS_PEERING_NAME
  value: {{ include "modelpress.peeringName" . | quote }}
- name: MODELPRESS_PEERING_LIFETIME_SECONDS
  value: {{ .Values.peering.lifetimeSeconds | quote }}
{{- /* kopf names each replica's peering record after its pod; no priority is set, so each
replica's is its seniority, from when it started: the oldest leads (operator/main.py). */}}
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: MODELPRESS_KSERVE_ENABLED
  value: {{ .Values.promotion.kserve.enabled | quote }}
- name: MODELPRESS_ALLOWED_FILE_ROOTS
  value: {{ .Values.files.allowedRoots | toJson | quote }}
- name: MODELPRESS_TRUST_MODEL_CODE
  value: {{ .Values.trust.modelCode | quote }}
{{- /* Bounds on the work a tenant's spec can cause (values: untrustedSpecs). */}}
- name: MODELPRESS_CEL_BUDGET_SECONDS
  value: {{ .Values.untrustedSpecs.celBudgetSeconds | quote }}
- name: MODELPRESS_ALLOW_PRIVATE_HTTP
  value: {{ .Values.untrustedSpecs.http.allowPrivate | quote }}
- name: MODELPRESS_HTTP_MAX_BYTES
  value: {{ .Values.untrustedSpecs.http.maxBytes | int64 | quote }}
- name: MODELPRESS_HTTP_TIMEOUT_SECONDS
  value: {{ .Values.untrustedSpecs.http.timeoutSeconds | quote }}
- name: MODELPRESS_HTTP_READ_TIMEOUT_SECONDS
  value: {{ .Values.untrustedSpecs.http.readTimeoutSeconds | quote }}
{{- if .Values.operator.allowLocalBackendForAllNamespaces }}
- name: MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES
  value: "true"
{{- end }}
{{- if eq .Values.backend "local" }}
- name: MODELPRESS_LOCAL_WORKDIR
  value: /var/lib/modelpress/runs
{{- else }}
- name: MODELPRESS_KFP_HOST
  value: {{ .Values.kfp.host | quote }}
- name: MODELPRESS_KFP_EXPERIMENT
  value: {{ .Values.kfp.experiment | quote }}
{{- with .Values.kfp.namespace }}
- name: MODELPRESS_KFP_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kfp.pipelineRoot }}
- name: MODELPRESS_KFP_PIPELINE_ROOT
  value: {{ . | quote }}
{{- end }}
- name: MODELPRESS_KFP_TIMEOUT_SECONDS
  value: {{ .Values.kfp.timeoutSeconds | quote }}
- name: MODELPRESS_KFP_ATTEMPTS
  value: {{ .Values.kfp.attempts | quote }}
- name: MODELPRESS_STORAGE_SECRET_NAME
  value: {{ .Values.storage.secretName | quote }}
- name: MODELPRESS_VERIFY_PREFIX
  value: {{ .Values.verification.prefix | quote }}
{{- with .Values.verification.namespace }}
- name: MODELPRESS_VERIFY_NAMESPACE
  value: {{ . | quote }}
{{- end }}
- name: MODELPRESS_VERIFY_SECRET_NAME
  value: {{ .Values.verification.secretName | quote }}
{{- if .Values.kfp.serviceAccountToken.enabled }}
- name: MODELPRESS_KFP_TOKEN_PATH
  value: /var/run/secrets/kubeflow/pipelines/token
{{- end }}
{{- end }}
{{- with .Values.s3.endpoint }}
- name: MODELPRESS_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: MODELPRESS_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: MODELPRESS_S3_CREATE_BUCKETS
  value: {{ .Values.s3.createBuckets | quote }}
{{- with .Values.s3.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.operator.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
