{{/*
The chart name, or nameOverride.
*/}}
{{- define "modeldeploy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, or "<release>-<name>", or just the release
name when it already contains the chart name (so `helm install modeldeploy` gives "modeldeploy").
*/}}
{{- define "modeldeploy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "modeldeploy.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "modeldeploy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object the chart renders; the operator's Deployment, pods and budget add
app.kubernetes.io/component: operator.
*/}}
{{- define "modeldeploy.labels" -}}
helm.sh/chart: {{ include "modeldeploy.chart" . }}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modeldeploy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels that select the operator's pods; never change them, a Deployment's selector is immutable.
*/}}
{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "modeldeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modeldeploy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
Call with (list IMAGE-VALUES ROOT-CONTEXT).
*/}}
{{- define "modeldeploy.imageReference" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The leader-election Lease's name.
*/}}
{{- define "modeldeploy.leaseName" -}}
{{- default (include "modeldeploy.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The job of the operator's series: "<release namespace>/<operator PodMonitor name>", unique in a
cluster; the operator's alerts select on it.
*/}}
{{- define "modeldeploy.operatorJob" -}}
{{- printf "%s/%s-operator" .Release.Namespace (include "modeldeploy.fullname" .) }}
{{- end }}

{{/*
Whether the operator watches some namespaces only ("true") or every namespace ("").
*/}}
{{- define "modeldeploy.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
A YAML list of the rules in the chart's files/ rule files, concatenated: the single source that
the project's integration tests also run the operator with. Call with (list ROOT FILE...).
*/}}
{{- define "modeldeploy.rules" -}}
{{- $root := first . }}
{{- $rules := list }}
{{- range rest . }}
{{- $rules = concat $rules (fromYamlArray ($root.Files.Get (printf "files/%s" .))) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
Refuses value combinations the schema cannot express.
*/}}
{{- define "modeldeploy.validate" -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "leaderElection.enabled=false needs replicaCount 1: several operators without a Lease would reconcile at once" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.livenessProbe.port)) }}
{{- fail "metrics.port and livenessProbe.port must differ: the operator serves metrics and /healthz on separate listeners" }}
{{- end }}
{{- if and .Values.monitoring.operatorPodMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "monitoring.operatorPodMonitor.enabled needs metrics.enabled: with metrics off the operator serves nothing to scrape" }}
{{- end }}
{{- end }}
