{{/*
The operator's name: the value of its pods' app.kubernetes.io/name label. Fixed, because the
NetworkPolicies the operator renders for runtime pods admit the operator by this label
(sas_operator.render.MANAGED_BY).
*/}}
{{- define "sas-operator.name" -}}
sas-operator
{{- end }}

{{/*
Full name of the release's resources, cut to 63 characters (the DNS label limit). A release
name that already contains the operator's name is used as it is.
*/}}
{{- define "sas-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "sas-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, as the helm.sh/chart label wants them.
*/}}
{{- define "sas-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator's pods; never change them after a release exists.
*/}}
{{- define "sas-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sas-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every resource of the release.
*/}}
{{- define "sas-operator.labels" -}}
helm.sh/chart: {{ include "sas-operator.chart" . }}
{{ include "sas-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sparse-attention-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "sas-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sas-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "sas-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Runtime image for services that name none.
*/}}
{{- define "sas-operator.defaultRuntimeImage" -}}
{{- default (printf "ghcr.io/sparse-attention-operator/runtime:%s" .Chart.AppVersion) .Values.operator.defaultRuntimeImage }}
{{- end }}

{{/*
Name of the kopf peering object.
*/}}
{{- define "sas-operator.peeringName" -}}
{{- default (include "sas-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
Name of the metrics Service: a Service name is a DNS label, so the suffix must fit in 63.
*/}}
{{- define "sas-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "sas-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
