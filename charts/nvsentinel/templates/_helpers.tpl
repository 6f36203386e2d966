{{/*
Names and labels. Small helpers, each named by what it returns.
*/}}

{{/* nvsentinel.name: the chart name. */}}
{{- define "nvsentinel.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.chart: chart name and version, for the helm.sh/chart label. */}}
{{- define "nvsentinel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.selectorLabels: the stable labels a selector matches; call with (dict "root" $ "component" "<name>"). */}}
{{- define "nvsentinel.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* nvsentinel.labels: labels every object of this chart carries; call with (dict "root" $ "component" "<name>"). */}}
{{- define "nvsentinel.labels" -}}
{{ include "nvsentinel.selectorLabels" . }}
app.kubernetes.io/part-of: nvsentinel
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "nvsentinel.chart" .root }}
{{- with .root.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* nvsentinel.datastoreClientLabel: the label the stores' NetworkPolicies admit. */}}
{{- define "nvsentinel.datastoreClientLabel" -}}
nvsentinel.nvidia.com/datastore-client: "true"
{{- end -}}

{{/* nvsentinel.datastoreConfigName: the ConfigMap with the DATASTORE_* keys. */}}
{{- define "nvsentinel.datastoreConfigName" -}}
{{- printf "%s-datastore-config" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.storeName: the in-cluster store's name, <release>-postgresql or <release>-mongodb; call with (dict "root" $ "provider" "<provider>"). */}}
{{- define "nvsentinel.storeName" -}}
{{- printf "%s-%s" .root.Release.Name .provider | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.storeTools.name: the store tools Deployment, <release>-store-tools. */}}
{{- define "nvsentinel.storeTools.name" -}}
{{- printf "%s-store-tools" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.image: "<registry>/<repository>:<tag>" for an image values map; call with (dict "root" $ "image" <map>). */}}
{{- define "nvsentinel.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.global.imageRegistry | default .image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}

{{/* nvsentinel.imagePullSecrets: the pod's imagePullSecrets block, empty when none. */}}
{{- define "nvsentinel.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* nvsentinel.serviceAccountName: a pod's own ServiceAccount, <release>-<component>; call with (dict "root" $ "component" "<name>"). */}}
{{- define "nvsentinel.serviceAccountName" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* nvsentinel.service: one service's values as YAML (read it with fromYaml): serviceDefaults with services.<name> merged over it by mergeOverwrite, so a key the service sets wins, maps merge key by key and a list the service sets replaces the default list whole; call with (dict "root" $ "name" "<service>"). */}}
{{- define "nvsentinel.service" -}}
{{- mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy (index .root.Values.services .name)) | toYaml -}}
{{- end -}}
