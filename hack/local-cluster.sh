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
# Metric of the 'unreachable' guard routes: higher than the bridge's own
# route for the pod range (metric 0), which therefore wins while it exists.
GUARD_METRIC="4242"
MARKER=".nvsentinel-local-cluster"
BRIDGE_GUARD_RULE=(-i "${BRIDGE}" ! -o "${BRIDGE}" -m comment --comment "nvsentinel-local: pod traffic stays on its bridge" -j DROP)
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

Network (all of it local to this machine):
  pod range ${POD_CIDR} on bridge ${BRIDGE} (${NODE_IP} is the node's address),
  service range ${SERVICE_CIDR}. Before anything else up adds
  'unreachable' routes (metric ${GUARD_METRIC}) for both ranges, so a packet for
  them never follows the default route off the machine; the bridge's own
  route wins while the bridge exists. down removes the routes last. The API
  server listens on 127.0.0.1 only; kubelet listens on ${NODE_IP}, kube-proxy
  serves node ports on ${NODE_IP} only. Reach pods from the host through
  'kubectl port-forward' (127.0.0.1), never by dialling pod or service
  addresses.

Storage: a default StorageClass 'standard' with ${PERSISTENT_VOLUMES} local PersistentVolumes
(100Gi each, in the state directory; not provisioned on demand, not reused).
The node carries the label node-role.kubernetes.io/control-plane, as a kind
node does.

Certificates: cert-manager's controller (hack/build-tools.sh
cert-manager-controller) runs as a host process with the admin kubeconfig,
for SelfSigned and CA issuers only (no ACME, Vault or Venafi; any HTTP dial
off the machine goes to a closed loopback proxy), metrics on 127.0.0.1, no
leader election. Its webhook and cainjector do not run: nothing validates or
defaults cert-manager objects beyond their CRDs' schemas.

NetworkPolicies: kube-router (hack/build-tools.sh kube-router) runs as a host
process with the admin kubeconfig, its network policy controller only (no
routing, no service proxy, health and metrics servers off). Traffic between
pods on the bridge passes iptables (up sets
net.bridge.bridge-nf-call-iptables=1; down puts back the value it found);
down removes kube-router's iptables chains and the ${IPSET_PREFIX}* ipsets up's run
added.

Images: hack/build-images.sh builds them; up imports them tagged with the
references the chart renders, and says which are local stand-ins.

State: ${STATE_DIR}
  (containerd root, state and socket, kubelet root, pod logs, certificates,
  logs of every component in logs/).

Environment:
  NVSENTINEL_LOCAL_CLUSTER_DIR      state directory (default: .state/local-cluster)
  NVSENTINEL_LOCAL_CLUSTER_TIMEOUT  seconds to wait for each readiness step (default: 120)
  NVSENTINEL_BIN_DIR                where the binaries are (default: .bin)
  NVSENTINEL_CNI_BIN_DIR            CNI plugins (default: /usr/lib/cni)
EOF
}

LOG_PREFIX=local-cluster
# shellcheck source=hack/lib/log.sh
source "${ROOT_DIR}/hack/lib/log.sh"

CONTROL_PLANE_DIR="${STATE_DIR}/control-plane"
PKI_DIR="${STATE_DIR}/pki"
CONTAINERD_DIR="${STATE_DIR}/containerd"
CONTAINERD_SOCK="${CONTAINERD_DIR}/containerd.sock"
# shellcheck source=hack/lib/pki.sh
source "${ROOT_DIR}/hack/lib/pki.sh"

control_plane() {
	NVSENTINEL_CONTROL_PLANE_DIR="${CONTROL_PLANE_DIR}" \
		NVSENTINEL_CONTROL_PLANE_SERVICE_CIDR="${SERVICE_CIDR}" \
		NVSENTINEL_GUARD_SERVICE_RANGE=0 \
		"${ROOT_DIR}/hack/control-plane.sh" "$@"
}

