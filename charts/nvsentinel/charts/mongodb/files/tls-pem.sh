#!/usr/bin/env bash
# Builds the PEM mongod serves (certificate + key in one file) from the
# cert-manager Secret, and keeps it current: when the kubelet swaps in a renewed
# Secret, the PEM is rebuilt atomically and mongod is told to `rotateCertificates`.
set -euo pipefail

TLS_DIR="${TLS_DIR:-/etc/nvsentinel/mongodb/tls}"
PEM_DIR="${PEM_DIR:-/var/run/nvsentinel/mongodb-tls}"
INTERVAL="${INTERVAL:-30}"
SCRIPTS_DIR="${NVS_SCRIPTS_DIR:-/opt/nvsentinel/scripts}"

usage() {
	cat <<'USAGE'
Usage: tls-pem.sh [--once | --watch] [--help]

  --once   write PEM_DIR/server.pem from TLS_DIR/tls.crt + tls.key (mode 0600)
           and record which files it was built from; used by the init container
           and by the init Job for its client PEM
  --watch  (default) every INTERVAL seconds compare TLS_DIR with the recorded
           build; on a change rebuild server.pem and run rotate-certificates.js
           (mongod re-reads its certificate, key and CA without a restart)

Environment: TLS_DIR, PEM_DIR, INTERVAL (default 30), NVS_SCRIPTS_DIR and the
NVS_* connection variables that connect.js reads.
USAGE
}

log() {
	printf '%s tls-pem: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

source_fingerprint() {
	cat "${TLS_DIR}/tls.crt" "${TLS_DIR}/tls.key" "${TLS_DIR}/ca.crt" | sha256sum | cut -d' ' -f1
}

build_pem() {
	local tmp
	mkdir -p "${PEM_DIR}"
	tmp="$(mktemp "${PEM_DIR}/.server.pem.XXXXXX")"
	chmod 0600 "${tmp}"
	# A newline between the two in case the certificate lacks a trailing one.
	{
		cat "${TLS_DIR}/tls.crt"
		echo
		cat "${TLS_DIR}/tls.key"
	} >"${tmp}"
	mv -f "${tmp}" "${PEM_DIR}/server.pem"
}

record() {
	printf '%s\n' "$1" >"${PEM_DIR}/.applied"
}

applied() {
	cat "${PEM_DIR}/.applied" 2>/dev/null || true
}

rotate() {
	mongosh --nodb --quiet --norc --file "${SCRIPTS_DIR}/rotate-certificates.js"
}

watch() {
	local current
	# As a container's PID 1 the shell ignores SIGTERM unless it traps it: without
	# this, every pod stop would wait out its whole grace period. The sleep runs in
	# the background so that the trap fires at once.
	trap 'exit 0' TERM INT
	while true; do
		current="$(source_fingerprint)"
		if [[ "${current}" != "$(applied)" ]]; then
			build_pem
			if rotate; then
				record "${current}"
				log "mongod now serves the certificate files ${current:0:12}"
			else
				log "rotateCertificates failed (mongod starting?); will retry"
			fi
		fi
		sleep "${INTERVAL}" &
		wait $!
	done
}

main() {
	case "${1:---watch}" in
		--help | -h) usage ;;
		--once)
			build_pem
			record "$(source_fingerprint)"
			log "wrote ${PEM_DIR}/server.pem"
			;;
		--watch) watch ;;
		*)
			echo "tls-pem.sh: unknown argument: $1 (see --help)" >&2
			return 2
			;;
	esac
}

main "$@"
