#!/usr/bin/env bash
# NVSentinel bootstrap for a freshly initialised data directory.
#
# init-data-directory.sh runs this once, on an empty data directory, against a
# temporary socket-only server. This script runs the umbrella chart's
# bootstrap.sql (roles, schema ownership) in the NVSentinel database and
# creates the two operational roles of this subchart.
set -euo pipefail

usage() {
	cat <<'USAGE'
Usage: initdb.sh [--help]

Runs once from init-data-directory.sh when PostgreSQL initialises an empty
data directory. Connects over the local socket as POSTGRES_USER to POSTGRES_DB.

Environment:
  POSTGRES_USER, POSTGRES_DB   set by init-data-directory.sh (and the pod)
  NVS_BOOTSTRAP_SQL            path of bootstrap.sql; skipped when empty
  NVS_MIGRATION_USER           psql variable migration_user for bootstrap.sql
  NVS_APP_USER                 psql variable app_user for bootstrap.sql
  NVS_MONITOR_USER             role for the metrics exporter (pg_monitor)
  NVS_BACKUP_USER              role for backups (pg_read_all_data)
USAGE
}

run_psql() {
	psql -X -v ON_ERROR_STOP=1 --no-password \
		--username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" "$@"
}

run_bootstrap() {
	if [[ -z "${NVS_BOOTSTRAP_SQL:-}" ]]; then
		echo "initdb.sh: no bootstrap.sql configured; skipping the NVSentinel roles"
		return
	fi
	echo "initdb.sh: running ${NVS_BOOTSTRAP_SQL} in ${POSTGRES_DB}"
	run_psql -v migration_user="${NVS_MIGRATION_USER}" -v app_user="${NVS_APP_USER}" \
		-f "${NVS_BOOTSTRAP_SQL}"
}

create_operational_roles() {
	echo "initdb.sh: creating roles ${NVS_MONITOR_USER} (pg_monitor) and ${NVS_BACKUP_USER} (pg_read_all_data)"
	run_psql -v monitor_user="${NVS_MONITOR_USER}" -v backup_user="${NVS_BACKUP_USER}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN IN ROLE pg_monitor', :'monitor_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'monitor_user')
\gexec
SELECT format('CREATE ROLE %I LOGIN IN ROLE pg_read_all_data', :'backup_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'backup_user')
\gexec
SQL
}

main() {
	if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
		usage
		return 0
	fi
	run_bootstrap
	create_operational_roles
}

main "$@"