pid_file() {
	echo "${STATE_DIR}/pids/$1.pid"
}

log_file() {
	echo "${STATE_DIR}/logs/$1.log"
}

kubeconfig_path() {
	echo "${CONTROL_PLANE_DIR}/kubeconfig"
}

kubectl() {
	"${BIN_DIR}/kubectl" --kubeconfig="$(kubeconfig_path)" "$@"
}

ctr_() {
	ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"
}

# component_pid NAME: the pid of a running component of this state directory.
component_pid() {
	local name="$1" pid
	[[ -f "$(pid_file "${name}")" ]] || return 0
	pid="$(cat "$(pid_file "${name}")")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 0
	if [[ -r "/proc/${pid}/cmdline" ]] && tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${STATE_DIR}/"; then
		echo "${pid}"
	fi
}

# start NAME PROGRAM ARGS...: start a component in its own session.
start() {
	local name="$1"
	shift
	setsid "$@" </dev/null >"$(log_file "${name}")" 2>&1 9>&- &
	echo "$!" >"$(pid_file "${name}")"
}

fail_component() {
	local name="$1" reason="$2"
	log "local-cluster: ${name} ${reason}; last lines of $(log_file "${name}"):"
	tail -n 40 "$(log_file "${name}")" >&2 || true
	exit 1
}

# wait_until NAME WHAT COMMAND...: poll COMMAND until it succeeds while NAME runs.
wait_until() {
	local name="$1" what="$2" deadline
	shift 2
	deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
	while ((SECONDS < deadline)); do
		# The pid, not component_pid: right after the fork the process may not
		# have exec'd its program yet.
		kill -0 "$(cat "$(pid_file "${name}")")" 2>/dev/null || fail_component "${name}" "exited"
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	fail_component "${name}" "did not get ${what} within ${READY_TIMEOUT_SECONDS}s"
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
	local file="${STATE_DIR}/baseline" key dir
	[[ -f "${file}/done" ]] && return 0
	mkdir -p "${file}"
	for key in "${SYSCTLS[@]}"; do
		[[ -r "/proc/sys/${key}" ]] && printf '%s %s\n' "${key}" "$(cat "/proc/sys/${key}")"
	done >"${file}/sysctls"
	for dir in "${HOST_DIRS[@]}"; do
		if [[ -d "${dir}" ]]; then
			echo "${dir}"
			find "${dir}" -mindepth 1 -maxdepth 1 -printf '%p\n'
		else
			echo "absent ${dir}"
		fi
	done >"${file}/paths"
	iptables_chains iptables >"${file}/iptables-chains"
	iptables_chains ip6tables >"${file}/ip6tables-chains"
	ipset list -n >"${file}/ipsets"
	touch "${file}/done"
}

# iptables_chains CMD: 'TABLE CHAIN' for every chain of CMD's tables.
iptables_chains() {
	local table
	for table in filter nat mangle raw; do
		"$1" -w -t "${table}" -S 2>/dev/null | awk -v t="${table}" '$1 == "-N" || $1 == "-P" { print t, $2 }'
	done
}

# guard_ranges: 'unreachable' routes for the pod and service ranges.
guard_ranges() {
	local cidr
	for cidr in "${POD_CIDR}" "${SERVICE_CIDR}"; do
		if ip route show "${cidr}" | grep -v "metric ${GUARD_METRIC}" | grep -v "dev ${BRIDGE}" | grep -q .; then
			die "this machine already routes ${cidr} ($(ip route show "${cidr}" | head -n1)); not starting"
		fi
		if ! ip route show "${cidr}" | grep -q "^unreachable ${cidr} .*metric ${GUARD_METRIC}"; then
			ip route add unreachable "${cidr}" metric "${GUARD_METRIC}"
			log "local-cluster: added route 'unreachable ${cidr} metric ${GUARD_METRIC}'"
		fi
	done
	touch "${STATE_DIR}/range-guards"
}

