#!/usr/bin/env bash
# A local Kubernetes control plane made of processes: etcd, kube-apiserver and
# kube-controller-manager on 127.0.0.1, with certificates made here and
# cert-manager's CRDs installed. There is no kubelet, so pods never run.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
STATE_DIR="${NVSENTINEL_CONTROL_PLANE_DIR:-${ROOT_DIR}/.state/control-plane}"
# shellcheck source=hack/lib/versions.sh
source "${ROOT_DIR}/hack/lib/versions.sh"
# The cert-manager release whose CRDs up installs: hack/versions.env's, or
# the one hack/local-cluster.sh runs the controller of.
CERT_MANAGER_VERSION="${NVSENTINEL_CONTROL_PLANE_CERT_MANAGER_VERSION:-${CERT_MANAGER_VERSION}}"
# The service range is a private range nobody serves here; see --help.
SERVICE_CIDR="${NVSENTINEL_CONTROL_PLANE_SERVICE_CIDR:-10.0.0.0/24}"
READY_TIMEOUT_SECONDS="${NVSENTINEL_CONTROL_PLANE_TIMEOUT:-90}"
POLL_SECONDS=0.2
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
MARKER=".nvsentinel-control-plane"
PKI_DIR="${STATE_DIR}/pki"
# shellcheck source=hack/lib/pki.sh
source "${ROOT_DIR}/hack/lib/pki.sh"

