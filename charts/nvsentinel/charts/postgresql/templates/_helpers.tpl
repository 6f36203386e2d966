{{/*
Naming and label helpers of the PostgreSQL subchart. Names are fixed by the
umbrella chart's contract: everything is `<release>-postgresql[-suffix]`.
*/}}

{{/* Resource base name: `<release>-postgresql`. */}}
{{- define "postgresql.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Headless Service name (the StatefulSet's serviceName). */}}
{{- define "postgresql.headlessName" -}}
{{- printf "%s-hl" (include "postgresql.fullname" .) -}}
{{- end -}}

{{/* Labels shared by every pod of this subchart (server and backup). */}}
{{- define "postgresql.instanceLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels selecting the PostgreSQL server pod; stable across upgrades. */}}
{{- define "postgresql.selectorLabels" -}}
{{ include "postgresql.instanceLabels" . }}
app.kubernetes.io/component: primary
{{- end -}}

{{/* Standard labels for every object of this subchart (add a component label where it applies). */}}
{{- define "postgresql.labels" -}}
{{ include "postgresql.instanceLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nvsentinel
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Name of the Secret with the passwords. */}}
{{- define "postgresql.secretName" -}}
{{- default (include "postgresql.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Name of the cert-manager server certificate Secret. */}}
{{- define "postgresql.serverSecretName" -}}
{{- default (printf "%s-server-tls" (include "postgresql.fullname" .)) .Values.tls.serverSecret -}}
{{- end -}}

{{/* Name of the ConfigMap holding bootstrap.sql. */}}
{{- define "postgresql.initdbConfigMapName" -}}
{{- default (printf "%s-initdb" (include "postgresql.fullname" .)) .Values.initdb.configMap -}}
{{- end -}}

{{/* Name of the ServiceAccount the pod runs as. */}}
{{- define "postgresql.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "postgresql.fullname" . -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Roles that log in with a password when password authentication is on. */}}
{{- define "postgresql.passwordUsers" -}}
{{- if .Values.auth.passwordAuthentication.users -}}
{{- join " " .Values.auth.passwordAuthentication.users -}}
{{- else -}}
{{- .Values.auth.appUser -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths inside the pod. */}}
{{- define "postgresql.paths.config" -}}/etc/nvsentinel/postgresql/config{{- end -}}
{{- define "postgresql.paths.tls" -}}/etc/nvsentinel/postgresql/tls{{- end -}}
{{- define "postgresql.paths.auth" -}}/etc/nvsentinel/postgresql/auth{{- end -}}
{{- define "postgresql.paths.scripts" -}}/opt/nvsentinel/scripts{{- end -}}
{{- define "postgresql.paths.bootstrap" -}}/opt/nvsentinel/initdb{{- end -}}
{{- define "postgresql.paths.socket" -}}/var/run/postgresql{{- end -}}

{{/* The server's port, in the pod and on both Services: fixed, since the
services' DATASTORE_PORT defaults to it (connection.port names another). */}}
{{- define "postgresql.port" -}}5432{{- end -}}

{{/* A postgresql.conf value: strings single-quoted (quotes doubled), numbers and booleans as they are. */}}
{{- define "postgresql.confValue" -}}
{{- if kindIs "string" . -}}
'{{ replace "'" "''" . }}'
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "bool" . -}}
{{- ternary "on" "off" . -}}
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}

{{/* "<registry>/<repository>:<tag>" of an image map; the registry is the umbrella's global.imageRegistry when set, else the image's own registry. Call with (list $ <image map>). */}}
{{- define "postgresql.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repo := $image.repository -}}
{{- with (($root.Values.global).imageRegistry) | default $image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (toString $image.tag) | quote -}}
{{- end -}}

{{/* imagePullSecrets of every pod: this chart's plus the umbrella's global.imagePullSecrets. */}}
{{- define "postgresql.imagePullSecrets" -}}
{{- $secrets := concat (.Values.imagePullSecrets | default list) ((.Values.global).imagePullSecrets | default list) | uniq -}}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment of the server container and of init-data-directory: the data
directory, the superuser, the database, initdb's arguments and the role
names initdb.sh bootstraps. The auth mount path is the same in both.
*/}}
{{- define "postgresql.serverEnv" -}}
{{- $auth := include "postgresql.paths.auth" . -}}
- name: PGDATA
  value: /var/lib/postgresql/data/pgdata
- name: POSTGRES_USER
  value: postgres
- name: POSTGRES_DB
  value: {{ .Values.auth.database | quote }}
- name: POSTGRES_PASSWORD_FILE
  value: {{ $auth }}/{{ .Values.auth.secretKeys.adminPasswordKey }}
- name: POSTGRES_INITDB_ARGS
  value: {{ .Values.initdb.args | quote }}
- name: NVS_BOOTSTRAP_SQL
  value: {{ ternary (printf "%s/bootstrap.sql" (include "postgresql.paths.bootstrap" .)) "" .Values.initdb.enabled | quote }}
- name: NVS_MIGRATION_USER
  value: {{ .Values.auth.migrationUser | quote }}
- name: NVS_APP_USER
  value: {{ .Values.auth.appUser | quote }}
- name: NVS_MONITOR_USER
  value: {{ .Values.auth.monitorUser | quote }}
- name: NVS_BACKUP_USER
  value: {{ .Values.auth.backupUser | quote }}
{{- end -}}

{{/*
Security context of the exporter: the pod's container context with the
exporter's own uid/gid (metrics.securityContext). Refuses the postgres uid or
OS user name, which would let peer authentication make it the superuser.
*/}}
{{- define "postgresql.metricsSecurityContext" -}}
{{- $ctx := mustMergeOverwrite (deepCopy .Values.containerSecurityContext) (deepCopy .Values.metrics.securityContext) -}}
{{- $serverUid := .Values.podSecurityContext.runAsUser | default 999 -}}
{{- if eq (int $ctx.runAsUser) (int $serverUid) -}}
{{- fail (printf "postgresql.metrics.securityContext.runAsUser must differ from the server's uid %v: peer authentication on the socket would let the exporter log in as postgres" $serverUid) -}}
{{- end -}}
{{- if eq .Values.metrics.osUser "postgres" -}}
{{- fail "postgresql.metrics.osUser must not be postgres: it names the exporter's own OS user, never the server's" -}}
{{- end -}}
{{- toYaml $ctx -}}
{{- end -}}