unguard_ranges() {
	local cidr
	for cidr in "${POD_CIDR}" "${SERVICE_CIDR}"; do
		ip route del unreachable "${cidr}" metric "${GUARD_METRIC}" 2>/dev/null || true
	done
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
	# is), and a rule in the mangle table's FORWARD chain drops whatever from
	# the bridge would leave through another interface. mangle comes before
	# filter, where kube-proxy's and kube-router's chains ACCEPT (established
	# or policy-compliant traffic) and kube-router keeps its jump first.
	echo 1 >"/proc/sys/net/ipv4/conf/${BRIDGE}/forwarding"
	# Frames between two pods on the bridge go through iptables' FORWARD
	# chain, where kube-router enforces NetworkPolicies (restore_sysctls puts
	# the value found back).
	echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	iptables -w -t mangle -C FORWARD "${BRIDGE_GUARD_RULE[@]}" 2>/dev/null ||
		iptables -w -t mangle -I FORWARD 1 "${BRIDGE_GUARD_RULE[@]}"
}

make_cgroup_root() {
	local hierarchy
	for hierarchy in /sys/fs/cgroup/*/; do
		[[ -f "${hierarchy}cgroup.procs" && "${hierarchy}" != */unified/ ]] || continue
		mkdir -p "${hierarchy%/}${CGROUP_ROOT}"
	done
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

write_containerd_config() {
	mkdir -p "${CONTAINERD_DIR}" "${STATE_DIR}/cni/net.d" "${STATE_DIR}/cni/ipam"
	cat >"${CONTAINERD_DIR}/config.toml" <<EOF
version = 2
root = "${CONTAINERD_DIR}/root"
state = "${CONTAINERD_DIR}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${CONTAINERD_DIR}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$(refs_of pause | head -n1)"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here (some VMs and containers): containers may not get
  # an oom_score_adj below containerd's own, or runc fails to start them.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN_DIR}"
    conf_dir = "${STATE_DIR}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${CONTAINERD_DIR}/runc"
        SystemdCgroup = false
EOF
	# Pods get the pod range on the bridge, and one route: the service range
	# through the node (kube-proxy translates it there). No default route and
	# no masquerading: nothing from a pod is meant to leave the machine.
	cat >"${STATE_DIR}/cni/net.d/10-nvsentinel-local.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "nvsentinel-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "rangeStart": "${POD_CIDR%.*}.10", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "${SERVICE_CIDR}", "gw": "${NODE_IP}"}]
      }
    }
  ]
}
EOF
}

start_containerd() {
	write_containerd_config
	# No registry is reachable and none may be tried: every pull goes to a
	# proxy on a closed loopback port and fails there, without a DNS lookup or
	# a packet off the machine (images come from load-image).
	start containerd env HTTP_PROXY="${NO_REGISTRY_PROXY}" HTTPS_PROXY="${NO_REGISTRY_PROXY}" NO_PROXY= \
		http_proxy="${NO_REGISTRY_PROXY}" https_proxy="${NO_REGISTRY_PROXY}" no_proxy= \
		containerd --config "${CONTAINERD_DIR}/config.toml" --log-level warn
	wait_until containerd "its socket answering" ctr --address "${CONTAINERD_SOCK}" version
}

# --- images -------------------------------------------------------------------

