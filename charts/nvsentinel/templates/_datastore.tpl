{{/*
Datastore wiring of a pod: the ONE place it comes from. Every datastore-client
pod (the services, the schema Job, the helm test pod) includes these five
helpers and the datastore-client label.

Call each with a dict:
  root            the top-level context ($), required
  certSecret      client certificate Secret; default: postgresql-client-cert / mongodb-client-cert
  username        overrides DATASTORE_USERNAME (the schema Job connects as the migration role)
  passwordSecret  {name, key} overriding global.datastore.credentialsFromSecret
  refresh         false: no client-cert-refresher sidecar (short-lived pods); default: clientCertificate.refresh.enabled

Client-certificate mode: the Secret is mounted read-only at a private path;
fix-cert-permissions copies it into an in-memory emptyDir at
clientCertificate.mountPath (tls.key and tls.pem 0600, tls.crt and ca.crt 0644,
owned by the pod's user, as libpq demands), and client-cert-refresher (a native
sidecar: an init container with restartPolicy Always) copies it again whenever
cert-manager renews the Secret. Password mode (credentialsFromSecret): no client
certificate; DATASTORE_PASSWORD comes from a secretKeyRef; an external CA
bundle (caFromSecret) is mounted directly at the mount path.
*/}}

{{/* nvsentinel.datastore.secretSourcePath: where the client certificate Secret itself is mounted (only the copy containers see it). */}}
{{- define "nvsentinel.datastore.secretSourcePath" -}}
/var/run/nvsentinel/datastore-client-cert-secret
{{- end -}}

{{/* nvsentinel.datastore.envFrom: the pod's envFrom entries (the DATASTORE_* ConfigMap). */}}
{{- define "nvsentinel.datastore.envFrom" -}}
- configMapRef:
    name: {{ include "nvsentinel.datastoreConfigName" .root }}
{{- end -}}

{{/* nvsentinel.datastore.env: the certificate directory variable, the username override and DATASTORE_PASSWORD from a Secret. */}}
{{- define "nvsentinel.datastore.env" -}}
{{- $root := .root -}}
{{- $password := .passwordSecret | default $root.Values.global.datastore.credentialsFromSecret -}}
{{- if include "nvsentinel.datastore.mountsCertDir" $root }}
- name: {{ include "nvsentinel.datastore.mountPathEnv" $root }}
  value: {{ $root.Values.clientCertificate.mountPath | quote }}
{{- end }}
{{- with .username }}
- name: DATASTORE_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if include "nvsentinel.datastore.passwordAuth" $root }}
- name: DATASTORE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $password.name | quote }}
      key: {{ $password.key | quote }}
{{- end }}
{{- end -}}

{{/* nvsentinel.datastore.volumes: the pod's datastore volumes (client certificate Secret and its in-memory copy, or the external CA bundle). */}}
{{- define "nvsentinel.datastore.volumes" -}}
{{- $root := .root -}}
{{- if not (include "nvsentinel.datastore.passwordAuth" $root) }}
- name: datastore-client-cert-secret
  secret:
    secretName: {{ .certSecret | default (include "nvsentinel.datastore.clientCertSecret" $root) }}
    defaultMode: 288 # 0440: readable by the pod's fsGroup, for the copy only
- name: datastore-client-cert
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- else if $root.Values.global.datastore.caFromSecret.name }}
- name: datastore-client-cert
  secret:
    secretName: {{ $root.Values.global.datastore.caFromSecret.name }}
    defaultMode: 292 # 0444: a CA bundle is public
    items:
      - key: {{ $root.Values.global.datastore.caFromSecret.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* nvsentinel.datastore.volumeMounts: the certificate directory, read-only, in an application container. */}}
{{- define "nvsentinel.datastore.volumeMounts" -}}
{{- if include "nvsentinel.datastore.mountsCertDir" .root }}
- name: datastore-client-cert
  mountPath: {{ .root.Values.clientCertificate.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* nvsentinel.datastore.copyScript: shell functions shared by fix-cert-permissions and client-cert-refresher. */}}
{{- define "nvsentinel.datastore.copyScript" -}}
set -eu
umask 077
src="$CERT_SOURCE_DIR"
dst="$CERT_TARGET_DIR"
# digest <dir>: one hash over the certificate, key and CA in <dir>.
digest() { cat "$1/tls.crt" "$1/tls.key" "$1/ca.crt" | sha256sum | cut -d' ' -f1; }
# place <name> <mode>: write $dst/<name> from $dst/.<name>.new with <mode>, replacing atomically.
place() { chmod "$2" "$dst/.$1.new" && mv -f "$dst/.$1.new" "$dst/$1"; }
# copy_all: copy the Secret's files into $dst with the modes libpq and mongod clients accept.
copy_all() {
  for f in tls.crt tls.key ca.crt; do
    if [ ! -s "$src/$f" ]; then
      echo "$CONTAINER_NAME: $src/$f is missing or empty; is the cert-manager Certificate for Secret $SECRET_NAME Ready?" >&2
      return 1
    fi
  done
  cp "$src/ca.crt" "$dst/.ca.crt.new" && place ca.crt 0644 || return 1
  cp "$src/tls.key" "$dst/.tls.key.new" && place tls.key 0600 || return 1
  cp "$src/tls.crt" "$dst/.tls.crt.new" && place tls.crt 0644 || return 1
  if [ "$WRITE_PEM" = true ]; then
    cat "$src/tls.crt" "$src/tls.key" > "$dst/.tls.pem.new" && place tls.pem 0600 || return 1
  fi
  echo "$CONTAINER_NAME: copied $SECRET_NAME into $dst (key 0600, cert and CA 0644), sha256 $(digest "$dst")"
}
{{- end -}}

