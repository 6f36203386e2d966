{{/*
Naming and label helpers of the MongoDB subchart. Names are fixed by the
umbrella chart's contract: everything is `<release>-mongodb[-suffix]`.
*/}}

{{/* Resource base name: `<release>-mongodb`. */}}
{{- define "mongodb.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Headless Service name (the StatefulSet's serviceName). */}}
{{- define "mongodb.headlessName" -}}
{{- printf "%s-hl" (include "mongodb.fullname" .) -}}
{{- end -}}

{{/* Labels shared by every pod of this subchart (server and init Job). */}}
{{- define "mongodb.instanceLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels selecting the mongod pod; stable across upgrades. */}}
{{- define "mongodb.selectorLabels" -}}
{{ include "mongodb.instanceLabels" . }}
app.kubernetes.io/component: mongod
{{- end -}}

{{/* Standard labels for every object of this subchart (add a component label where it applies). */}}
{{- define "mongodb.labels" -}}
{{ include "mongodb.instanceLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nvsentinel
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Name of the Secret with the root password. */}}
{{- define "mongodb.secretName" -}}
{{- default (include "mongodb.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Name of the cert-manager server certificate Secret. */}}
{{- define "mongodb.serverSecretName" -}}
{{- default (printf "%s-server-tls" (include "mongodb.fullname" .)) .Values.tls.serverSecret -}}
{{- end -}}

{{/* Name of the ServiceAccount the pods run as. */}}
{{- define "mongodb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "mongodb.fullname" . -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Cluster DNS domain: the umbrella's global.clusterDomain, else cluster.local. */}}
{{- define "mongodb.clusterDomain" -}}
{{- (.Values.global).clusterDomain | default "cluster.local" -}}
{{- end -}}

{{/* host:port of the replica set member, as clients discover it (covered by the server certificate). */}}
{{- define "mongodb.memberHost" -}}
{{- printf "%s-0.%s.%s.svc.%s:27017" (include "mongodb.fullname" .) (include "mongodb.headlessName" .) .Release.Namespace (include "mongodb.clusterDomain" .) -}}
{{- end -}}

{{/* Fixed paths inside the pods. */}}
{{- define "mongodb.paths.config" -}}/etc/nvsentinel/mongodb/config{{- end -}}
{{- define "mongodb.paths.tls" -}}/etc/nvsentinel/mongodb/tls{{- end -}}
{{- define "mongodb.paths.pem" -}}/var/run/nvsentinel/mongodb-tls{{- end -}}
{{- define "mongodb.paths.auth" -}}/etc/nvsentinel/mongodb/auth{{- end -}}
{{- define "mongodb.paths.scripts" -}}/opt/nvsentinel/scripts{{- end -}}

{{/* Environment for connect.js inside the mongod pod (127.0.0.1, server PEM as client certificate). */}}
{{- define "mongodb.localAdminEnv" -}}
- name: HOME
  value: /tmp
- name: NVS_SCRIPTS_DIR
  value: {{ include "mongodb.paths.scripts" . }}
- name: NVS_HOST
  value: 127.0.0.1:27017
- name: NVS_TLS_CA
  value: {{ include "mongodb.paths.tls" . }}/ca.crt
- name: NVS_TLS_PEM
  value: {{ include "mongodb.paths.pem" . }}/server.pem
- name: NVS_TLS_ALLOW_INVALID_HOSTNAMES
  value: "true"
- name: NVS_ROOT_USER
  value: {{ .Values.auth.rootUser | quote }}
- name: NVS_ROOT_PASSWORD_FILE
  value: {{ include "mongodb.paths.auth" . }}/{{ .Values.auth.rootPasswordKey }}
{{- end -}}

{{/* "<registry>/<repository>:<tag>" of an image map; the registry is the umbrella's global.imageRegistry when set, else the image's own registry. Call with (list $ <image map>). */}}
{{- define "mongodb.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repo := $image.repository -}}
{{- with (($root.Values.global).imageRegistry) | default $image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (toString $image.tag) | quote -}}
{{- end -}}

{{/* imagePullSecrets of every pod: this chart's plus the umbrella's global.imagePullSecrets. */}}
{{- define "mongodb.imagePullSecrets" -}}
{{- $secrets := concat (.Values.imagePullSecrets | default list) ((.Values.global).imagePullSecrets | default list) | uniq -}}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
