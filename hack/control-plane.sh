#!/usr/bin/env bash
# A local Kubernetes control plane made of processes: etcd, kube-apiserver and
# kube-controller-manager on 127.0.0.1, with certificates made here and
# cert-manager's CRDs installed. There is no kubelet, so pods never run.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
STATE_DIR="${NVSENTINEL_CONTROL_PLANE_DIR:-${ROOT_DIR}/.state/control-plane}"
CERT_MANAGER_VERSION="v1.19.4"
# The service range is a private range nobody serves here; see --help.
SERVICE_CIDR="${NVSENTINEL_CONTROL_PLANE_SERVICE_CIDR:-10.0.0.0/24}"
READY_TIMEOUT_SECONDS="${NVSENTINEL_CONTROL_PLANE_TIMEOUT:-90}"
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
  NVSENTINEL_GUARD_SERVICE_RANGE    1 (default): as root, add an 'unreachable' route for
                                    the service range while the plane runs; 0: don't

The admin client certificate is in group system:masters. The API server runs
with RBAC (and Node) authorization, the ServiceAccount admission plugin off,
service account tokens signed by a key made here, and service cluster IPs from
${SERVICE_CIDR}. Nothing listens on that range, and nothing must dial it: the
API server routes webhooks and aggregated APIs to endpoint addresses
(--enable-aggregator-routing), never to a service IP, and without pods there
are no endpoint addresses. As a second guard, 'up' (as root) adds an
'unreachable' route for that range, so a stray dial fails at once on this
machine instead of leaving it; 'down' removes the route it added.
EOF
}

LOG_PREFIX=control-plane
# shellcheck source=hack/lib/log.sh
source "${ROOT_DIR}/hack/lib/log.sh"

pid_file() {
	echo "${STATE_DIR}/pids/$1.pid"
}

log_file() {
	echo "${STATE_DIR}/logs/$1.log"
}

kubeconfig_path() {
	echo "${STATE_DIR}/kubeconfig"
}