usage() {
	cat <<EOF
Usage: hack/control-plane.sh up|down|kubeconfig|--help

A local Kubernetes control plane for the cluster test tier: etcd,
kube-apiserver and kube-controller-manager from .bin/ (hack/build-tools.sh),
bound to 127.0.0.1 on free ports, with cert-manager ${CERT_MANAGER_VERSION}'s CRDs.

There is no kubelet and no container runtime: objects are accepted and
controllers (namespaces, garbage collection, service accounts, deployments'
replica sets) run, but pods are never scheduled or started.

Commands:
  up          start the control plane (or notice the running one), wait until
              /readyz answers ok and cert-manager's CRDs are Established, then
              print 'export KUBECONFIG=...'
  down        stop every process 'up' started and remove the state directory
  kubeconfig  print the path of the admin kubeconfig of the running plane

Environment:
  NVSENTINEL_CONTROL_PLANE_DIR      state directory (default: .state/control-plane)
  NVSENTINEL_BIN_DIR                where the binaries are (default: .bin)
  NVSENTINEL_CONTROL_PLANE_TIMEOUT  seconds to wait for readiness (default: 90)
  NVSENTINEL_CONTROL_PLANE_SERVICE_CIDR  service range (default: 10.0.0.0/24)
  NVSENTINEL_CONTROL_PLANE_CERT_MANAGER_VERSION  cert-manager release of the CRDs
                                    (default: hack/versions.env's, ${CERT_MANAGER_VERSION})
  NVSENTINEL_GUARD_SERVICE_RANGE    1 (default): as root, add an 'unreachable' route for
                                    the service range while the plane runs; 0: don't

The admin client certificate is in group system:masters. The API server runs
with RBAC (and Node) authorization, the ServiceAccount admission plugin off,
service account tokens signed by a key made here, and service cluster IPs from
${SERVICE_CIDR}. Nothing listens on that range, and nothing must dial it: the
API server routes webhooks and aggregated APIs to endpoint addresses
(--enable-aggregator-routing), never to a service IP, and without pods there
are no endpoint addresses. As a second guard, 'up' (as root) adds an
'unreachable' route (metric ${GUARD_ROUTE_METRIC}) for that range unless something routes it
already, so a stray dial fails at once on this machine instead of leaving it;
'down' removes the route it added.
EOF
}

LOG_PREFIX=control-plane
# shellcheck source=hack/lib/log.sh
source "${ROOT_DIR}/hack/lib/log.sh"
# shellcheck source=hack/lib/processes.sh
source "${ROOT_DIR}/hack/lib/processes.sh"
# shellcheck source=hack/lib/network-guard.sh
source "${ROOT_DIR}/hack/lib/network-guard.sh"

kubeconfig_path() {
	echo "${STATE_DIR}/kubeconfig"
}

require_binaries() {
	local name
	for name in etcd kube-apiserver kube-controller-manager kubectl; do
		[[ -x "${BIN_DIR}/${name}" ]] || die "${BIN_DIR}/${name} is missing; run hack/build-tools.sh"
	done
	command -v openssl >/dev/null || die "openssl is not installed"
	command -v curl >/dev/null || die "curl is not installed"
	command -v python3 >/dev/null || die "python3 is not installed"
	command -v go >/dev/null || die "go is not installed (it fetches cert-manager's CRDs)"
}

generate_certificates() {
	local client="${PKI_CLIENT_EXTENSIONS}"
	mkdir -p "${STATE_DIR}/pki"
	chmod 700 "${STATE_DIR}/pki"
	make_ca ca "/CN=nvsentinel-local-ca"
	sign apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
	sign admin "/O=system:masters/CN=nvsentinel-admin" "${client}"
	sign controller-manager "/CN=system:kube-controller-manager" "${client}"
	# The API server's client certificate towards kubelets (logs, exec,
	# port-forward), when a kubelet joins (hack/local-cluster.sh).
	sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${client}"
	# Requests the API server proxies to aggregated API servers carry this
	# client certificate; aggregated servers trust it through front-proxy-ca.
	make_ca front-proxy-ca "/CN=nvsentinel-local-front-proxy-ca"
	sign front-proxy-client "/CN=front-proxy-client" "${client}" front-proxy-ca
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$(pki sa.key)" 2>/dev/null
	openssl pkey -in "$(pki sa.key)" -pubout -out "$(pki sa.pub)"
	rm -f "$(pki ca.srl)" "$(pki front-proxy-ca.srl)"
}

# on_component_failure: a component failed to start (fail_component): stop
# the others, so that up can start them again on other ports.
on_component_failure() {
	stop_all
}

start_etcd() {
	mkdir -p "${STATE_DIR}/etcd"
	chmod 700 "${STATE_DIR}/etcd"
	start_component etcd "${BIN_DIR}/etcd" \
		--name=local \
		--data-dir="${STATE_DIR}/etcd" \
		--listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
		--advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
		--listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-cluster="local=http://127.0.0.1:${ETCD_PEER_PORT}" \
		--unsafe-no-fsync=true \
		--log-level=warn
	wait_until etcd "'ok' from /readyz" answers_ok "http://127.0.0.1:${ETCD_PORT}/readyz"
}

start_apiserver() {
	start_component kube-apiserver "${BIN_DIR}/kube-apiserver" \
		--advertise-address=127.0.0.1 \
		--bind-address=127.0.0.1 \
		--secure-port="${APISERVER_PORT}" \
		--etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
		--cert-dir="${STATE_DIR}/pki" \
		--tls-cert-file="$(pki apiserver.crt)" \
		--tls-private-key-file="$(pki apiserver.key)" \
		--client-ca-file="$(pki ca.crt)" \
		--service-account-issuer="https://127.0.0.1:${APISERVER_PORT}" \
		--service-account-key-file="$(pki sa.pub)" \
		--service-account-signing-key-file="$(pki sa.key)" \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--authorization-mode=Node,RBAC \
		--disable-admission-plugins=ServiceAccount \
		--allow-privileged=true \
		--enable-aggregator-routing=true \
		--endpoint-reconciler-type=none \
		--requestheader-client-ca-file="$(pki front-proxy-ca.crt)" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$(pki front-proxy-client.crt)" \
		--proxy-client-key-file="$(pki front-proxy-client.key)" \
		--kubelet-client-certificate="$(pki apiserver-kubelet-client.crt)" \
		--kubelet-client-key="$(pki apiserver-kubelet-client.key)" \
		--kubelet-certificate-authority="$(pki ca.crt)" \
		--kubelet-preferred-address-types=InternalIP \
		--profiling=false
	wait_until kube-apiserver "'ok' from /readyz" answers_ok "https://127.0.0.1:${APISERVER_PORT}/readyz" \
		--cacert "$(pki ca.crt)" --cert "$(pki admin.crt)" --key "$(pki admin.key)"
}

start_controller_manager() {
	local kubeconfig="${STATE_DIR}/controller-manager.kubeconfig"
	write_kubeconfig "${kubeconfig}" "https://127.0.0.1:${APISERVER_PORT}" controller-manager
	start_component kube-controller-manager "${BIN_DIR}/kube-controller-manager" \
		--kubeconfig="${kubeconfig}" \
		--authentication-kubeconfig="${kubeconfig}" \
		--authorization-kubeconfig="${kubeconfig}" \
		--bind-address=127.0.0.1 \
		--secure-port="${CONTROLLER_MANAGER_PORT}" \
		--cert-dir="${STATE_DIR}/pki" \
		--service-account-private-key-file="$(pki sa.key)" \
		--root-ca-file="$(pki ca.crt)" \
		--cluster-signing-cert-file="$(pki ca.crt)" \
		--cluster-signing-key-file="$(pki ca.key)" \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--use-service-account-credentials=true \
		--leader-elect=false \
		--profiling=false
	wait_until kube-controller-manager "'ok' from /healthz" \
		answers_ok "https://127.0.0.1:${CONTROLLER_MANAGER_PORT}/healthz" --cacert "$(pki ca.crt)" --insecure
}

# cert_manager_crds_dir: cert-manager's deploy/crds at CERT_MANAGER_VERSION,
# from the module cache (downloaded through the Go module proxy if needed),
# rendered into the state directory.
cert_manager_crds_dir() {
	local dir file out="${STATE_DIR}/cert-manager-crds"
	dir="$(cd / && GOFLAGS='' go mod download -json "github.com/cert-manager/cert-manager@${CERT_MANAGER_VERSION}" |
		sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
	[[ -d "${dir}/deploy/crds" ]] || die "cert-manager ${CERT_MANAGER_VERSION} has no deploy/crds"
	mkdir -p "${out}"
	for file in "${dir}"/deploy/crds/*.yaml; do
		render_crd "${file}" >"${out}/${file##*/}"
	done
	if grep -l '{{' "${out}"/*.yaml >&2; then
		die "cert-manager ${CERT_MANAGER_VERSION}'s CRDs above hold template markup render_crd does not know"
	fi
	echo "${out}"
}

# render_crd FILE: one of cert-manager's deploy/crds files, ready to apply.
# Older releases (v1.11 among them) keep the Helm chart's label markup there:
# the labels app, app.kubernetes.io/name and app.kubernetes.io/instance get
# the value cert-manager's static manifest gives them, and the comment that
# pulls in the chart's other labels goes.
render_crd() {
	sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
		-e "s/'{{ .Release.Name }}'/cert-manager/" \
		-e '/^ *# Generated labels {{/d' "$1"
}

install_cert_manager_crds() {
	local dir file names=()
	dir="$(cert_manager_crds_dir)"
	for file in "${dir}"/*.yaml; do
		names+=("crd/$(awk '/^  name: / { print $2; exit }' "${file}")")
	done
	"${BIN_DIR}/kubectl" --kubeconfig="$(kubeconfig_path)" apply --server-side \
		--field-manager=nvsentinel-control-plane -f "${dir}" >/dev/null
	"${BIN_DIR}/kubectl" --kubeconfig="$(kubeconfig_path)" wait --for=condition=Established \
		--timeout="${READY_TIMEOUT_SECONDS}s" "${names[@]}" >/dev/null
}

is_running() {
	local name
	for name in "${COMPONENTS[@]}"; do
		[[ -n "$(component_pid "${name}")" ]] || return 1
	done
	[[ -f "$(kubeconfig_path)" && -f "${STATE_DIR}/ready" ]] || return 1
	# shellcheck source=/dev/null
	source "${STATE_DIR}/ports.env"
	# Every process is alive: give a busy API server time before calling it broken.
	local deadline=$((SECONDS + 30))
	while ((SECONDS < deadline)); do
		answers_ok "https://127.0.0.1:${APISERVER_PORT}/readyz" \
			--cacert "$(pki ca.crt)" --cert "$(pki admin.crt)" --key "$(pki admin.key)" && return 0
		sleep 1
	done
	return 1
}

# stop_all: every component at once (the state goes away with them, so
# there is nothing to hand over in order).
stop_all() {
	stop_components "${COMPONENTS[@]}"
}

remove_state() {
	[[ -d "${STATE_DIR}" ]] || return 0
	# An empty directory (made by the caller to hold the state) is fine to take.
	rmdir "${STATE_DIR}" 2>/dev/null && return 0
	[[ -f "${STATE_DIR}/${MARKER}" ]] || die "${STATE_DIR} was not made by this script; not removing it"
	rm -rf "${STATE_DIR}"
}

print_export() {
	echo "export KUBECONFIG=$(kubeconfig_path)"
}

# choose_ports: free ports for every listener, recorded in ports.env.
choose_ports() {
	read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT <<<"$(free_ports 4)"
	printf '%s\n' "ETCD_PORT=${ETCD_PORT}" "ETCD_PEER_PORT=${ETCD_PEER_PORT}" \
		"APISERVER_PORT=${APISERVER_PORT}" "CONTROLLER_MANAGER_PORT=${CONTROLLER_MANAGER_PORT}" \
		>"${STATE_DIR}/ports.env"
}

# start_components: etcd, kube-apiserver and kube-controller-manager on free
# ports. A port found free can be taken by another program before a component
# binds it; then the components are started again on new ports (3 tries).
start_components() {
	local attempt
	for attempt in 1 2 3; do
		choose_ports
		write_kubeconfig "$(kubeconfig_path)" "https://127.0.0.1:${APISERVER_PORT}" admin
		if (
			step "etcd ready" start_etcd
			step "kube-apiserver ready" start_apiserver
			step "kube-controller-manager healthy" start_controller_manager
		); then
			return 0
		fi
		if ((attempt == 3)) || ! grep -qs "address already in use" "${STATE_DIR}"/logs/*.log; then
			exit 1
		fi
		log "control-plane: a port was taken meanwhile; starting again on other ports"
		rm -rf "${STATE_DIR}/etcd" "${STATE_DIR}"/logs/*.log
	done
}

# guard_service_range: route the service range nowhere while the plane runs,
# so nothing can dial a service IP off this machine (root only, and only when
# nothing routes the range yet; recorded in the state so that down removes
# only what up added).
guard_service_range() {
	[[ "${NVSENTINEL_GUARD_SERVICE_RANGE:-1}" == 1 && "$(id -u)" == 0 ]] || return 0
	command -v ip >/dev/null || return 0
	[[ -z "$(other_routes "${SERVICE_CIDR}")" ]] || return 0
	add_guard_route "${SERVICE_CIDR}"
	touch "${STATE_DIR}/service-range-guard"
}

unguard_service_range() {
	[[ -f "${STATE_DIR}/service-range-guard" ]] || return 0
	remove_guard_route "${SERVICE_CIDR}"
}

# on_up_exit: when up fails half-way, stop what it started (logs stay).
on_up_exit() {
	if [[ "${UP_DONE:-0}" != 1 && -d "${STATE_DIR}/pids" ]]; then
		stop_all
		log "control-plane: up failed; logs are in ${STATE_DIR}/logs (hack/control-plane.sh down removes them)"
	fi
}

cmd_up() {
	local start_time
	take_lock $((READY_TIMEOUT_SECONDS + 30)) || die "another hack/control-plane.sh holds ${STATE_DIR%/}.lock"
	if [[ -d "${STATE_DIR}" ]] && is_running; then
		log "control-plane: already running (state in ${STATE_DIR})"
		print_export
		return 0
	fi
	require_binaries
	start_time="$(now)"
	if [[ -d "${STATE_DIR}" ]]; then
		log "control-plane: removing a stopped control plane's state"
		stop_all
		remove_state
	fi
	mkdir -p "${STATE_DIR}/pids" "${STATE_DIR}/logs"
	touch "${STATE_DIR}/${MARKER}"
	trap on_up_exit EXIT
	guard_service_range
	step certificates generate_certificates
	start_components
	step "cert-manager ${CERT_MANAGER_VERSION} CRDs established" install_cert_manager_crds
	touch "${STATE_DIR}/ready"
	UP_DONE=1
	log "control-plane: up in $(seconds_since "${start_time}")s" \
		"(API server https://127.0.0.1:${APISERVER_PORT}, state in ${STATE_DIR})"
	print_export
}

cmd_down() {
	if [[ ! -d "${STATE_DIR}" ]]; then
		log "control-plane: nothing to stop (no ${STATE_DIR})"
		return 0
	fi
	if [[ ! -f "${STATE_DIR}/${MARKER}" ]]; then
		rmdir "${STATE_DIR}" 2>/dev/null && return 0
		die "${STATE_DIR} was not made by this script; not touching it"
	fi
	take_lock $((READY_TIMEOUT_SECONDS + 30)) || log "control-plane: ${STATE_DIR%/}.lock is held; stopping anyway"
	stop_all
	unguard_service_range
	remove_state
	log "control-plane: stopped, ${STATE_DIR} removed"
}

cmd_kubeconfig() {
	is_running || die "no control plane is running in ${STATE_DIR}; run hack/control-plane.sh up"
	kubeconfig_path
}

main() {
	case "${1:-}" in
		up) cmd_up ;;
		down) cmd_down ;;
		kubeconfig) cmd_kubeconfig ;;
		-h | --help | help) usage ;;
		"")
			usage >&2
			exit 2
			;;
		*) die "unknown command '$1' (see --help)" ;;
	esac
}

main "$@"
