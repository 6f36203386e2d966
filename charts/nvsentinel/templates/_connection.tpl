{{/*
Resolved datastore connection: values with their defaults applied. Every
template asks these helpers, so a default lives in one place.
*/}}

{{/* nvsentinel.datastore.provider: "postgresql" or "mongodb". */}}
{{- define "nvsentinel.datastore.provider" -}}
{{- .Values.global.datastore.provider -}}
{{- end -}}

{{/* nvsentinel.datastore.inCluster: "true" when the chosen provider's subchart runs in this release, else empty. */}}
{{- define "nvsentinel.datastore.inCluster" -}}
{{- $provider := include "nvsentinel.datastore.provider" . -}}
{{- if (index .Values $provider).enabled -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.host: the host the services dial; the in-cluster client Service when connection.host is empty. */}}
{{- define "nvsentinel.datastore.host" -}}
{{- .Values.global.datastore.connection.host | default (include "nvsentinel.storeName" (dict "root" . "provider" (include "nvsentinel.datastore.provider" .))) -}}
{{- end -}}

{{/* nvsentinel.datastore.port: the port the services dial; 5432 or 27017 when connection.port is empty. */}}
{{- define "nvsentinel.datastore.port" -}}
{{- $default := ternary 5432 27017 (eq (include "nvsentinel.datastore.provider" .) "postgresql") -}}
{{- .Values.global.datastore.connection.port | default $default | int -}}
{{- end -}}

{{/* nvsentinel.datastore.passwordAuth: "true" when services authenticate with a password from credentialsFromSecret, else empty (client certificates). */}}
{{- define "nvsentinel.datastore.passwordAuth" -}}
{{- if .Values.global.datastore.credentialsFromSecret.name -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.clientCertSecret: the application client certificate Secret, postgresql-client-cert or mongodb-client-cert. */}}
{{- define "nvsentinel.datastore.clientCertSecret" -}}
{{- printf "%s-client-cert" (include "nvsentinel.datastore.provider" .) -}}
{{- end -}}

{{/* nvsentinel.datastore.migrationCertSecret: the schema Job's client certificate Secret. */}}
{{- define "nvsentinel.datastore.migrationCertSecret" -}}
postgresql-migration-cert
{{- end -}}

{{/* nvsentinel.datastore.mountPathEnv: the environment variable naming the certificate directory, per provider. */}}
{{- define "nvsentinel.datastore.mountPathEnv" -}}
{{- if eq (include "nvsentinel.datastore.provider" .) "postgresql" -}}
POSTGRESQL_CLIENT_CERT_MOUNT_PATH
{{- else -}}
MONGODB_CLIENT_CERT_MOUNT_PATH
{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.mountsCertDir: "true" when datastore-client pods get a certificate directory (client certificate, or an external CA bundle), else empty. */}}
{{- define "nvsentinel.datastore.mountsCertDir" -}}
{{- if or (not (include "nvsentinel.datastore.passwordAuth" .)) .Values.global.datastore.caFromSecret.name -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.sslcert: client certificate path, empty with password auth. */}}
{{- define "nvsentinel.datastore.sslcert" -}}
{{- if not (include "nvsentinel.datastore.passwordAuth" .) -}}
{{- .Values.global.datastore.connection.sslcert | default (printf "%s/tls.crt" .Values.clientCertificate.mountPath) -}}
{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.sslkey: client key path, empty with password auth. */}}
{{- define "nvsentinel.datastore.sslkey" -}}
{{- if not (include "nvsentinel.datastore.passwordAuth" .) -}}
{{- .Values.global.datastore.connection.sslkey | default (printf "%s/tls.key" .Values.clientCertificate.mountPath) -}}
{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.sslrootcert: CA bundle path; empty when nothing provides one (password auth without caFromSecret). */}}
{{- define "nvsentinel.datastore.sslrootcert" -}}
{{- $default := "" -}}
{{- if include "nvsentinel.datastore.mountsCertDir" . -}}
{{- $default = printf "%s/ca.crt" .Values.clientCertificate.mountPath -}}
{{- end -}}
{{- .Values.global.datastore.connection.sslrootcert | default $default -}}
{{- end -}}

