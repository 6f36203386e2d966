#!/usr/bin/env bash
# A real PostgreSQL on 127.0.0.1 configured as the chart configures it: TLS only,
# client-certificate authentication, bootstrap.sql run, the schema applied.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${NVSENTINEL_LOCAL_DATASTORE_DIR:-${ROOT_DIR}/.state/local-datastore}"
VENV="${NVSENTINEL_VENV:-${ROOT_DIR}/.venv}"
SERVER_USER="${NVSENTINEL_LOCAL_DATASTORE_USER:-nvsentinel-test}"
DATABASE="nvsentinel"
APP_USER="nvsentinel"
MIGRATION_USER="nvsentinel_migrator"
SUPERUSER="postgres"
BOOTSTRAP_SQL="${ROOT_DIR}/charts/nvsentinel/files/postgresql/bootstrap.sql"
MARKER=".nvsentinel-local-datastore"

usage() {
	cat <<EOF
Usage: hack/local-datastore.sh up|down|env [--user USER]|status|--help

A PostgreSQL server on 127.0.0.1 for developing against the datastore,
configured as the chart configures its server:
  - ssl = on, TLS 1.2 at least, certificates laid out as cert-manager's Secrets
    (a CA, a server certificate for localhost and 127.0.0.1, client certificate
    directories for ${APP_USER} and ${MIGRATION_USER} with tls.crt, tls.key
    (0600) and ca.crt), made by 'python -m devsupport.ca';
  - pg_hba: 'hostssl all all 127.0.0.1/32 cert' (the certificate's CN is the
    user); no non-TLS rule. The script itself works through the Unix socket in
    the private state directory;
  - database ${DATABASE}, bootstrap.sql run (roles ${MIGRATION_USER},
    nvsentinel_app, ${APP_USER}), then the migrations applied with
    '.venv/bin/nvsentinel-store schema apply' as ${MIGRATION_USER}.

Commands:
  up      create (first time) and start the server, bootstrap and migrate;
          safe to run again (a running server is kept, the schema re-applied,
          which applies only what is new)
  down    stop the server and remove the state directory
  env     print the 'export DATASTORE_...' lines a client needs
          (--user ${MIGRATION_USER} for the migration role), e.g.
            eval "\$(hack/local-datastore.sh env)"
  status  say whether the server runs, and where

Environment:
  NVSENTINEL_LOCAL_DATASTORE_DIR   state directory (default: .state/local-datastore)
  NVSENTINEL_LOCAL_DATASTORE_PORT  port for a new server (default: a free port,
                                   remembered in the state directory)
  NVSENTINEL_LOCAL_DATASTORE_USER  system user the server runs as when this
                                   script runs as root (default: nvsentinel-test,
                                   created if missing; initdb refuses root)
  PG_BINDIR                        PostgreSQL binaries (default: the highest
                                   /usr/lib/postgresql/<major>/bin)

Needs: Debian's postgresql package and the venv (make setup).
EOF
}

log() {
	printf 'local-datastore: %s\n' "$*" >&2
}

die() {
	log "$*"
	exit 1
}

