# shellcheck shell=bash
# The container runtime of hack/local-cluster.sh: its containerd (own root,
# state, socket and configuration, no registry), the images it runs (local
# builds of hack/build-images.sh standing in for the images the chart renders,
# imported under the chart's references), and the containers and shims down
# kills. Sourced by hack/local-cluster.sh, whose settings it reads.

# ctr_ ARGS...: ctr on the cluster's containerd, in kubelet's namespace.
ctr_() {
	ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"
}

# write_containerd_config: containerd's configuration, and the CNI network:
# pods get the pod range on the bridge, and one route: the service range
# through the node (kube-proxy translates it there). No default route and no
# masquerading: nothing from a pod is meant to leave the machine.
write_containerd_config() {
	local conf_dir="${STATE_DIR}/cni/net.d" ipam_dir="${STATE_DIR}/cni/ipam"
	mkdir -p "${CONTAINERD_DIR}" "${conf_dir}" "${ipam_dir}"
	render_template "${TEMPLATES_DIR}/containerd-config.toml" \
		SANDBOX_IMAGE="$(refs_of pause | head -n1)" RUNC_BINARY="$(command -v runc)" CNI_CONF_DIR="${conf_dir}" \
		>"${CONTAINERD_DIR}/config.toml"
	render_template "${TEMPLATES_DIR}/cni.conflist" CNI_IPAM_DIR="${ipam_dir}" POD_RANGE_START="${POD_CIDR%.*}.10" \
		>"${conf_dir}/10-nvsentinel-local.conflist"
}

start_containerd() {
	write_containerd_config
	# No registry is reachable and none may be tried: every pull goes to a
	# proxy on a closed loopback port and fails there, without a DNS lookup or
	# a packet off the machine (images come from load-image).
	start_component containerd env HTTP_PROXY="${NO_REGISTRY_PROXY}" HTTPS_PROXY="${NO_REGISTRY_PROXY}" NO_PROXY= \
		http_proxy="${NO_REGISTRY_PROXY}" https_proxy="${NO_REGISTRY_PROXY}" no_proxy= \
		containerd --config "${CONTAINERD_DIR}/config.toml" --log-level warn
	wait_until containerd "its socket answering" ctr --address "${CONTAINERD_SOCK}" version
}

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
			log "${LOG_PREFIX}: image ${ref} is a LOCAL BUILD standing in for the published one ($(describe_image "${image}"))"
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
