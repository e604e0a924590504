{{/*
Names and labels.
*/}}
{{- define "framewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "framewatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "framewatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "framewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "framewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "framewatch.labels" -}}
helm.sh/chart: {{ include "framewatch.chart" . }}
{{ include "framewatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default "unknown" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: framewatch
{{- end -}}

{{- define "framewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "framewatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "framewatch.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "framewatch.registryConfigMapName" -}}
{{- .Values.registry.existingConfigMap | default (printf "%s-registry" (include "framewatch.fullname" .)) -}}
{{- end -}}

{{- define "framewatch.registryEnabled" -}}
{{- if or .Values.registry.content .Values.registry.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/*
Kafka client identity, security protocol, SASL and TLS settings: shared by the sidecar and the tap.
*/}}
{{- define "framewatch.kafkaSecurityEnv" -}}
- name: FRAMEWATCH_KAFKA_CLIENT_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: FRAMEWATCH_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl }}
{{- if .mechanism }}
- name: FRAMEWATCH_KAFKA_SASL_MECHANISM
  value: {{ .mechanism | quote }}
{{- if .usernameKey }}
- name: FRAMEWATCH_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with kafka.sasl.usernameKey" .existingSecret }}
      key: {{ .usernameKey }}
{{- else }}
- name: FRAMEWATCH_KAFKA_SASL_USERNAME
  value: {{ required "kafka.sasl.username (or usernameKey) is required with kafka.sasl.mechanism" .username | quote }}
{{- end }}
- name: FRAMEWATCH_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret (a Secret holding the SASL password) is required with kafka.sasl.mechanism" .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- with .Values.kafka.ssl }}
{{- if .existingSecret }}
- name: FRAMEWATCH_KAFKA_SSL_CAFILE
  value: {{ printf "%s/%s" .mountPath .caKey | quote }}
{{- if .certKey }}
- name: FRAMEWATCH_KAFKA_SSL_CERTFILE
  value: {{ printf "%s/%s" .mountPath .certKey | quote }}
{{- end }}
{{- if .keyKey }}
- name: FRAMEWATCH_KAFKA_SSL_KEYFILE
  value: {{ printf "%s/%s" .mountPath .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Settings as FRAMEWATCH_* environment variables (monitor/settings.py: env wins over any config file).
*/}}
{{- define "framewatch.env" -}}
- name: FRAMEWATCH_HTTP_HOST
  value: "0.0.0.0"
- name: FRAMEWATCH_HTTP_PORT
  value: {{ .Values.containerPort | quote }}
- name: FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: FRAMEWATCH_KAFKA_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: FRAMEWATCH_KAFKA_GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: FRAMEWATCH_DLQ_TOPIC
  value: {{ .Values.kafka.dlqTopic | quote }}
- name: FRAMEWATCH_KAFKA_AUTO_OFFSET_RESET
  value: {{ .Values.kafka.autoOffsetReset | quote }}
{{ include "framewatch.kafkaSecurityEnv" . }}
{{- if .Values.adminToken.existingSecret }}
- name: FRAMEWATCH_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.adminToken.existingSecret }}
      key: {{ .Values.adminToken.key }}
{{- end }}
{{- if include "framewatch.registryEnabled" . }}
- name: FRAMEWATCH_REGISTRY_PATH
  value: {{ printf "%s/%s" .Values.registry.mountPath .Values.registry.key | quote }}
{{- end }}
{{- with .Values.modelAllowlist }}
- name: FRAMEWATCH_MODEL_ALLOWLIST
  value: {{ join "," . | quote }}
{{- end }}
- name: FRAMEWATCH_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: FRAMEWATCH_ONNX_THREADS
  value: {{ .Values.onnxThreads | quote }}
{{- range $key, $value := .Values.settings }}
- name: {{ printf "FRAMEWATCH_%s" (upper $key) }}
  value: {{ if kindIs "slice" $value }}{{ join "," $value | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The Framewatch container, as one item of a `containers:` list. Volume names are prefixed with
"framewatch-" so that the container can live in someone else's pod.
*/}}
{{- define "framewatch.container" -}}
- name: framewatch
  image: {{ include "framewatch.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run"]
  ports:
    - name: fw-http
      containerPort: {{ .Values.containerPort }}
      protocol: TCP
  env:
    {{- include "framewatch.env" . | nindent 4 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- with .Values.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  livenessProbe:
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  volumeMounts:
    - name: framewatch-tmp
      mountPath: /tmp
    {{- if include "framewatch.registryEnabled" . }}
    - name: framewatch-registry
      mountPath: {{ .Values.registry.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.kafka.ssl.existingSecret }}
    - name: framewatch-kafka-tls
      mountPath: {{ .Values.kafka.ssl.mountPath }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The volumes the container needs, as items of a `volumes:` list.
*/}}
{{- define "framewatch.volumes" -}}
- name: framewatch-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "framewatch.registryEnabled" . }}
# Mounted as a directory (no subPath): kubelet swaps the ..data symlink on update, the watcher sees it.
- name: framewatch-registry
  configMap:
    name: {{ include "framewatch.registryConfigMapName" . }}
{{- end }}
{{- if .Values.kafka.ssl.existingSecret }}
- name: framewatch-kafka-tls
  secret:
    secretName: {{ .Values.kafka.ssl.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Public templates for injecting the sidecar into another chart's workload.

  containers:
    - name: vllm
      ...
    {{- include "framewatch.sidecar" . | nindent 4 }}
  volumes:
    {{- include "framewatch.sidecarVolumes" . | nindent 4 }}

Called from a chart that depends on framewatch (dependency name "framewatch"), they use the subchart's own
scope (.Subcharts.framewatch: its values, release and chart), so names match the ConfigMaps the subchart
renders. Called from this chart, or with an explicit scope (include "framewatch.sidecar" .Subcharts.myalias),
they use the scope given.
*/}}
{{- define "framewatch.sidecar" -}}
{{- $scope := . -}}
{{- if and .Subcharts (hasKey .Subcharts "framewatch") -}}
{{- $scope = index .Subcharts "framewatch" -}}
{{- end -}}
{{- include "framewatch.container" $scope -}}
{{- end -}}

{{- define "framewatch.sidecarVolumes" -}}
{{- $scope := . -}}
{{- if and .Subcharts (hasKey .Subcharts "framewatch") -}}
{{- $scope = index .Subcharts "framewatch" -}}
{{- end -}}
{{- include "framewatch.volumes" $scope -}}
{{- end -}}

{{/*
"true" when KEDA's Kafka scaler needs a TriggerAuthentication: SASL credentials or TLS files from Secrets.
*/}}
{{- define "framewatch.kedaAuthEnabled" -}}
{{- if or .Values.kafka.sasl.mechanism .Values.kafka.ssl.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
The tap (`framewatch tap`, docs/tap.md) as one item of the inference pod's `containers:` list, or nothing
while tap.enabled is false. It forwards every request on port "tap-http" to tap.upstream (the server on
localhost) and publishes events with the same Kafka settings as the sidecar. Needs the volumes of
"framewatch.sidecarVolumes" (/tmp, Kafka TLS). Like "framewatch.sidecar", it uses the subchart's scope.
*/}}
{{- define "framewatch.tapContainer" -}}
{{- if .Values.tap.enabled -}}
- name: framewatch-tap
  image: {{ include "framewatch.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["tap"]
  ports:
    - name: tap-http
      containerPort: {{ .Values.tap.port }}
      protocol: TCP
    - name: tap-metrics
      containerPort: {{ .Values.tap.metricsPort }}
      protocol: TCP
  env:
    - name: FRAMEWATCH_TAP_HOST
      value: "0.0.0.0"
    - name: FRAMEWATCH_TAP_PORT
      value: {{ .Values.tap.port | quote }}
    - name: FRAMEWATCH_TAP_METRICS_PORT
      value: {{ .Values.tap.metricsPort | quote }}
    - name: FRAMEWATCH_TAP_UPSTREAM
      value: {{ .Values.tap.upstream | quote }}
    - name: FRAMEWATCH_TAP_QUEUE_SIZE
      value: {{ .Values.tap.queueSize | quote }}
    - name: FRAMEWATCH_TAP_MAX_BODY_BYTES
      value: {{ .Values.tap.maxBodyBytes | int64 | quote }}
    - name: FRAMEWATCH_TAP_UPSTREAM_TIMEOUT_S
      value: {{ .Values.tap.upstreamTimeoutSeconds | quote }}
    - name: FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS
      value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
    - name: FRAMEWATCH_KAFKA_TOPIC
      value: {{ .Values.kafka.topic | quote }}
    {{- include "framewatch.kafkaSecurityEnv" . | nindent 4 }}
    - name: FRAMEWATCH_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
  {{- with .Values.tap.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  # Ready does not wait for Kafka: an absent broker must never take the inference server out of service.
  livenessProbe:
    httpGet:
      path: /healthz
      port: tap-metrics
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: tap-metrics
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
  volumeMounts:
    - name: framewatch-tmp
      mountPath: /tmp
    {{- if .Values.kafka.ssl.existingSecret }}
    - name: framewatch-kafka-tls
      mountPath: {{ .Values.kafka.ssl.mountPath }}
      readOnly: true
    {{- end }}
{{- end -}}
{{- end -}}

{{- define "framewatch.tap" -}}
{{- $scope := . -}}
{{- if and .Subcharts (hasKey .Subcharts "framewatch") -}}
{{- $scope = index .Subcharts "framewatch" -}}
{{- end -}}
{{- include "framewatch.tapContainer" $scope -}}
{{- end -}}

{{/*
The port name the inference pod's Service should target: "tap-http" while the tap is on, else "".
*/}}
{{- define "framewatch.tapTargetPort" -}}
{{- $scope := . -}}
{{- if and .Subcharts (hasKey .Subcharts "framewatch") -}}
{{- $scope = index .Subcharts "framewatch" -}}
{{- end -}}
{{- if $scope.Values.tap.enabled -}}tap-http{{- end -}}
{{- end -}}
