#!/usr/bin/env bash
# Keeps a running PostgreSQL in step with its mounted Secrets, without restarts.
#
# The server certificate Secret is mounted as a volume, so the kubelet swaps in
# a renewed tls.crt/tls.key/ca.crt together (one atomic symlink switch).
# PostgreSQL re-reads its SSL files on a configuration reload, so this loop
# fingerprints the files and runs SELECT pg_reload_conf() when they change.
# New connections then get the new certificate; open sessions keep theirs.
# When a password file is given it also applies that password to a role.
set -euo pipefail

TLS_DIR="${TLS_DIR:-/etc/nvsentinel/postgresql/tls}"
INTERVAL="${INTERVAL:-30}"
PASSWORD_FILE="${PASSWORD_FILE:-}"
PASSWORD_ROLES="${PASSWORD_ROLES:-}"

usage() {
	cat <<'USAGE'
Usage: reloader.sh [--once] [--tls-dir DIR] [--interval SECONDS] [--help]

Watches the TLS files PostgreSQL serves (tls.crt, tls.key, ca.crt in DIR) and
runs `SELECT pg_reload_conf()` when they change, so a renewed certificate is
served to new connections without a restart. Connects with psql using the
usual PG* environment (in the chart: the pod-local socket, role postgres).

  --once              reload now and exit (what the loop does on a change)
  --tls-dir DIR       directory of the certificate files (env TLS_DIR)
  --interval SECONDS  seconds between checks (env INTERVAL, default 30)

Environment:
  PASSWORD_FILE   optional file with a password to keep applied to ...
  PASSWORD_ROLES  ... these space-separated roles (ALTER ROLE ... PASSWORD)
USAGE
}

log() {
	printf '%s reloader: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

fingerprint() {
	cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1
}

tls_fingerprint() {
	fingerprint "${TLS_DIR}/tls.crt" "${TLS_DIR}/tls.key" "${TLS_DIR}/ca.crt"
}

reload_server() {
	psql -X -q -At -v ON_ERROR_STOP=1 -c 'SELECT pg_reload_conf()' >/dev/null
}

apply_password() {
	local role
	for role in ${PASSWORD_ROLES}; do
		# The password is read by psql itself (backtick), so it never appears in argv.
		psql -X -q -v ON_ERROR_STOP=1 -v role="${role}" -v file="${PASSWORD_FILE}" <<'SQL' >/dev/null
\set password `cat :file`
ALTER ROLE :"role" PASSWORD :'password';
SQL
	done
}

watch() {
	local loaded_tls="" applied_password="" current
	# As a container's PID 1 the shell ignores SIGTERM unless it traps it: without
	# this, every pod stop would wait out its whole grace period. The sleep runs in
	# the background so that the trap fires at once.
	trap 'exit 0' TERM INT
	while true; do
		current="$(tls_fingerprint)"
		if [[ "${current}" != "${loaded_tls}" ]]; then
			if reload_server; then
				log "configuration reloaded; TLS files ${current:0:12}"
				loaded_tls="${current}"
			else
				log "server not reachable yet; will retry"
			fi
		fi
		if [[ -n "${PASSWORD_FILE}" && -n "${PASSWORD_ROLES}" ]]; then
			current="$(fingerprint "${PASSWORD_FILE}")"
			if [[ "${current}" != "${applied_password}" ]]; then
				if apply_password 2>/dev/null; then
					log "password applied to: ${PASSWORD_ROLES}"
					applied_password="${current}"
				else
					log "password not applied yet (server starting or role missing); will retry"
				fi
			fi
		fi
		sleep "${INTERVAL}" &
		wait $!
	done
}

main() {
	local once=false
	while [[ $# -gt 0 ]]; do
		case "$1" in
			--help | -h)
				usage
				return 0
				;;
			--once) once=true ;;
			--tls-dir)
				TLS_DIR="$2"
				shift
				;;
			--interval)
				INTERVAL="$2"
				shift
				;;
			*)
				echo "reloader.sh: unknown argument: $1 (see --help)" >&2
				return 2
				;;
		esac
		shift
	done
	if [[ "${once}" == true ]]; then
		reload_server
		log "configuration reloaded; TLS files $(tls_fingerprint | cut -c1-12)"
		return 0
	fi
	watch
}

main "$@"