# chart_refs: 'IMAGE REF' for every image the chart renders that a local
# build stands in for (busybox -> shell, postgres -> postgresql, the store
# tools' unpublished nvsentinel-store), with the
# name containerd gives the reference.
chart_refs() {
	local values
	for values in values-postgresql.yaml values-tilt-postgresql.yaml; do
		"${BIN_DIR}/helm" template nvsentinel "${ROOT_DIR}/charts/nvsentinel" -f "${ROOT_DIR}/${values}" \
			--set storeTools.enabled=true |
			sed -n 's/^[[:space:]]*image:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p'
	done | sort -u | while read -r ref; do
		local repo="${ref%:*}" image=""
		case "${repo##*/}" in
			busybox) image=shell ;;
			postgres) image=postgresql ;;
			nvsentinel-store) image=nvsentinel-store ;;
		esac
		[[ -n "${image}" ]] || continue
		# A Docker Hub name without a namespace lives under library/.
		if [[ "${repo}" =~ ^docker\.io/[^/]+$ ]]; then
			ref="docker.io/library/${ref#docker.io/}"
		fi
		echo "${image} ${ref}"
	done
	# Named by the e2e tier's seed commands (kubectl run --image=busybox:1.36).
	echo "shell docker.io/library/busybox:1.36"
}

# refs_of IMAGE: the references IMAGE's archive carries (hack/build-images.sh
# writes them beside the archive).
refs_of() {
	local archive
	archive="$(grep -E "/$1-r[0-9]+\.tar\$" "${STATE_DIR}/image-archives")"
	cat "${archive}.refs"
}

build_images() {
	chart_refs >"${STATE_DIR}/image-refs"
	"${ROOT_DIR}/hack/build-images.sh" --refs-file "${STATE_DIR}/image-refs" pause shell postgresql coredns nvsentinel-store \
		>"${STATE_DIR}/image-archives"
}

import_images() {
	local archive image
	while read -r archive; do
		ctr_ images import --snapshotter overlayfs "${archive}" >/dev/null
	done <"${STATE_DIR}/image-archives"
	for image in shell postgresql nvsentinel-store; do
		refs_of "${image}" | while read -r ref; do
			log "local-cluster: image ${ref} is a LOCAL BUILD standing in for the published one ($(describe_image "${image}"))"
		done
	done
}

describe_image() {
	case "$1" in
		shell) echo "Debian busybox-static" ;;
		postgresql) echo "Debian bookworm postgresql-15: PostgreSQL 15, not the tag's version" ;;
		nvsentinel-store) echo "this checkout's nvsentinel_store on Debian bookworm python3; not published anywhere" ;;
	esac
}

# --- node components ----------------------------------------------------------

write_kubelet_config() {
	local dir="${STATE_DIR}/kubelet"
	mkdir -p "${dir}/root" "${STATE_DIR}/pod-logs" "${dir}/volume-plugins"
	write_kubeconfig "${dir}/kubeconfig" "$(api_server_url)" kubelet
	: >"${dir}/resolv.conf"
	cat >"${dir}/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $(pki ca.crt)
authorization:
  mode: Webhook
tlsCertFile: $(pki kubelet-serving.crt)
tlsPrivateKeyFile: $(pki kubelet-serving.key)
cgroupDriver: cgroupfs
cgroupRoot: ${CGROUP_ROOT}
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
clusterDomain: cluster.local
clusterDNS: [${DNS_IP}]
resolvConf: ${dir}/resolv.conf
failSwapOn: false
podLogsDir: ${STATE_DIR}/pod-logs
volumePluginDir: ${dir}/volume-plugins
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
registerNode: true
# Pods see a changed Secret (a renewed certificate) at the next sync: 15s
# rather than the default minute, so the rotation tests wait less.
syncFrequency: 15s
EOF
}