# component_pid NAME: the pid of a running component started by this state
# directory, or nothing (a recycled pid running another program is ignored).
component_pid() {
	local name="$1" pid
	[[ -f "$(pid_file "${name}")" ]] || return 0
	pid="$(cat "$(pid_file "${name}")")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 0
	if [[ -r "/proc/${pid}/cmdline" ]] && tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${STATE_DIR}/"; then
		echo "${pid}"
	fi
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

# start NAME ARGS...: start a component in its own session, logging to a file.
start() {
	local name="$1"
	shift
	# fd 9 is the state lock: the components must not inherit (and hold) it.
	setsid "${BIN_DIR}/${name}" "$@" </dev/null >"$(log_file "${name}")" 2>&1 9>&- &
	echo "$!" >"$(pid_file "${name}")"
}

fail_component() {
	local name="$1" reason="$2"
	log "control-plane: ${name} ${reason}; last lines of $(log_file "${name}"):"
	tail -n 40 "$(log_file "${name}")" >&2 || true
	stop_all
	exit 1
}

# wait_for NAME URL EXPECTED [CURL ARGS...]: poll URL until its body is EXPECTED.
wait_for() {
	local name="$1" url="$2" expected="$3" deadline body
	shift 3
	deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
	while ((SECONDS < deadline)); do
		# The pid, not component_pid: right after the fork the process may not
		# have exec'd its program yet, and its command line is still the shell's.
		kill -0 "$(cat "$(pid_file "${name}")")" 2>/dev/null || fail_component "${name}" "exited"
		body="$(curl --silent --max-time 5 "$@" "${url}" 2>/dev/null || true)"
		[[ "${body}" == "${expected}" ]] && return 0
		sleep 0.2
	done
	fail_component "${name}" "did not answer '${expected}' on ${url} within ${READY_TIMEOUT_SECONDS}s (last answer: ${body:-none})"
}

start_etcd() {
	mkdir -p "${STATE_DIR}/etcd"
	chmod 700 "${STATE_DIR}/etcd"
	start etcd \
		--name=local \
		--data-dir="${STATE_DIR}/etcd" \
		--listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
		--advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
		--listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-cluster="local=http://127.0.0.1:${ETCD_PEER_PORT}" \
		--unsafe-no-fsync=true \
		--log-level=warn
	wait_for etcd "http://127.0.0.1:${ETCD_PORT}/readyz" "ok"
}

start_apiserver() {
	start kube-apiserver \
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
	wait_for kube-apiserver "https://127.0.0.1:${APISERVER_PORT}/readyz" "ok" \
		--cacert "$(pki ca.crt)" --cert "$(pki admin.crt)" --key "$(pki admin.key)"
}

start_controller_manager() {
	local kubeconfig="${STATE_DIR}/controller-manager.kubeconfig"
	write_kubeconfig "${kubeconfig}" "https://127.0.0.1:${APISERVER_PORT}" controller-manager
	start kube-controller-manager \
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
	wait_for kube-controller-manager "https://127.0.0.1:${CONTROLLER_MANAGER_PORT}/healthz" "ok" \
		--cacert "$(pki ca.crt)" --insecure
}

# cert_manager_crds_dir: cert-manager's deploy/crds at the pinned version,
# from the module cache (downloaded through the Go module proxy if needed).
cert_manager_crds_dir() {
	local dir
	dir="$(cd / && GOFLAGS='' go mod download -json "github.com/cert-manager/cert-manager@${CERT_MANAGER_VERSION}" |
		sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
	[[ -d "${dir}/deploy/crds" ]] || die "cert-manager ${CERT_MANAGER_VERSION} has no deploy/crds"
	# Some cert-manager releases keep Helm template markup in these files;
	# they must be rendered before they can be applied.
	if grep -l '{{' "${dir}"/deploy/crds/*.yaml >&2; then
		die "cert-manager ${CERT_MANAGER_VERSION}'s CRDs above are templated; render them before applying"
	fi
	echo "${dir}/deploy/crds"
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
		[[ "$(curl --silent --max-time 5 --cacert "$(pki ca.crt)" --cert "$(pki admin.crt)" \
			--key "$(pki admin.key)" "https://127.0.0.1:${APISERVER_PORT}/readyz" 2>/dev/null || true)" == ok ]] &&
			return 0
		sleep 1
	done
	return 1
}

# stop_all: TERM every component at once (the state goes away with them, so
# there is nothing to hand over in order), then KILL what is left after 10s.
stop_all() {
	local name pid pids=() i
	for name in "${COMPONENTS[@]}"; do
		pid="$(component_pid "${name}")"
		if [[ -n "${pid}" ]]; then
			pids+=("${pid}")
			kill -TERM "${pid}" 2>/dev/null || true
		fi
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 100; i++)); do
			[[ -d "/proc/${pid}" ]] || break
			sleep 0.1
		done
		if [[ -d "/proc/${pid}" ]]; then
			kill -KILL "${pid}" 2>/dev/null || true
		fi
	done
	for name in "${COMPONENTS[@]}"; do
		rm -f "$(pid_file "${name}")"
	done
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

# take_lock: serialise up and down on one state directory. Returns non-zero
# when another holder keeps the lock past the timeout.
# guard_service_range: route the service range nowhere while the plane runs,
# so nothing can dial a service IP off this machine (root only; recorded in
# the state so that down removes only what up added).
guard_service_range() {
	[[ "${NVSENTINEL_GUARD_SERVICE_RANGE:-1}" == 1 && "$(id -u)" == 0 ]] || return 0
	command -v ip >/dev/null || return 0
	if ip route show "${SERVICE_CIDR}" | grep -q .; then
		return 0
	fi
	ip route add unreachable "${SERVICE_CIDR}"
	touch "${STATE_DIR}/service-range-guard"
	log "control-plane: added route 'unreachable ${SERVICE_CIDR}'"
}

unguard_service_range() {
	[[ -f "${STATE_DIR}/service-range-guard" ]] || return 0
	ip route del unreachable "${SERVICE_CIDR}" 2>/dev/null || true
}

take_lock() {
	mkdir -p "$(dirname "${STATE_DIR}")"
	exec 9>"${STATE_DIR%/}.lock"
	flock -w $((READY_TIMEOUT_SECONDS + 30)) 9
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
	take_lock || die "another hack/control-plane.sh holds ${STATE_DIR%/}.lock"
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
	take_lock || log "control-plane: ${STATE_DIR%/}.lock is held; stopping anyway"
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
