{{/* The chart's name: app.kubernetes.io/name, and so the Prometheus job the rules expect. */}}
{{- define "detrigger-guard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release name when it holds the chart's name, else both. */}}
{{- define "detrigger-guard.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "detrigger-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "detrigger-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "detrigger-guard.labels" -}}
{{ include "detrigger-guard.selectorLabels" . }}
app.kubernetes.io/component: guard
app.kubernetes.io/part-of: detrigger-guard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "detrigger-guard.monitoringLabels" -}}
{{ include "detrigger-guard.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "detrigger-guard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "detrigger-guard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}
