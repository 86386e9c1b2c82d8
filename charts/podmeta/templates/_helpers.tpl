{{/* Chart name, overridable. */}}
{{- define "podmeta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object. Release "podmeta" gives "podmeta", which is what
config/ installs; the names podmeta itself defaults to (--webhook-config-name podmeta,
--service-name podmeta-webhook, --cert-secret podmeta-webhook-tls) follow from it, and
the chart passes them explicitly for any other release name.
*/}}
{{- define "podmeta.fullname" -}}
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

{{- define "podmeta.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "podmeta.labels" -}}
helm.sh/chart: {{ include "podmeta.chart" . }}
{{ include "podmeta.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podmeta
{{- end }}

{{/* Labels that select the webhook pods. */}}
{{- define "podmeta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podmeta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "podmeta.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podmeta.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service the apiserver calls. */}}
{{- define "podmeta.webhookServiceName" -}}
{{- printf "%s-webhook" (include "podmeta.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The MutatingWebhookConfiguration's name. */}}
{{- define "podmeta.webhookConfigName" -}}
{{- include "podmeta.fullname" . }}
{{- end }}

{{/* The Secret holding the serving certificate, in every mode. */}}
{{- define "podmeta.certSecretName" -}}
{{- if eq .Values.certs.mode "external" }}
{{- required "certs.external.secretName is required with certs.mode=external" .Values.certs.external.secretName }}
{{- else }}
{{- printf "%s-webhook-tls" (include "podmeta.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* cert-manager's serving Certificate, referenced by the cainjector annotation. */}}
{{- define "podmeta.servingCertificateName" -}}
{{- printf "%s-webhook" (include "podmeta.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image reference: repository:tag or repository@digest. */}}
{{- define "podmeta.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
Namespaces podmeta never mutates: the system namespaces of config/webhook, the release
namespace (podmeta's own) and the user's extras, without duplicates.
*/}}
{{- define "podmeta.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace }}
{{- range .Values.webhook.excludedNamespaces }}{{ $ns = append $ns . }}{{ end }}
{{- $ns | uniq | toJson }}
{{- end }}

{{/* --ambassador-resources from the resources map: requests.cpu=5m,limits.memory=48Mi. */}}
{{- define "podmeta.ambassadorResources" -}}
{{- $items := list }}
{{- range $kind := list "requests" "limits" }}
{{- $list := index $.Values.ambassador.resources $kind | default dict }}
{{- range $res := list "cpu" "memory" "ephemeral-storage" }}
{{- if hasKey $list $res }}
{{- $items = append $items (printf "%s.%s=%v" $kind $res (index $list $res)) }}
{{- end }}
{{- end }}
{{- end }}
{{- join "," $items }}
{{- end }}

{{/*
"true" in mode webhook (the default), "false" in mode policy. Every object that exists
for the webhook server (its Deployment, Service, certificates, webhook configuration,
PodDisruptionBudget, NetworkPolicy, ServiceAccount and RBAC, metrics objects) is wrapped
in: {{- if eq (include "podmeta.webhookMode" .) "true" }}. Policy mode installs
templates/policy-mode.yaml instead (docs/policy.md).
*/}}
{{- define "podmeta.webhookMode" -}}
{{- ternary "true" "false" (ne .Values.mode "policy") }}
{{- end }}

{{/*
The ambassador's resources as the CEL literal policy mode's MutatingAdmissionPolicy
builds the sidecar with (policy.HelmTemplate: template.literal of the container's
resources, inside a JSON string): keys sorted, each value in dyn().
*/}}
{{- define "podmeta.policyResources" -}}
{{- $kinds := list }}
{{- range $kind := list "limits" "requests" }}
{{- $list := index $.Values.ambassador.resources $kind | default dict }}
{{- $items := list }}
{{- range $res := list "cpu" "ephemeral-storage" "memory" }}
{{- if hasKey $list $res }}
{{- $items = append $items (printf `\"%s\": dyn(\"%v\")` $res (index $list $res)) }}
{{- end }}
{{- end }}
{{- if $items }}
{{- $kinds = append $kinds (printf `\"%s\": dyn({%s})` $kind (join ", " $items)) }}
{{- end }}
{{- end }}
{{- printf "{%s}" (join ", " $kinds) }}
{{- end }}

{{/* The workload validation's ValidatingWebhookConfiguration: podmeta's default
--validating-webhook-config-name for --webhook-config-name. */}}
{{- define "podmeta.workloadsWebhookConfigName" -}}
{{- include "podmeta.webhookConfigName" . }}-workloads
{{- end }}

{{/* webhook.objectSelectorExpressions as a label selector (kubectl's -l syntax), for
--workload-pod-selector: workload validation checks only templates whose pods the
MutatingWebhookConfiguration's objectSelector would send to podmeta. */}}
{{- define "podmeta.workloadPodSelector" -}}
{{- $terms := list }}
{{- range .Values.webhook.objectSelectorExpressions }}
{{- if eq .operator "In" }}{{ $terms = append $terms (printf "%s in (%s)" .key (join "," .values)) }}
{{- else if eq .operator "NotIn" }}{{ $terms = append $terms (printf "%s notin (%s)" .key (join "," .values)) }}
{{- else if eq .operator "Exists" }}{{ $terms = append $terms .key }}
{{- else if eq .operator "DoesNotExist" }}{{ $terms = append $terms (printf "!%s" .key) }}
{{- end }}
{{- end }}
{{- join "," $terms }}
{{- end }}
