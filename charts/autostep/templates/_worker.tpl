{{/*
A worker Deployment: a long-running process without HTTP, probed by `autostep health`.
Call with (dict "root" $ "component" "relay" "name" "relay" "health" "relay"
  "command" (list ...) "replicas" 2 "resources" (dict) "env" (list) "image" (dict)
  "serviceAccount" "" "scaled" false).
*/}}
{{- define "autostep.worker" -}}
{{- $root := .root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "autostep.fullname" $root }}-{{ .name }}
  labels:
    {{- include "autostep.labels" . | nindent 4 }}
spec:
  {{- if not .scaled }}
  replicas: {{ .replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "autostep.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      {{- include "autostep.podMetadata" . | nindent 6 }}
    spec:
      {{- if .serviceAccount }}
      serviceAccountName: {{ .serviceAccount }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- include "autostep.podCommon" $root | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "autostep.image" (dict "root" $root "image" .image) }}
          imagePullPolicy: {{ (.image | default dict).pullPolicy | default $root.Values.image.pullPolicy }}
          command: {{ toJson .command }}
          env:
            {{- include "autostep.connectionEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "autostep.containerCommon" . | nindent 10 }}
          {{- include "autostep.workerProbes" (dict "root" $root "component" .health) | nindent 10 }}
          resources:
            {{- toYaml .resources | nindent 12 }}
{{- end }}
