#!/usr/bin/env bash
# A single-node Kubernetes made of processes, without a container engine:
# the control plane of hack/control-plane.sh (etcd, kube-apiserver,
# kube-controller-manager on 127.0.0.1), kube-scheduler, containerd with its
# own root, state and socket, kubelet, kube-proxy (iptables) and a CNI bridge
# with pod and service ranges of its own, CoreDNS, cert-manager's controller
# and kube-router's network policy controller (NetworkPolicies enforced in
# iptables) as host processes. Images are local builds (hack/build-images.sh)
# imported into containerd.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
STATE_DIR="${NVSENTINEL_LOCAL_CLUSTER_DIR:-${ROOT_DIR}/.state/local-cluster}"
READY_TIMEOUT_SECONDS="${NVSENTINEL_LOCAL_CLUSTER_TIMEOUT:-120}"
CNI_BIN_DIR="${NVSENTINEL_CNI_BIN_DIR:-/usr/lib/cni}"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.97.0.0/24"
NODE_IP="10.244.0.1"
DNS_IP="10.97.0.10"
BRIDGE="nvsl0"
NODE_NAME="nvsentinel-local"
CGROUP_ROOT="/nvsentinel-local"
MARKER=".nvsentinel-local-cluster"
# The configuration files up writes, as templates (render_template).
TEMPLATES_DIR="${ROOT_DIR}/hack/local-cluster"
COMPONENTS=(kube-scheduler containerd kubelet kube-proxy kube-router cert-manager)
PERSISTENT_VOLUMES=8
# Port 9 (discard) on loopback: nothing listens there.
NO_REGISTRY_PROXY="http://127.0.0.1:9"
# cert-manager's controllers for SelfSigned and CA issuers, which is all the
# chart uses: no ACME (orders, challenges, HTTP-01 solver pods), Vault or
# Venafi signers, no ingress or gateway shims.
CERT_MANAGER_CONTROLLERS="issuers,clusterissuers,certificaterequests-approver,certificaterequests-issuer-ca,certificaterequests-issuer-selfsigned,certificates-trigger,certificates-issuing,certificates-key-manager,certificates-request-manager,certificates-readiness,certificates-revision-manager,certificates-metrics"
CERT_MANAGER_CHECK="nvsentinel-local-cert-manager-check"
# Sysctls kubelet (and the CNI bridge) may set, and the one up sets for
# kube-router (bridged pod traffic through iptables); down puts back what up
# found.
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
	kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward
	net/bridge/bridge-nf-call-iptables)
# Prefix of the ipsets kube-router makes; down destroys those up's run added.
IPSET_PREFIX="KUBE-"
# Machine-wide directories the runtime or kubelet write into whatever their
# configuration says; down removes the entries up's run added.
HOST_DIRS=(/run/containerd /run/netns /var/lib/cni /var/log/containers /var/log/pods
	/var/lib/kubelet /etc/kubernetes /usr/libexec/kubernetes)