{{/* nvsentinel.datastore.serverDnsNames: JSON list of every name a client may dial on the in-cluster store: Services (short, namespaced, .svc, .svc.<clusterDomain>), headless pod names, localhost, and connection.host when set; call with (dict "root" $ "provider" "<provider>" "replicas" <int>). */}}
{{- define "nvsentinel.datastore.serverDnsNames" -}}
{{- $root := .root -}}
{{- $ns := $root.Release.Namespace -}}
{{- $domain := $root.Values.global.clusterDomain -}}
{{- $name := include "nvsentinel.storeName" (dict "root" $root "provider" .provider) -}}
{{- $headless := printf "%s-hl" $name -}}
{{- $bases := list $name $headless -}}
{{- range $i := until (int .replicas) -}}
{{- $bases = append $bases (printf "%s-%d.%s" $name $i $headless) -}}
{{- end -}}
{{- $names := list -}}
{{- range $bases -}}
{{- $names = concat $names (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.%s" . $ns $domain)) -}}
{{- end -}}
{{- $names = append $names "localhost" -}}
{{- with $root.Values.global.datastore.connection.host -}}
{{- if not (include "nvsentinel.datastore.isIP" .) -}}
{{- $names = append $names . -}}
{{- end -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* nvsentinel.datastore.isIP: "true" when the string is an IPv4 or IPv6 address (it belongs in ipAddresses, not dnsNames), else empty. */}}
{{- define "nvsentinel.datastore.isIP" -}}
{{- if or (regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}$" .) (contains ":" .) -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.perServiceIdentity: "true" when every service logs in as its own PostgreSQL role with its own client certificate (PostgreSQL, client-certificate auth), else empty (MongoDB, or password auth: the shared connection.username). */}}
{{- define "nvsentinel.datastore.perServiceIdentity" -}}
{{- if and (eq (include "nvsentinel.datastore.provider" .) "postgresql") (not (include "nvsentinel.datastore.passwordAuth" .)) -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.ownServiceIdentity: "true" when the service logs in as its own role: with client certificates (perServiceIdentity) always, with password auth when services.<name>.credentialsFromSecret.name holds that role's password; else empty (the shared connection.username); call with (dict "root" $ "name" "<service>"). */}}
{{- define "nvsentinel.datastore.ownServiceIdentity" -}}
{{- $svc := include "nvsentinel.service" . | fromYaml -}}
{{- if or (include "nvsentinel.datastore.perServiceIdentity" .root) (and (include "nvsentinel.datastore.passwordAuth" .root) $svc.credentialsFromSecret.name) -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.datastore.serviceUser: a service's own PostgreSQL login role, services.<name>.datastoreUser or nvsentinel_<name with - as _>; call with (dict "root" $ "name" "<service>"). */}}
{{- define "nvsentinel.datastore.serviceUser" -}}
{{- $svc := include "nvsentinel.service" . | fromYaml -}}
{{- $svc.datastoreUser | default (printf "nvsentinel_%s" (.name | replace "-" "_")) -}}
{{- end -}}

{{/* nvsentinel.datastore.serviceCertSecret: a service's own client certificate Secret, postgresql-client-cert-<service>; call with (dict "root" $ "name" "<service>"). */}}
{{- define "nvsentinel.datastore.serviceCertSecret" -}}
{{- printf "postgresql-client-cert-%s" .name -}}
{{- end -}}

{{/* nvsentinel.datastore.serviceUsers: space-separated login roles of every service (enabled or not, so enabling one later finds its role), for bootstrap.sql's service_users. */}}
{{- define "nvsentinel.datastore.serviceUsers" -}}
{{- $root := . -}}
{{- $users := list -}}
{{- range $name, $_ := .Values.services -}}
{{- $users = append $users (include "nvsentinel.datastore.serviceUser" (dict "root" $root "name" $name)) -}}
{{- end -}}
{{- join " " $users -}}
{{- end -}}

{{/* nvsentinel.datastore.enabledServiceUsers: space-separated login roles of the enabled services that log in as their own role (ownServiceIdentity). */}}
{{- define "nvsentinel.datastore.enabledServiceUsers" -}}
{{- $root := . -}}
{{- $users := list -}}
{{- range $name, $_ := .Values.services -}}
{{- $svc := include "nvsentinel.service" (dict "root" $root "name" $name) | fromYaml -}}
{{- if and $svc.enabled (include "nvsentinel.datastore.ownServiceIdentity" (dict "root" $root "name" $name)) -}}
{{- $users = append $users (include "nvsentinel.datastore.serviceUser" (dict "root" $root "name" $name)) -}}
{{- end -}}
{{- end -}}
{{- join " " $users -}}
{{- end -}}

{{/* nvsentinel.datastore.prunerUser: the PostgreSQL role the prune CronJob logs in as (fixed: the migrations grant it EXECUTE on datastore_changelog_prune). */}}
{{- define "nvsentinel.datastore.prunerUser" -}}
nvsentinel_pruner
{{- end -}}

{{/* nvsentinel.datastore.prunerCertSecret: the prune CronJob's client certificate Secret, <release>-postgresql-pruner-cert. */}}
{{- define "nvsentinel.datastore.prunerCertSecret" -}}
{{- printf "%s-postgresql-pruner-cert" .Release.Name -}}
{{- end -}}