find_bindir() {
	if [[ -n "${PG_BINDIR:-}" ]]; then
		printf '%s\n' "${PG_BINDIR}"
		return
	fi
	local best="" major dir
	for dir in /usr/lib/postgresql/*/bin; do
		[[ -x "${dir}/postgres" ]] || continue
		major="$(basename "$(dirname "${dir}")")"
		[[ "${major}" =~ ^[0-9]+$ ]] || continue
		if [[ -z "${best}" ]] || ((major > $(basename "$(dirname "${best}")"))); then
			best="${dir}"
		fi
	done
	[[ -n "${best}" ]] || die "no PostgreSQL under /usr/lib/postgresql/<major>/bin; install Debian's postgresql package (make setup)"
	printf '%s\n' "${best}"
}

data_dir() { printf '%s/data\n' "${STATE_DIR}"; }
socket_dir() { printf '%s/sock\n' "${STATE_DIR}"; }
pki_dir() { printf '%s/pki\n' "${STATE_DIR}"; }
log_file() { printf '%s/server.log\n' "${STATE_DIR}"; }

port() {
	[[ -f "${STATE_DIR}/port" ]] || die "no server state in ${STATE_DIR}; run 'hack/local-datastore.sh up' first"
	cat "${STATE_DIR}/port"
}

free_port() {
	"${VENV}/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Runs a command as the server's account (root cannot run initdb or postgres).
as_server() {
	if [[ "$(id -u)" -eq 0 ]]; then
		runuser -u "${SERVER_USER}" -- "$@"
	else
		"$@"
	fi
}

ensure_server_account() {
	[[ "$(id -u)" -eq 0 ]] || return 0
	id -u "${SERVER_USER}" >/dev/null 2>&1 && return 0
	log "creating system user ${SERVER_USER} to run the server"
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin "${SERVER_USER}"
}

server_owns() {
	[[ "$(id -u)" -eq 0 ]] || return 0
	chown -R "${SERVER_USER}:" "$@"
}

is_running() {
	[[ -d "$(data_dir)" ]] || return 1
	as_server "${BINDIR}/pg_ctl" -D "$(data_dir)" status >/dev/null 2>&1
}

superuser_psql() {
	local dbname="$1"
	shift
	env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGSSLMODE \
		"${BINDIR}/psql" -X -q -v ON_ERROR_STOP=1 \
		-h "$(socket_dir)" -p "$(port)" -U "${SUPERUSER}" -d "${dbname}" "$@"
}

make_certificates() {
	(cd "${ROOT_DIR}" && "${VENV}/bin/python" -m devsupport.ca "$(pki_dir)" \
		--client "${APP_USER}" --client "${MIGRATION_USER}" >/dev/null)
}

init_cluster() {
	[[ -f "$(data_dir)/PG_VERSION" ]] && return 0
	local port_value="${NVSENTINEL_LOCAL_DATASTORE_PORT:-$(free_port)}"
	printf '%s\n' "${port_value}" >"${STATE_DIR}/port"
	mkdir -p "$(socket_dir)" "${STATE_DIR}/server-tls"
	install -m 0644 "$(pki_dir)/server/tls.crt" "${STATE_DIR}/server-tls/tls.crt"
	install -m 0644 "$(pki_dir)/server/ca.crt" "${STATE_DIR}/server-tls/ca.crt"
	install -m 0600 "$(pki_dir)/server/tls.key" "${STATE_DIR}/server-tls/tls.key"
	chmod 0700 "$(socket_dir)"
	server_owns "$(socket_dir)" "${STATE_DIR}/server-tls"
	install -d -m 0700 "$(data_dir)"
	server_owns "$(data_dir)"
	touch "$(log_file)"
	server_owns "$(log_file)"
	log "initdb in $(data_dir)"
	as_server "${BINDIR}/initdb" -D "$(data_dir)" -U "${SUPERUSER}" --auth=trust \
		--encoding=UTF8 --locale=C.UTF-8 >/dev/null
	write_server_config "${port_value}"
}

write_server_config() {
	local port_value="$1" tls="${STATE_DIR}/server-tls"
	as_server tee -a "$(data_dir)/postgresql.conf" >/dev/null <<EOF

# hack/local-datastore.sh: as the chart configures its server
listen_addresses = '127.0.0.1'
port = ${port_value}
unix_socket_directories = '$(socket_dir)'
ssl = on
ssl_cert_file = '${tls}/tls.crt'
ssl_key_file = '${tls}/tls.key'
ssl_ca_file = '${tls}/ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
log_connections = on
EOF
	# The Unix socket sits in a directory only the server's account (and root)
	# can enter; remote clients get TLS and a client certificate, nothing else.
	as_server tee "$(data_dir)/pg_hba.conf" >/dev/null <<'EOF'
# TYPE   DATABASE  USER  ADDRESS       METHOD
local    all       all                 trust
hostssl  all       all   127.0.0.1/32  cert
EOF
}

start_server() {
	if is_running; then
		log "server already running on 127.0.0.1:$(port)"
		return 0
	fi
	log "starting on 127.0.0.1:$(port)"
	if ! as_server "${BINDIR}/pg_ctl" -D "$(data_dir)" -l "$(log_file)" -w -t 60 start >/dev/null; then
		tail -n 40 "$(log_file)" >&2 || true
		die "the server did not start; its log is $(log_file)"
	fi
}

bootstrap() {
	local exists
	exists="$(superuser_psql postgres -A -t -c "SELECT 1 FROM pg_database WHERE datname = '${DATABASE}'")"
	if [[ "${exists}" != "1" ]]; then
		superuser_psql postgres -c "CREATE DATABASE ${DATABASE}"
	fi
	superuser_psql "${DATABASE}" -v migration_user="${MIGRATION_USER}" -v app_user="${APP_USER}" \
		-f "${BOOTSTRAP_SQL}" >/dev/null
}

apply_schema() {
	log "applying the schema as ${MIGRATION_USER}"
	if ! (
		eval "$(print_env "${MIGRATION_USER}")" &&
			cd "${ROOT_DIR}" &&
			"${VENV}/bin/nvsentinel-store" schema apply
	); then
		# A state directory from an older checkout (a pre-release layout, a
		# migration edited since) is refused; local data is throwaway.
		die "the schema could not be applied (see above). To start this local datastore afresh, deleting its data: hack/local-datastore.sh down && hack/local-datastore.sh up"
	fi
}

print_env() {
	local user="$1"
	cat <<EOF
export DATASTORE_PROVIDER=postgresql
export DATASTORE_HOST=localhost
export DATASTORE_PORT=$(port)
export DATASTORE_DATABASE=${DATABASE}
export DATASTORE_USERNAME=${user}
export DATASTORE_SSLMODE=verify-full
export POSTGRESQL_CLIENT_CERT_MOUNT_PATH=$(pki_dir)/clients/${user}
EOF
}

cmd_up() {
	[[ -x "${VENV}/bin/python" ]] || die "no venv at ${VENV}; run make setup"
	ensure_server_account
	mkdir -p "${STATE_DIR}"
	touch "${STATE_DIR}/${MARKER}"
	chmod 0755 "${STATE_DIR}"
	make_certificates
	init_cluster
	start_server
	bootstrap
	apply_schema
	log "ready: eval \"\$(hack/local-datastore.sh env)\""
}

cmd_down() {
	if [[ ! -e "${STATE_DIR}" ]]; then
		log "nothing to do: ${STATE_DIR} does not exist"
		return 0
	fi
	[[ -f "${STATE_DIR}/${MARKER}" ]] || die "${STATE_DIR} was not made by this script; not removing it"
	if is_running; then
		log "stopping the server"
		as_server "${BINDIR}/pg_ctl" -D "$(data_dir)" -m fast -w stop >/dev/null ||
			as_server "${BINDIR}/pg_ctl" -D "$(data_dir)" -m immediate -w stop >/dev/null
	fi
	rm -rf "${STATE_DIR}"
	log "removed ${STATE_DIR}"
}

cmd_status() {
	if is_running; then
		printf 'running on 127.0.0.1:%s, state in %s\n' "$(port)" "${STATE_DIR}"
	else
		printf 'not running (state dir %s)\n' "${STATE_DIR}"
		return 1
	fi
}

main() {
	local command="${1:-}"
	shift || true
	case "${command}" in
		-h | --help | help)
			usage
			return 0
			;;
		"")
			usage >&2
			return 2
			;;
	esac
	BINDIR="$(find_bindir)"
	case "${command}" in
		up) cmd_up ;;
		down) cmd_down ;;
		status) cmd_status ;;
		env)
			local user="${APP_USER}"
			if [[ "${1:-}" == "--user" ]]; then
				[[ -n "${2:-}" ]] || die "--user needs a user name"
				user="$2"
			fi
			[[ -d "$(pki_dir)/clients/${user}" ]] || die "no client certificate for ${user} in $(pki_dir)/clients"
			print_env "${user}"
			;;
		*)
			usage >&2
			die "unknown command: ${command}"
			;;
	esac
}

main "$@"
