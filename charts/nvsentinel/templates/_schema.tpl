{{/*
Schema delivery: the migrations in files/postgresql/migrations/ and the applier
files/postgresql/apply-migrations.sh, shipped in a ConfigMap and run by a Job,
both named with a hash so a change runs again.
*/}}

{{/* nvsentinel.schema.migrationGlob: the migration files, in version order. */}}
{{- define "nvsentinel.schema.migrationGlob" -}}
files/postgresql/migrations/*.sql
{{- end -}}

{{/* nvsentinel.schema.sqlHash: sha256 over every migration (name and bytes) and the applier script. */}}
{{- define "nvsentinel.schema.sqlHash" -}}
{{- $parts := list -}}
{{- range $path, $bytes := .Files.Glob (include "nvsentinel.schema.migrationGlob" .) -}}
{{- $parts = append $parts (printf "%s\n%s" (base $path) (toString $bytes)) -}}
{{- end -}}
{{- $parts = append $parts (.Files.Get "files/postgresql/apply-migrations.sh") -}}
{{- join "\n--\n" $parts | sha256sum -}}
{{- end -}}

{{/* nvsentinel.schema.latestVersion: the highest migration number shipped (0001_x.sql -> 1). */}}
{{- define "nvsentinel.schema.latestVersion" -}}
{{- $latest := 0 -}}
{{- range $path, $_ := .Files.Glob (include "nvsentinel.schema.migrationGlob" .) -}}
{{- $v := regexFind "^[0-9]+" (base $path) | default "0" | atoi -}}
{{- if gt $v $latest }}{{ $latest = $v }}{{ end -}}
{{- end -}}
{{- $latest -}}
{{- end -}}

{{/* nvsentinel.schema.configMapName: <release>-schema-<sql hash>. */}}
{{- define "nvsentinel.schema.configMapName" -}}
{{- printf "%s-schema" .Release.Name | trunc 52 | trimSuffix "-" -}}-{{ include "nvsentinel.schema.sqlHash" . | trunc 10 }}
{{- end -}}

{{/* nvsentinel.schema.enabled: "true" when this release applies the schema (PostgreSQL provider and schema.job.enabled). */}}
{{- define "nvsentinel.schema.enabled" -}}
{{- if and (eq (include "nvsentinel.datastore.provider" .) "postgresql") .Values.schema.job.enabled -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.changelogRetention.enabled: "true" when this release prunes datastore_changelog on a schedule (PostgreSQL provider and changelogRetention.enabled). */}}
{{- define "nvsentinel.changelogRetention.enabled" -}}
{{- if and (eq (include "nvsentinel.datastore.provider" .) "postgresql") .Values.changelogRetention.enabled -}}true{{- end -}}
{{- end -}}

{{/* nvsentinel.changelogRetention.name: the pruning CronJob, <release>-changelog-prune (52 characters at most, the CronJob limit). */}}
{{- define "nvsentinel.changelogRetention.name" -}}
{{- printf "%s-changelog-prune" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