usage() {
	cat <<EOF
Usage: hack/local-cluster.sh up|down|kubeconfig|load-image IMAGE_TAR|--help

A single-node Kubernetes 1.34 made of processes, for the e2e tier where no
container engine exists. Needs root and the Debian packages containerd, runc,
containernetworking-plugins, iptables, conntrack, ipset and debootstrap, and the
binaries of hack/build-tools.sh (etcd kube-apiserver kube-controller-manager
kube-scheduler kubelet kube-proxy kubectl helm coredns cert-manager-controller
kube-router).

Commands:
  up          start everything (or notice the running cluster), wait until
              the node is Ready, a pod resolves a Service name through
              CoreDNS and cert-manager issues a certificate, print
              'export KUBECONFIG=...'
  down        stop every process up started; remove its containers, mounts,
              network interfaces, iptables chains, cgroups, routes and state;
              put back the sysctls kubelet changed
  kubeconfig  print the admin kubeconfig path of the running cluster
  load-image IMAGE_TAR
              import an OCI or docker archive into the cluster's containerd

Network (all of it local to this machine): pods in ${POD_CIDR} on bridge
${BRIDGE} (${NODE_IP} is the node), services in ${SERVICE_CIDR}. up first adds
'unreachable' routes (metric ${GUARD_ROUTE_METRIC}) for both ranges, so a packet for them never
follows the default route off the machine; down removes them last. The API
server listens on 127.0.0.1 only, kubelet and node ports on ${NODE_IP} only:
reach pods through 'kubectl port-forward', never by dialling their addresses.

Also running: CoreDNS; a default StorageClass 'standard' with ${PERSISTENT_VOLUMES} local
PersistentVolumes; cert-manager's controller $(cert_manager_controller_version) (SelfSigned and CA issuers
only, with that release's CRDs; no webhook, no cainjector); kube-router's
network policy controller (NetworkPolicies in iptables; down removes its
chains and the ${IPSET_PREFIX}* ipsets up's run added). Images are local builds
(hack/build-images.sh) under the references the chart renders; up says which
stand in for published ones. The node is labelled
node-role.kubernetes.io/control-plane, as a kind node is.

State: ${STATE_DIR} (containerd, kubelet, pod logs,
certificates, every component's log in logs/). Configuration files come from
the templates in hack/local-cluster/. docs/local-cluster.md has the details.

Environment:
  NVSENTINEL_LOCAL_CLUSTER_DIR      state directory (default: .state/local-cluster)
  NVSENTINEL_LOCAL_CLUSTER_TIMEOUT  seconds to wait for each readiness step (default: 120)
  NVSENTINEL_BIN_DIR                where the binaries are (default: .bin)
  NVSENTINEL_CNI_BIN_DIR            CNI plugins (default: /usr/lib/cni)
EOF
}

LOG_PREFIX=local-cluster
CONTROL_PLANE_DIR="${STATE_DIR}/control-plane"
PKI_DIR="${STATE_DIR}/pki"
CONTAINERD_DIR="${STATE_DIR}/containerd"
CONTAINERD_SOCK="${CONTAINERD_DIR}/containerd.sock"
# What up found on the machine (record_baseline), for down.
BASELINE_DIR="${STATE_DIR}/baseline"
# shellcheck source=hack/lib/log.sh
source "${ROOT_DIR}/hack/lib/log.sh"
# shellcheck source=hack/lib/pki.sh
source "${ROOT_DIR}/hack/lib/pki.sh"
# shellcheck source=hack/lib/processes.sh
source "${ROOT_DIR}/hack/lib/processes.sh"
# shellcheck source=hack/lib/network-guard.sh
source "${ROOT_DIR}/hack/lib/network-guard.sh"
# shellcheck source=hack/lib/local-cluster-containerd.sh
source "${ROOT_DIR}/hack/lib/local-cluster-containerd.sh"
# shellcheck source=hack/lib/machine-state.sh
source "${ROOT_DIR}/hack/lib/machine-state.sh"
# shellcheck source=hack/lib/template.sh
source "${ROOT_DIR}/hack/lib/template.sh"
# shellcheck source=hack/lib/versions.sh
source "${ROOT_DIR}/hack/lib/versions.sh"

# control_plane COMMAND: hack/control-plane.sh on this cluster's service range,
# with the CRDs of the cert-manager release whose controller runs here.
control_plane() {
	NVSENTINEL_CONTROL_PLANE_DIR="${CONTROL_PLANE_DIR}" \
		NVSENTINEL_CONTROL_PLANE_SERVICE_CIDR="${SERVICE_CIDR}" \
		NVSENTINEL_CONTROL_PLANE_CERT_MANAGER_VERSION="$(cert_manager_controller_version)" \
		NVSENTINEL_GUARD_SERVICE_RANGE=0 \
		"${ROOT_DIR}/hack/control-plane.sh" "$@"
}

kubeconfig_path() {
	echo "${CONTROL_PLANE_DIR}/kubeconfig"
}

kubectl() {
	"${BIN_DIR}/kubectl" --kubeconfig="$(kubeconfig_path)" "$@"
}

require_tools() {
	local name
	[[ "$(id -u)" == 0 ]] || die "needs root (containerd, kubelet, iptables, routes)"
	for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm coredns \
		cert-manager-controller kube-router; do
		[[ -x "${BIN_DIR}/${name}" ]] || die "${BIN_DIR}/${name} is missing; run hack/build-tools.sh"
	done
	for name in containerd containerd-shim-runc-v2 runc ctr iptables ip6tables conntrack ipset ip openssl python3; do
		command -v "${name}" >/dev/null || die "${name} is not installed (Debian: containerd runc iptables conntrack ipset iproute2)"
	done
	[[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
		die "no /proc/sys/net/bridge/bridge-nf-call-iptables (kernel module br_netfilter): NetworkPolicies could not be enforced"
	for name in bridge host-local loopback; do
		[[ -x "${CNI_BIN_DIR}/${name}" ]] || die "CNI plugin ${CNI_BIN_DIR}/${name} is missing (Debian: containernetworking-plugins)"
	done
	[[ -d /sys/fs/cgroup/memory ]] || die "kubelet 1.34 here is set up for cgroup v1 (no /sys/fs/cgroup/memory)"
}

# --- machine state: what up finds, so that down can put it back --------------

record_baseline() {
	[[ -f "${BASELINE_DIR}/done" ]] && return 0
	mkdir -p "${BASELINE_DIR}"
	record_sysctls "${BASELINE_DIR}"
	record_host_dirs "${BASELINE_DIR}"
	record_firewall "${BASELINE_DIR}"
	touch "${BASELINE_DIR}/done"
}

# guard_ranges: 'unreachable' routes for the pod and service ranges, unless
# something else routes them already.
guard_ranges() {
	local cidr routes
	for cidr in "${POD_CIDR}" "${SERVICE_CIDR}"; do
		routes="$(other_routes "${cidr}" "${BRIDGE}")"
		[[ -z "${routes}" ]] || die "this machine already routes ${cidr} (${routes%%$'\n'*}); not starting"
		add_guard_route "${cidr}"
	done
	touch "${STATE_DIR}/range-guards"
}

unguard_ranges() {
	remove_guard_route "${POD_CIDR}"
	remove_guard_route "${SERVICE_CIDR}"
}

# make_bridge: the pods' bridge with the node's address, made before kubelet
# starts (kubelet checks that the node address is on this machine).
make_bridge() {
	if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
		ip link add "${BRIDGE}" type bridge
	fi
	touch "${STATE_DIR}/bridge"
	if ! ip -4 addr show dev "${BRIDGE}" | grep -q "inet ${NODE_IP}/"; then
		ip addr add "${NODE_IP}/${POD_CIDR#*/}" dev "${BRIDGE}"
	fi
	ip link set "${BRIDGE}" up
	# A pod reaches a Service through the node: kube-proxy's DNAT turns the
	# packet (sent to the bridge's address) into one for another pod on the
	# bridge, which the kernel must then forward. Forwarding is switched on for
	# packets that arrive on this bridge only (net.ipv4.ip_forward stays as it
	# is), and the bridge guard drops whatever from the bridge would leave
	# through another interface.
	echo 1 >"/proc/sys/net/ipv4/conf/${BRIDGE}/forwarding"
	# Frames between two pods on the bridge go through iptables' FORWARD
	# chain, where kube-router enforces NetworkPolicies (restore_sysctls puts
	# the value found back).
	echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	guard_bridge "${BRIDGE}"
}

# --- certificates and configuration ------------------------------------------

generate_node_certificates() {
	mkdir -p "${PKI_DIR}"
	chmod 700 "${PKI_DIR}"
	# The node's components use the control plane's CA.
	cp "${CONTROL_PLANE_DIR}/pki/ca.crt" "${CONTROL_PLANE_DIR}/pki/ca.key" "${PKI_DIR}/"
	sign kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" "${PKI_CLIENT_EXTENSIONS}"
	sign kubelet-serving "/O=system:nodes/CN=system:node:${NODE_NAME}" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}"
	sign kube-scheduler "/CN=system:kube-scheduler" "${PKI_CLIENT_EXTENSIONS}"
	sign kube-proxy "/CN=system:kube-proxy" "${PKI_CLIENT_EXTENSIONS}"
	sign coredns "/CN=nvsentinel-local:coredns" "${PKI_CLIENT_EXTENSIONS}"
	rm -f "${PKI_DIR}/ca.key"
}

api_server_url() {
	awk '$1 == "server:" { print $2; exit }' "$(kubeconfig_path)"
}

# --- node components ----------------------------------------------------------

write_kubelet_config() {
	local dir="${STATE_DIR}/kubelet"
	mkdir -p "${dir}/root" "${STATE_DIR}/pod-logs" "${dir}/volume-plugins"
	write_kubeconfig "${dir}/kubeconfig" "$(api_server_url)" kubelet
	: >"${dir}/resolv.conf"
	render_template "${TEMPLATES_DIR}/kubelet-config.yaml" KUBELET_DIR="${dir}" CA_FILE="$(pki ca.crt)" \
		KUBELET_SERVING_CERT="$(pki kubelet-serving.crt)" KUBELET_SERVING_KEY="$(pki kubelet-serving.key)" \
		>"${dir}/config.yaml"
}

start_kubelet() {
	write_kubelet_config
	start_component kubelet "${BIN_DIR}/kubelet" \
		--config="${STATE_DIR}/kubelet/config.yaml" \
		--kubeconfig="${STATE_DIR}/kubelet/kubeconfig" \
		--root-dir="${STATE_DIR}/kubelet/root" \
		--cert-dir="${STATE_DIR}/kubelet/pki" \
		--hostname-override="${NODE_NAME}" \
		--node-ip="${NODE_IP}" \
		--v=1
	wait_until kubelet "node ${NODE_NAME} Ready" \
		kubectl wait --for=condition=Ready --timeout=2s "node/${NODE_NAME}"
}

start_scheduler() {
	write_kubeconfig "${STATE_DIR}/kube-scheduler.kubeconfig" "$(api_server_url)" kube-scheduler
	start_component kube-scheduler "${BIN_DIR}/kube-scheduler" \
		--kubeconfig="${STATE_DIR}/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="${STATE_DIR}/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="${STATE_DIR}/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="${SCHEDULER_PORT}" \
		--leader-elect=false
	wait_until kube-scheduler "healthy" \
		curl --silent --fail --insecure "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
}

start_kube_proxy() {
	write_kubeconfig "${STATE_DIR}/kube-proxy.kubeconfig" "$(api_server_url)" kube-proxy
	render_template "${TEMPLATES_DIR}/kube-proxy-config.yaml" >"${STATE_DIR}/kube-proxy.yaml"
	start_component kube-proxy "${BIN_DIR}/kube-proxy" --config="${STATE_DIR}/kube-proxy.yaml"
	wait_until kube-proxy "healthy" curl --silent --fail "http://127.0.0.1:${PROXY_HEALTHZ_PORT}/healthz"
}

# kube_router_ready: its network policy controller has synced once (its
# top-level chain is hooked into FORWARD and it logged a finished sync).
kube_router_ready() {
	iptables -w -t filter -S FORWARD | grep -q -- "-j KUBE-ROUTER-FORWARD" &&
		grep -q "sync iptables took" "$(log_file kube-router)"
}

# start_kube_router: kube-router's network policy controller only (no BGP
# routing, no IPVS service proxy: kube-proxy stays the proxy), with the admin
# kubeconfig. Its health server would listen on every address and is off, as
# are metrics and pprof.
start_kube_router() {
	start_component kube-router "${BIN_DIR}/kube-router" \
		--kubeconfig="$(kubeconfig_path)" \
		--hostname-override="${NODE_NAME}" \
		--run-firewall=true \
		--run-router=false \
		--run-service-proxy=false \
		--run-loadbalancer=false \
		--enable-ipv4=true \
		--enable-ipv6=false \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--health-port=0 \
		--metrics-port=0 \
		--enable-pprof=false \
		--v=2
	wait_until kube-router "its first network policy sync" kube_router_ready
}

choose_ports() {
	read -r KUBELET_PORT KUBELET_HEALTHZ_PORT SCHEDULER_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT \
		COREDNS_HEALTH_PORT COREDNS_READY_PORT CERT_MANAGER_METRICS_PORT <<<"$(free_ports 8)"
	printf '%s\n' "KUBELET_PORT=${KUBELET_PORT}" "KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT}" \
		"SCHEDULER_PORT=${SCHEDULER_PORT}" "PROXY_HEALTHZ_PORT=${PROXY_HEALTHZ_PORT}" \
		"PROXY_METRICS_PORT=${PROXY_METRICS_PORT}" "COREDNS_HEALTH_PORT=${COREDNS_HEALTH_PORT}" \
		"COREDNS_READY_PORT=${COREDNS_READY_PORT}" "CERT_MANAGER_METRICS_PORT=${CERT_MANAGER_METRICS_PORT}" \
		>"${STATE_DIR}/ports.env"
}

# coredns_manifests: CoreDNS as a Deployment in kube-system behind the
# kube-dns Service (${DNS_IP}), in the node's network namespace (hostNetwork)
# with a kubeconfig of its own, answering on ${NODE_IP}:53 only
# (hack/local-cluster/coredns.yaml says why).
coredns_manifests() {
	write_kubeconfig "${STATE_DIR}/coredns.kubeconfig" "$(api_server_url)" coredns
	render_template "${TEMPLATES_DIR}/coredns.yaml" \
		COREDNS_KUBECONFIG_BASE64="$(base64 -w0 <"${STATE_DIR}/coredns.kubeconfig")" \
		COREDNS_IMAGE="$(refs_of coredns | head -n1)"
}

# storage_manifests: a default StorageClass 'standard' backed by local
# PersistentVolumes in the state directory (no provisioner: up makes
# ${PERSISTENT_VOLUMES} of them; a released one is not reused).
storage_manifests() {
	local i
	render_template "${TEMPLATES_DIR}/storage-class.yaml"
	for ((i = 1; i <= PERSISTENT_VOLUMES; i++)); do
		mkdir -p "${STATE_DIR}/volumes/pv${i}"
		echo "---"
		render_template "${TEMPLATES_DIR}/persistent-volume.yaml" PV_NAME="${NODE_NAME}-pv${i}" \
			PV_PATH="${STATE_DIR}/volumes/pv${i}"
	done
}

# prepare_node: the labels a single kind node has (charts' dev values select
# the control-plane node) and the storage.
prepare_node() {
	kubectl label --overwrite "node/${NODE_NAME}" node-role.kubernetes.io/control-plane= >/dev/null
	storage_manifests | kubectl apply --server-side --field-manager=nvsentinel-local-cluster -f - >/dev/null
}

deploy_coredns() {
	coredns_manifests | kubectl apply --server-side --field-manager=nvsentinel-local-cluster -f - >/dev/null
	kubectl -n kube-system rollout status deployment/coredns --timeout="${READY_TIMEOUT_SECONDS}s" >/dev/null
}

# check_dns: a pod resolves a Service name through CoreDNS.
check_dns() {
	local answer
	kubectl -n kube-system delete pod dns-check --ignore-not-found --wait=true >/dev/null
	kubectl -n kube-system run dns-check --image="$(refs_of shell | head -n1)" --image-pull-policy=Never \
		--restart=Never --command -- nslookup kubernetes.default.svc.cluster.local "${DNS_IP}" >/dev/null
	if ! kubectl -n kube-system wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s pod/dns-check >/dev/null; then
		kubectl -n kube-system logs dns-check >&2 || true
		die "a pod could not resolve kubernetes.default.svc.cluster.local through CoreDNS"
	fi
	answer="$(kubectl -n kube-system logs dns-check)"
	kubectl -n kube-system delete pod dns-check --wait=false >/dev/null
	grep -q "$(kubectl get service kubernetes -o jsonpath='{.spec.clusterIP}')" <<<"${answer}" ||
		die "CoreDNS answered without the kubernetes Service's address: ${answer}"
}

# --- cert-manager -------------------------------------------------------------

# cert_manager_issued: the check Certificate is Ready and its Secret holds a certificate.
cert_manager_issued() {
	kubectl -n kube-system wait --for=condition=Ready --timeout=2s "certificate/${CERT_MANAGER_CHECK}" &&
		[[ -n "$(kubectl -n kube-system get secret "${CERT_MANAGER_CHECK}" -o jsonpath='{.data.tls\.crt}')" ]]
}

# start_cert_manager: cert-manager's controller (no webhook, no cainjector) on
# the host with the admin kubeconfig, for SelfSigned and CA issuers; healthy
# once it has issued a certificate. Nothing it runs dials out: the ACME, Vault
# and Venafi controllers are off, and its HTTP clients would go through a
# proxy on a closed loopback port (the API server, on 127.0.0.1, is never
# proxied).
start_cert_manager() {
	start_component cert-manager env HTTP_PROXY="${NO_REGISTRY_PROXY}" HTTPS_PROXY="${NO_REGISTRY_PROXY}" NO_PROXY= \
		http_proxy="${NO_REGISTRY_PROXY}" https_proxy="${NO_REGISTRY_PROXY}" no_proxy= \
		"${BIN_DIR}/cert-manager-controller" \
		--kubeconfig="$(kubeconfig_path)" \
		--leader-elect=false \
		--cluster-resource-namespace=kube-system \
		--controllers="${CERT_MANAGER_CONTROLLERS}" \
		--metrics-listen-address="127.0.0.1:${CERT_MANAGER_METRICS_PORT}" \
		--v=2
	wait_until cert-manager "its metrics endpoint answering" \
		curl --silent --fail "http://127.0.0.1:${CERT_MANAGER_METRICS_PORT}/metrics"
	render_template "${TEMPLATES_DIR}/cert-manager-check.yaml" | kubectl apply --server-side --field-manager=nvsentinel-local-cluster -f - >/dev/null
	wait_until cert-manager "a SelfSigned certificate issued" cert_manager_issued
	kubectl -n kube-system delete --ignore-not-found "certificate/${CERT_MANAGER_CHECK}" \
		"issuer/${CERT_MANAGER_CHECK}" "secret/${CERT_MANAGER_CHECK}" >/dev/null
}

# --- down ---------------------------------------------------------------------

# remove_pods: let kubelet stop every pod (CNI teardown, volume unmounts).
remove_pods() {
	[[ -n "$(component_pid kubelet)" && -f "$(kubeconfig_path)" ]] || return 0
	kubectl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 20))
	while ((SECONDS < deadline)); do
		[[ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]] && return 0
		sleep 1
	done
}

remove_network() {
	local link
	unguard_bridge "${BRIDGE}"
	if [[ -f "${STATE_DIR}/bridge" ]] && ip link show "${BRIDGE}" >/dev/null 2>&1; then
		for link in $(ip -o link show master "${BRIDGE}" | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
			ip link del "${link}" 2>/dev/null || true
		done
		ip link del "${BRIDGE}"
	fi
}

stop_everything() {
	# Without a scheduler, the pods controllers make again stay Pending.
	stop_components kube-scheduler
	stop_components cert-manager
	stop_components kube-router
	remove_pods
	stop_components kube-proxy
	stop_components kubelet
	kill_containers
	stop_components containerd
	kill_shims
	if [[ -f "${BASELINE_DIR}/done" ]]; then
		"${BIN_DIR}/kube-proxy" --cleanup >/dev/null 2>&1 || true
		# kube-router's chains and ipsets among them.
		remove_added_chains iptables "${BASELINE_DIR}"
		remove_added_chains ip6tables "${BASELINE_DIR}"
		remove_added_ipsets "${IPSET_PREFIX}" "${BASELINE_DIR}"
	fi
	unmount_under "${STATE_DIR}/"
	remove_host_entries "${BASELINE_DIR}"
	remove_network
	remove_cgroups "${CGROUP_ROOT}"
	restore_sysctls "${BASELINE_DIR}"
	[[ -d "${CONTROL_PLANE_DIR}" ]] && control_plane down 2>/dev/null
	return 0
}

# --- commands -----------------------------------------------------------------

is_running() {
	local name
	[[ -f "${STATE_DIR}/ready" ]] || return 1
	for name in "${COMPONENTS[@]}"; do
		[[ -n "$(component_pid "${name}")" ]] || return 1
	done
	control_plane kubeconfig >/dev/null 2>&1 || return 1
	kubectl wait --for=condition=Ready --timeout=30s "node/${NODE_NAME}" >/dev/null 2>&1
}

on_up_exit() {
	if [[ "${UP_DONE:-0}" != 1 ]]; then
		log "local-cluster: up failed; logs are in ${STATE_DIR}/logs (hack/local-cluster.sh down cleans up)"
	fi
}

cmd_up() {
	local start_time
	[[ "$(id -u)" == 0 ]] || die "needs root"
	take_lock $((READY_TIMEOUT_SECONDS + 60)) || die "another hack/local-cluster.sh holds ${STATE_DIR%/}.lock"
	if [[ -d "${STATE_DIR}" ]] && is_running; then
		log "local-cluster: already running (state in ${STATE_DIR})"
		echo "export KUBECONFIG=$(kubeconfig_path)"
		return 0
	fi
	require_tools
	start_time="$(now)"
	if [[ -f "${STATE_DIR}/${MARKER}" ]]; then
		log "local-cluster: cleaning up a stopped cluster first"
		stop_everything
		unguard_ranges
		rm -rf "${STATE_DIR}"
	fi
	mkdir -p "${STATE_DIR}/pids" "${STATE_DIR}/logs"
	touch "${STATE_DIR}/${MARKER}"
	trap on_up_exit EXIT
	guard_ranges
	record_baseline
	make_bridge
	make_cgroups "${CGROUP_ROOT}"
	step "control plane up" control_plane_up
	choose_ports
	step "node certificates" generate_node_certificates
	step "images built (or cached)" build_images
	step "containerd ready" start_containerd
	step "images imported" import_images
	step "kube-scheduler healthy" start_scheduler
	step "node Ready" start_kubelet
	step "kube-proxy healthy" start_kube_proxy
	step "kube-router enforcing NetworkPolicies" start_kube_router
	step "node labelled, storage made" prepare_node
	step "CoreDNS rolled out" deploy_coredns
	step "a pod resolved a Service name" check_dns
	step "cert-manager issued a certificate" start_cert_manager
	touch "${STATE_DIR}/ready"
	UP_DONE=1
	log "local-cluster: up in $(seconds_since "${start_time}")s (state in ${STATE_DIR})"
	echo "export KUBECONFIG=$(kubeconfig_path)"
}

control_plane_up() {
	control_plane up >/dev/null
}

cmd_down() {
	[[ "$(id -u)" == 0 ]] || die "needs root"
	if [[ ! -d "${STATE_DIR}" ]]; then
		unguard_ranges
		log "local-cluster: nothing to stop (no ${STATE_DIR})"
		return 0
	fi
	[[ -f "${STATE_DIR}/${MARKER}" ]] || die "${STATE_DIR} was not made by this script; not touching it"
	take_lock $((READY_TIMEOUT_SECONDS + 60)) || log "local-cluster: ${STATE_DIR%/}.lock is held; stopping anyway"
	stop_everything
	rm -rf "${STATE_DIR}"
	rm -f "${STATE_DIR%/}.lock"
	unguard_ranges
	log "local-cluster: stopped; ${STATE_DIR} removed, routes removed"
}

cmd_kubeconfig() {
	is_running || die "no local cluster is running in ${STATE_DIR}; run hack/local-cluster.sh up"
	kubeconfig_path
}

cmd_load_image() {
	local archive="${1:-}"
	[[ -f "${archive}" ]] || die "load-image needs an image archive (got '${archive}')"
	[[ -n "$(component_pid containerd)" ]] || die "the cluster's containerd is not running; run up first"
	ctr_ images import --snapshotter overlayfs "${archive}"
}

main() {
	case "${1:-}" in
		up) cmd_up ;;
		down) cmd_down ;;
		kubeconfig) cmd_kubeconfig ;;
		load-image) cmd_load_image "${2:-}" ;;
		-h | --help | help) usage ;;
		"")
			usage >&2
			exit 2
			;;
		*) die "unknown command '$1' (see --help)" ;;
	esac
}

main "$@"