{{/* nvsentinel.datastore.copyContainer: one copy container; call with the wiring dict plus "name" and "loop". */}}
{{- define "nvsentinel.datastore.copyContainer" -}}
{{- $root := .root -}}
{{- $secret := .certSecret | default (include "nvsentinel.datastore.clientCertSecret" $root) -}}
- name: {{ .name }}
  image: {{ include "nvsentinel.image" (dict "root" $root "image" $root.Values.images.shell) }}
  imagePullPolicy: {{ $root.Values.images.shell.pullPolicy }}
  {{- if .loop }}
  restartPolicy: Always
  {{- end }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      {{- include "nvsentinel.datastore.copyScript" $root | nindent 6 }}
      {{- if .loop }}
      trap 'exit 0' TERM INT
      while :; do
        sleep "$INTERVAL_SECONDS" & wait $!
        if [ "$(digest "$src" 2>/dev/null)" != "$(digest "$dst")" ]; then
          copy_all || echo "$CONTAINER_NAME: copy failed, retrying in ${INTERVAL_SECONDS}s" >&2
        fi
      done
      {{- else }}
      copy_all
      {{- end }}
  env:
    - name: CONTAINER_NAME
      value: {{ .name }}
    - name: SECRET_NAME
      value: {{ $secret }}
    - name: CERT_SOURCE_DIR
      value: {{ include "nvsentinel.datastore.secretSourcePath" $root }}
    - name: CERT_TARGET_DIR
      value: {{ $root.Values.clientCertificate.mountPath }}
    - name: WRITE_PEM
      value: {{ eq (include "nvsentinel.datastore.provider" $root) "mongodb" | quote }}
    {{- if .loop }}
    - name: INTERVAL_SECONDS
      value: {{ $root.Values.clientCertificate.refresh.intervalSeconds | quote }}
    {{- end }}
  volumeMounts:
    - name: datastore-client-cert-secret
      mountPath: {{ include "nvsentinel.datastore.secretSourcePath" $root }}
      readOnly: true
    - name: datastore-client-cert
      mountPath: {{ $root.Values.clientCertificate.mountPath }}
  resources:
    {{- toYaml $root.Values.clientCertificate.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
{{- end -}}

{{/* nvsentinel.datastore.initContainers: fix-cert-permissions (one copy before the app starts) and, unless refresh is off, the client-cert-refresher native sidecar; nothing with password auth. */}}
{{- define "nvsentinel.datastore.initContainers" -}}
{{- $root := .root -}}
{{- if not (include "nvsentinel.datastore.passwordAuth" $root) }}
{{ include "nvsentinel.datastore.copyContainer" (merge (dict "name" "fix-cert-permissions" "loop" false) .) }}
{{- $refresh := $root.Values.clientCertificate.refresh.enabled -}}
{{- if hasKey . "refresh" }}{{ $refresh = and $refresh .refresh }}{{ end }}
{{- if $refresh }}
{{ include "nvsentinel.datastore.copyContainer" (merge (dict "name" "client-cert-refresher" "loop" true) .) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* nvsentinel.datastore.libpqEnv: PG* variables derived from the DATASTORE_* ones (after the wiring's env), for psql and pg_isready. */}}
{{- define "nvsentinel.datastore.libpqEnv" -}}
{{- $root := .root }}
- name: PGHOST
  value: $(DATASTORE_HOST)
- name: PGPORT
  value: $(DATASTORE_PORT)
- name: PGDATABASE
  value: $(DATASTORE_DATABASE)
- name: PGUSER
  value: $(DATASTORE_USERNAME)
- name: PGSSLMODE
  value: $(DATASTORE_SSLMODE)
{{- if include "nvsentinel.datastore.sslcert" $root }}
- name: PGSSLCERT
  value: $(DATASTORE_SSLCERT)
- name: PGSSLKEY
  value: $(DATASTORE_SSLKEY)
{{- end }}
{{- if include "nvsentinel.datastore.sslrootcert" $root }}
- name: PGSSLROOTCERT
  value: $(DATASTORE_SSLROOTCERT)
{{- end }}
{{- if include "nvsentinel.datastore.passwordAuth" $root }}
- name: PGPASSWORD
  value: $(DATASTORE_PASSWORD)
{{- end }}
- name: PGCONNECT_TIMEOUT
  value: "10"
- name: HOME
  value: /tmp
{{- end -}}
