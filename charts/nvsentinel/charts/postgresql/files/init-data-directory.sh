#!/usr/bin/env bash
# Initialises an empty PostgreSQL data directory with explicit commands, so
# the StatefulSet depends on no image's entrypoint script: initdb, a
# temporary server on a private socket (no TCP listener), the database, then
# initdb.sh (the NVSentinel roles). Runs as the pod's init container.
set -euo pipefail

usage() {
	cat <<'USAGE'
Usage: init-data-directory.sh [--help]

Initialises PGDATA when it holds no cluster yet (no PG_VERSION); otherwise
does nothing. The cluster is made in PGDATA.initialising and moved to PGDATA
only once everything succeeded, so an interrupted run is started again from
scratch on the next pod start instead of leaving a half-bootstrapped server.

Needs initdb, pg_ctl and psql on PATH.

Environment:
  PGDATA                  data directory to initialise
  POSTGRES_USER           superuser initdb creates (default: postgres)
  POSTGRES_DB             database to create
  POSTGRES_PASSWORD_FILE  file holding the superuser's password
  POSTGRES_INITDB_ARGS    extra initdb arguments (e.g. --data-checksums)
  NVS_*                   passed on to initdb.sh (next to this script)
USAGE
}

log() {
	echo "init-data-directory: $*"
}

# stop_server DIR: stop the temporary server if it runs.
stop_server() {
	if pg_ctl -D "$1" status >/dev/null 2>&1; then
		pg_ctl -D "$1" -m fast -w stop >/dev/null
	fi
}

create_database() {
	psql -X -v ON_ERROR_STOP=1 --no-password --username "${POSTGRES_USER}" --dbname postgres \
		-v db="${POSTGRES_DB}" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
}

main() {
	if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
		usage
		return 0
	fi
	: "${PGDATA:?PGDATA is not set}" "${POSTGRES_DB:?POSTGRES_DB is not set}"
	: "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE is not set}"
	export POSTGRES_USER="${POSTGRES_USER:-postgres}"
	if [[ -s "${PGDATA}/PG_VERSION" ]]; then
		log "${PGDATA} holds a cluster already; nothing to do"
		return 0
	fi
	local work="${PGDATA%/}.initialising" socket status=0
	stop_server "${work}"
	rm -rf "${work}"
	log "initialising ${PGDATA}"
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments
	initdb --username="${POSTGRES_USER}" --pwfile="${POSTGRES_PASSWORD_FILE}" \
		${POSTGRES_INITDB_ARGS:-} --pgdata="${work}"
	socket="$(mktemp -d)"
	pg_ctl -D "${work}" -l "${work}/initialisation.log" -w \
		-o "-c listen_addresses='' -c unix_socket_directories='${socket}'" start >/dev/null
	# The temporary server is stopped whatever happens next.
	(
		export PGHOST="${socket}"
		create_database
		"$(dirname "${BASH_SOURCE[0]}")/initdb.sh"
	) || status=$?
	stop_server "${work}"
	rm -rf "${socket}"
	if ((status != 0)); then
		log "bootstrap failed (exit ${status}); server log:"
		cat "${work}/initialisation.log" || true
		return "${status}"
	fi
	rm -f "${work}/initialisation.log"
	# PGDATA may exist (an empty mount point or directory): move the contents,
	# PG_VERSION (what marks a cluster) last.
	mkdir -p "${PGDATA}"
	chmod 700 "${PGDATA}"
	find "${work}" -mindepth 1 -maxdepth 1 ! -name PG_VERSION -exec mv -t "${PGDATA}" {} +
	mv "${work}/PG_VERSION" "${PGDATA}/PG_VERSION"
	rmdir "${work}"
	log "${PGDATA} initialised"
}

main "$@"
