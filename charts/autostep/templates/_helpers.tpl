{{/* Names and labels, as `helm create` makes them, plus the pod parts every component shares. */}}

{{- define "autostep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autostep.fullname" -}}
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

{{- define "autostep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "root" $ "component" "relay"). */}}
{{- define "autostep.labels" -}}
helm.sh/chart: {{ include "autostep.chart" .root }}
{{ include "autostep.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: autostep
{{- end }}

{{- define "autostep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autostep.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "autostep.image" -}}
{{- $image := .image | default dict -}}
{{- $repository := $image.repository | default .root.Values.image.repository -}}
{{- $tag := $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* The Secret holding DATABASE_URL and AMQP_URI. */}}
{{- define "autostep.secretName" -}}
{{- .Values.connections.existingSecret | default (printf "%s-connections" (include "autostep.fullname" .)) }}
{{- end }}

{{- define "autostep.schedulerServiceAccount" -}}
{{- if .Values.scheduler.serviceAccount.create }}
{{- .Values.scheduler.serviceAccount.name | default (printf "%s-scheduler" (include "autostep.fullname" .)) }}
{{- else }}
{{- .Values.scheduler.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "autostep.fireServiceAccount" -}}
{{- if .Values.scheduler.fireServiceAccount.create }}
{{- .Values.scheduler.fireServiceAccount.name | default (printf "%s-fire" (include "autostep.fullname" .)) }}
{{- else }}
{{- .Values.scheduler.fireServiceAccount.name }}
{{- end }}
{{- end }}

{{/* The environment of every long-running container: the two URLs from the Secret. */}}
{{- define "autostep.connectionEnv" -}}
- name: AUTOSTEP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "autostep.secretName" . }}
      key: {{ .Values.connections.keys.databaseUrl }}
- name: AUTOSTEP_AMQP_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "autostep.secretName" . }}
      key: {{ .Values.connections.keys.amqpUri }}
- name: AUTOSTEP_HEALTH_DIR
  value: /tmp/autostep-health
{{- end }}

{{/* Pod-level fields every component shares; call with the root context. */}}
{{- define "autostep.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* Pod metadata: labels, and a checksum of the settings so pods restart when they change. */}}
{{- define "autostep.podMetadata" -}}
labels:
  {{- include "autostep.labels" . | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* A worker container's probes: its heartbeat file (autostep health COMPONENT). */}}
{{- define "autostep.workerProbes" -}}
{{- $command := list "autostep" "health" .component "--max-age" (toString .root.Values.health.maxAgeSeconds) -}}
startupProbe:
  exec:
    command: {{ toJson $command }}
  periodSeconds: 5
  failureThreshold: 36
livenessProbe:
  exec:
    command: {{ toJson $command }}
  periodSeconds: 20
  timeoutSeconds: 10
  failureThreshold: 3
readinessProbe:
  exec:
    command: {{ toJson $command }}
  periodSeconds: 10
  timeoutSeconds: 10
  failureThreshold: 2
{{- end }}

{{/* A container's shared parts: env, config, security, /tmp; call with (dict "root" $). */}}
{{- define "autostep.containerCommon" -}}
envFrom:
  - configMapRef:
      name: {{ include "autostep.fullname" .root }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{- define "autostep.gatewayUrl" -}}
{{- if .Values.gateway.url }}
{{- .Values.gateway.url }}
{{- else if and .Values.gateway.ingress.enabled .Values.gateway.ingress.hosts }}
{{- $host := (first .Values.gateway.ingress.hosts).host }}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.gateway.ingress.tls) 0)) $host }}
{{- else }}
{{- printf "http://%s-gateway.%s.svc:%v" (include "autostep.fullname" .) .Release.Namespace .Values.gateway.service.port }}
{{- end }}
{{- end }}
