{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "podwire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "podwire.fullname" -}}
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

{{- define "podwire.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "podwire.labels" -}}
helm.sh/chart: {{ include "podwire.chart" . }}
{{ include "podwire.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "podwire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "podwire.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "podwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "podwire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podwire.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podwire.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The OTLP endpoint the agents export to: explicit, else the in-chart gateway, else none. */}}
{{- define "podwire.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.gateway.enabled }}
{{- printf "http://%s-gateway.%s.svc:4317" (include "podwire.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Render a setting as an env value string (numbers without exponent, booleans as true/false). */}}
{{- define "podwire.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . | toString | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}

{{/* agent.externalCidrs list -> "CIDR=NAME,CIDR=NAME" (PODWIRE_EXTERNAL_CIDRS). */}}
{{- define "podwire.externalCidrs" -}}
{{- $parts := list }}
{{- range . }}
{{- $parts = append $parts (printf "%s=%s" .cidr .name) }}
{{- end }}
{{- join "," $parts }}
{{- end }}
