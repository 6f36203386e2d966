#!/usr/bin/env bash
# Installs the chart with PostgreSQL on the local cluster (hack/local-cluster.sh)
# and checks what pods do: the server starts with TLS, the schema Job
# completes, `helm test` connects with verify-full and a client certificate.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
NAMESPACE="nvsentinel"
RELEASE="nvsentinel"
VALUES="${1:-values-tilt-postgresql.yaml}"

usage() {
	cat <<EOF
Usage: hack/local-cluster-chart-check.sh [--help] [VALUES_FILE]

On the running local cluster (hack/local-cluster.sh up): installs the chart
as release ${RELEASE} in namespace ${NAMESPACE} (made again from scratch) with
VALUES_FILE (default values-tilt-postgresql.yaml), waits until cert-manager
(which the local cluster runs) has made every Issuer and Certificate of the
release Ready (self-signed Issuer -> CA Certificate -> CA Issuer -> server and
client certificates), then for the PostgreSQL StatefulSet and the schema Job,
runs 'helm test', and prints the time of each step. Leaves the release
installed.

values-postgresql.yaml does not pass here: its metrics sidecar needs the
postgres-exporter image, which cannot be built on this machine.
EOF
}

log() {
	printf '%s\n' "$*" >&2
}

now() {
	date +%s.%N
}

main() {
	case "${1:-}" in
		-h | --help)
			usage
			return 0
			;;
	esac
	local start kubeconfig
	start="$(now)"
	elapsed() { awk -v s="${start}" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }
	kubeconfig="$("${ROOT_DIR}/hack/local-cluster.sh" kubeconfig)"
	local kubectl=("${BIN_DIR}/kubectl" --kubeconfig "${kubeconfig}")
	local helm=("${BIN_DIR}/helm" --kubeconfig "${kubeconfig}")
	"${kubectl[@]}" delete namespace "${NAMESPACE}" --ignore-not-found --wait=true >/dev/null
	"${kubectl[@]}" create namespace "${NAMESPACE}" >/dev/null
	"${helm[@]}" install "${RELEASE}" "${ROOT_DIR}/charts/nvsentinel" --namespace "${NAMESPACE}" \
		--values "${ROOT_DIR}/${VALUES}" >/dev/null
	log "chart-check: installed in $(elapsed)s"
	"${kubectl[@]}" -n "${NAMESPACE}" wait --for=condition=Ready certificates.cert-manager.io --all \
		--timeout=120s >/dev/null
	"${kubectl[@]}" -n "${NAMESPACE}" wait --for=condition=Ready issuers.cert-manager.io --all \
		--timeout=60s >/dev/null
	log "chart-check: every Certificate and Issuer Ready (cert-manager) at $(elapsed)s"
	"${kubectl[@]}" -n "${NAMESPACE}" rollout status "statefulset/${RELEASE}-postgresql" --timeout=300s >/dev/null
	log "chart-check: PostgreSQL ready at $(elapsed)s"
	"${kubectl[@]}" -n "${NAMESPACE}" wait --for=condition=Complete job --all --timeout=300s >/dev/null
	log "chart-check: schema Job complete at $(elapsed)s"
	"${helm[@]}" test "${RELEASE}" --namespace "${NAMESPACE}" --logs | grep "datastore-test: OK"
	log "chart-check: helm test passed at $(elapsed)s"
}

main "$@"