start_kubelet() {
	write_kubelet_config
	start kubelet "${BIN_DIR}/kubelet" \
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
	start kube-scheduler "${BIN_DIR}/kube-scheduler" \
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
	cat >"${STATE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: ${NODE_NAME}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:${PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
clusterCIDR: ${POD_CIDR}
nodePortAddresses: ["${NODE_IP}/32"]
clientConnection:
  kubeconfig: ${STATE_DIR}/kube-proxy.kubeconfig
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
	start kube-proxy "${BIN_DIR}/kube-proxy" --config="${STATE_DIR}/kube-proxy.yaml"
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
	start kube-router "${BIN_DIR}/kube-router" \
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
# kube-dns Service (${DNS_IP}). The API server listens on 127.0.0.1 only, which
# a pod's network namespace cannot reach, so CoreDNS runs in the node's
# network namespace (hostNetwork) with a kubeconfig of its own, answering on
# the node address ${NODE_IP}:53 only; it serves cluster.local and forwards
# nothing (no name outside the cluster resolves).
coredns_manifests() {
	local kubeconfig
	write_kubeconfig "${STATE_DIR}/coredns.kubeconfig" "$(api_server_url)" coredns
	kubeconfig="$(base64 -w0 <"${STATE_DIR}/coredns.kubeconfig")"
	cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: nvsentinel-local:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: nvsentinel-local:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: nvsentinel-local:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: nvsentinel-local:coredns
---
apiVersion: v1
kind: Secret
metadata:
  name: coredns-kubeconfig
  namespace: kube-system
data:
  kubeconfig: ${kubeconfig}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {
        bind ${NODE_IP}
        errors
        health 127.0.0.1:${COREDNS_HEALTH_PORT}
        ready 127.0.0.1:${COREDNS_READY_PORT}
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            kubeconfig /etc/coredns/kubeconfig/kubeconfig nvsentinel-local
            pods insecure
        }
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  replicas: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      hostNetwork: true
      dnsPolicy: Default
      containers:
      - name: coredns
        image: $(refs_of coredns | head -n1)
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        readinessProbe:
          httpGet:
            host: 127.0.0.1
            port: ${COREDNS_READY_PORT}
            path: /ready
          periodSeconds: 2
        livenessProbe:
          httpGet:
            host: 127.0.0.1
            port: ${COREDNS_HEALTH_PORT}
            path: /health
        volumeMounts:
        - name: config
          mountPath: /etc/coredns
        - name: kubeconfig
          mountPath: /etc/coredns/kubeconfig
      volumes:
      - name: config
        configMap:
          name: coredns
      - name: kubeconfig
        secret:
          secretName: coredns-kubeconfig
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  clusterIP: ${DNS_IP}
  selector:
    k8s-app: kube-dns
  ports:
  - name: dns
    port: 53
    protocol: UDP
  - name: dns-tcp
    port: 53
    protocol: TCP
EOF
}

# storage_manifests: a default StorageClass 'standard' backed by local
# PersistentVolumes in the state directory (no provisioner: up makes
# ${PERSISTENT_VOLUMES} of them; a released one is not reused).
storage_manifests() {
	local i
	cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
	for ((i = 1; i <= PERSISTENT_VOLUMES; i++)); do
		mkdir -p "${STATE_DIR}/volumes/pv${i}"
		cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: ${NODE_NAME}-pv${i}
spec:
  capacity:
    storage: 100Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  local:
    path: ${STATE_DIR}/volumes/pv${i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [${NODE_NAME}]
EOF
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

# cert_manager_check_manifests: a SelfSigned Issuer and a Certificate it signs,
# in kube-system; up deletes them (and the Secret) once the Certificate is Ready.
cert_manager_check_manifests() {
	cat <<EOF
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: ${CERT_MANAGER_CHECK}
  namespace: kube-system
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: ${CERT_MANAGER_CHECK}
  namespace: kube-system
spec:
  secretName: ${CERT_MANAGER_CHECK}
  commonName: ${CERT_MANAGER_CHECK}
  duration: 1h
  privateKey:
    algorithm: ECDSA
    size: 256
  issuerRef:
    kind: Issuer
    name: ${CERT_MANAGER_CHECK}
EOF
}

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
	start cert-manager env HTTP_PROXY="${NO_REGISTRY_PROXY}" HTTPS_PROXY="${NO_REGISTRY_PROXY}" NO_PROXY= \
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
	cert_manager_check_manifests | kubectl apply --server-side --field-manager=nvsentinel-local-cluster -f - >/dev/null
	wait_until cert-manager "a SelfSigned certificate issued" cert_manager_issued
	kubectl -n kube-system delete --ignore-not-found "certificate/${CERT_MANAGER_CHECK}" \
		"issuer/${CERT_MANAGER_CHECK}" "secret/${CERT_MANAGER_CHECK}" >/dev/null
}

# --- down ---------------------------------------------------------------------

# stop_component NAME: TERM, then KILL after 10s.
stop_component() {
	local pid i
	pid="$(component_pid "$1")"
	rm -f "$(pid_file "$1")"
	[[ -n "${pid}" ]] || return 0
	kill -TERM "${pid}" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		[[ -d "/proc/${pid}" ]] || return 0
		sleep 0.1
	done
	kill -KILL "${pid}" 2>/dev/null || true
}

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

# kill_containers: whatever kubelet left running, killed through containerd.
kill_containers() {
	local id
	[[ -n "$(component_pid containerd)" ]] || return 0
	for id in $(ctr_ tasks ls -q 2>/dev/null); do
		ctr_ tasks kill --signal SIGKILL "${id}" >/dev/null 2>&1 || true
	done
	sleep 1
	for id in $(ctr_ tasks ls -q 2>/dev/null); do
		ctr_ tasks delete --force "${id}" >/dev/null 2>&1 || true
	done
}

# kill_shims: runtime shims of this containerd (they outlive it by design).
kill_shims() {
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address ${CONTAINERD_SOCK}" || true); do
		pkill -KILL --parent "${pid}" 2>/dev/null || true
		kill -KILL "${pid}" 2>/dev/null || true
	done
}

# unmount_under PREFIX: unmount every mount at or below PREFIX, deepest first.
unmount_under() {
	local prefix="$1" mountpoint
	while read -r mountpoint; do
		umount "${mountpoint}" 2>/dev/null || umount -l "${mountpoint}" 2>/dev/null || true
	done < <(awk -v p="${prefix}" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

# remove_host_entries: entries up's run added to machine-wide directories.
remove_host_entries() {
	local paths="${STATE_DIR}/baseline/paths" dir entry
	[[ -f "${paths}" ]] || return 0
	for dir in "${HOST_DIRS[@]}"; do
		if grep -qxF "absent ${dir}" "${paths}"; then
			[[ -e "${dir}" ]] || continue
			unmount_under "${dir}/"
			rm -rf "${dir}"
			continue
		fi
		[[ -d "${dir}" ]] || continue
		while read -r entry; do
			grep -qxF "${entry}" "${paths}" && continue
			unmount_under "${entry}"
			rm -rf "${entry}"
		done < <(find "${dir}" -mindepth 1 -maxdepth 1 -printf '%p\n')
	done
}

restore_sysctls() {
	local file="${STATE_DIR}/baseline/sysctls" key value
	[[ -f "${file}" ]] || return 0
	while read -r key value; do
		[[ "$(cat "/proc/sys/${key}" 2>/dev/null)" == "${value}" ]] && continue
		echo "${value}" >"/proc/sys/${key}" 2>/dev/null || log "local-cluster: could not restore ${key}=${value}"
	done <"${file}"
}

# remove_chains CMD: delete chains of CMD's tables that up's run added, and
# the rules of the other chains that jump to them.
remove_chains() {
	local cmd="$1" baseline="${STATE_DIR}/baseline/$1-chains" table chain entry n rules=() new=()
	[[ -f "${baseline}" ]] || return 0
	while read -r table chain; do
		grep -qxF "${table} ${chain}" "${baseline}" || new+=("${table} ${chain}")
	done < <(iptables_chains "${cmd}")
	((${#new[@]} > 0)) || return 0
	# Rules are deleted by number, last first: a rule as -S prints it may
	# carry a quoted comment (kube-router's do), which does not survive word
	# splitting. The new chains themselves are flushed below.
	while read -r table chain; do
		mapfile -t rules < <("${cmd}" -w -t "${table}" -S "${chain}" 2>/dev/null | tail -n +2)
		for ((n = ${#rules[@]}; n >= 1; n--)); do
			for entry in "${new[@]}"; do
				[[ "${entry%% *}" == "${table}" && "${rules[n - 1]} " == *" -j ${entry#* } "* ]] || continue
				"${cmd}" -w -t "${table}" -D "${chain}" "${n}" 2>/dev/null || true
				break
			done
		done
	done <"${baseline}"
	for entry in "${new[@]}"; do
		read -r table chain <<<"${entry}"
		"${cmd}" -w -t "${table}" -F "${chain}" 2>/dev/null || true
	done
	for entry in "${new[@]}"; do
		read -r table chain <<<"${entry}"
		"${cmd}" -w -t "${table}" -X "${chain}" 2>/dev/null || true
	done
}

# remove_ipsets: the ${IPSET_PREFIX}* sets up's run added (kube-router's), once no
# iptables rule refers to them (remove_chains first).
remove_ipsets() {
	local baseline="${STATE_DIR}/baseline/ipsets" name
	[[ -f "${baseline}" ]] && command -v ipset >/dev/null || return 0
	while read -r name; do
		[[ "${name}" == "${IPSET_PREFIX}"* || "${name}" == "inet6:${IPSET_PREFIX}"* ]] || continue
		grep -qxF "${name}" "${baseline}" && continue
		ipset destroy "${name}" 2>/dev/null || log "local-cluster: could not destroy ipset ${name}"
	done < <(ipset list -n)
}

remove_network() {
	local link table
	# filter: where a cluster started by an older version of this script put it.
	for table in mangle filter; do
		while iptables -w -t "${table}" -C FORWARD "${BRIDGE_GUARD_RULE[@]}" 2>/dev/null; do
			iptables -w -t "${table}" -D FORWARD "${BRIDGE_GUARD_RULE[@]}"
		done
	done
	if [[ -f "${STATE_DIR}/bridge" ]] && ip link show "${BRIDGE}" >/dev/null 2>&1; then
		for link in $(ip -o link show master "${BRIDGE}" | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
			ip link del "${link}" 2>/dev/null || true
		done
		ip link del "${BRIDGE}"
	fi
}

remove_cgroups() {
	local hierarchy
	for hierarchy in /sys/fs/cgroup/*/; do
		[[ -d "${hierarchy%/}${CGROUP_ROOT}" ]] || continue
		find "${hierarchy%/}${CGROUP_ROOT}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
}

stop_everything() {
	# Without a scheduler, the pods controllers make again stay Pending.
	stop_component kube-scheduler
	stop_component cert-manager
	stop_component kube-router
	remove_pods
	stop_component kube-proxy
	stop_component kubelet
	kill_containers
	stop_component containerd
	kill_shims
	if [[ -f "${STATE_DIR}/baseline/done" ]]; then
		"${BIN_DIR}/kube-proxy" --cleanup >/dev/null 2>&1 || true
		remove_chains iptables
		remove_chains ip6tables
		remove_ipsets
	fi
	unmount_under "${STATE_DIR}/"
	remove_host_entries
	remove_network
	remove_cgroups
	restore_sysctls
	[[ -d "${CONTROL_PLANE_DIR}" ]] && control_plane down 2>/dev/null
	return 0
}

# --- commands -----------------------------------------------------------------

take_lock() {
	mkdir -p "$(dirname "${STATE_DIR}")"
	exec 9>"${STATE_DIR%/}.lock"
	flock -w $((READY_TIMEOUT_SECONDS + 60)) 9
}

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
	take_lock || die "another hack/local-cluster.sh holds ${STATE_DIR%/}.lock"
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
	make_cgroup_root
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
	take_lock || log "local-cluster: ${STATE_DIR%/}.lock is held; stopping anyway"
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
