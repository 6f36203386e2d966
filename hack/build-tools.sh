#!/usr/bin/env bash
# Builds the Go-based tools this repository uses into .bin/, each at a pinned
# version, from the Go module proxy. Built binaries are kept in a cache outside
# the checkout, keyed by tool and version, so a fresh clone on the same machine
# copies them instead of building again.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${ROOT_DIR}/hack/tools"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
CACHE_DIR="${NVSENTINEL_TOOLS_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/nvsentinel-tools}"
STAMP_DIR="${BIN_DIR}/.versions"

# Versions built by `go install module@version` are pinned in
# hack/versions.env; the others by the require line of their wrapper module
# under hack/tools/.
# shellcheck source=hack/lib/versions.sh
source "${ROOT_DIR}/hack/lib/versions.sh"

ALL_TOOLS=(helm helm3 kube-apiserver kube-controller-manager kubectl kube-scheduler kube-proxy kubelet etcd kind tilt coredns
	cert-manager-controller kube-router shfmt)

usage() {
	cat <<EOF
Usage: hack/build-tools.sh [--help] [TOOL...]

Builds the Go tools into .bin/ at pinned versions (all of them when no TOOL is
named). A tool whose pinned version is already in .bin/ is skipped; one found
in the build cache is copied instead of being built again.

Tools:
  helm                     helm.sh/helm/v4 ${HELM_VERSION}
  helm3                    helm.sh/helm/v3 ${HELM3_VERSION}
  kube-apiserver           k8s.io/kubernetes $(wrapper_version kubernetes k8s.io/kubernetes) (hack/tools/kubernetes)
  kube-controller-manager  same module
  kubectl                  same module
  kube-scheduler           same module
  kube-proxy               same module
  kubelet                  same module
  etcd                     go.etcd.io/etcd/server/v3 $(wrapper_version etcd go.etcd.io/etcd/server/v3) (hack/tools/etcd)
  kind                     sigs.k8s.io/kind ${KIND_VERSION}
  tilt                     github.com/tilt-dev/tilt $(wrapper_version tilt github.com/tilt-dev/tilt) (hack/tools/tilt)
  coredns                  github.com/coredns/coredns ${COREDNS_VERSION} (DNS of hack/local-cluster.sh)
  cert-manager-controller  github.com/cert-manager/cert-manager $(cert_manager_controller_version) (hack/tools/cert-manager;
                           cmd/controller, the certificates of hack/local-cluster.sh)
  kube-router              github.com/cloudnativelabs/kube-router/v2 ${KUBE_ROUTER_VERSION} (NetworkPolicies of
                           hack/local-cluster.sh; its firewall only)
  shfmt                    mvdan.cc/sh/v3 ${SHFMT_VERSION} (cmd/shfmt, the shell formatter of hack/lint.sh)

Versions: hack/versions.env, and the go.mod of each wrapper module.

Environment:
  NVSENTINEL_BIN_DIR       where binaries go (default: .bin/ in the checkout)
  NVSENTINEL_TOOLS_CACHE   built-binary cache (default: \${XDG_CACHE_HOME:-~/.cache}/nvsentinel-tools)

Builds run one after another; concurrent runs of this script are safe (each
tool's cache entry is built under a lock and moved into place whole). Needs go
and, for tilt (cgo: tree-sitter), a C compiler. The cache is keyed by tool and
version only: after changing how a tool is built, remove its cache entry
(<cache>/TOOL-VERSION) and .bin/.versions/TOOL.
EOF
}

log() {
	printf '%s\n' "$*" >&2
}

die() {
	log "build-tools: $*"
	exit 1
}

tool_version() {
	case "$1" in
		helm) echo "${HELM_VERSION}" ;;
		helm3) echo "${HELM3_VERSION}" ;;
		kube-apiserver | kube-controller-manager | kubectl | kube-scheduler | kube-proxy | kubelet) wrapper_version kubernetes k8s.io/kubernetes ;;
		etcd) wrapper_version etcd go.etcd.io/etcd/server/v3 ;;
		kind) echo "${KIND_VERSION}" ;;
		tilt) wrapper_version tilt github.com/tilt-dev/tilt ;;
		coredns) echo "${COREDNS_VERSION}" ;;
		cert-manager-controller) cert_manager_controller_version ;;
		kube-router) echo "${KUBE_ROUTER_VERSION}" ;;
		shfmt) echo "${SHFMT_VERSION}" ;;
		*) return 1 ;;
	esac
}

now() {
	date +%s.%N
}

elapsed_since() {
	awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'
}

build_date() {
	date -u +%Y-%m-%dT%H:%M:%SZ
}

# module_file MODULE@VERSION FIELD [WRAPPER]: a field (Dir, GoMod, Info) of a
# module downloaded into the module cache; inside a wrapper module its go.sum
# vouches for the download.
module_file() {
	local field="$2" dir="${TOOLS_DIR}"
	[[ -n "${3:-}" ]] && dir="${TOOLS_DIR}/$3"
	(cd "${dir}" && go mod download -json "$1") |
		sed -n "s/^\t\"${field}\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# origin_commit MODULE@VERSION [WRAPPER]: the VCS commit the module proxy
# recorded for the version, or "unknown" when the proxy did not record one.
origin_commit() {
	local info hash
	info="$(module_file "$1" Info "${2:-}")"
	hash="$(sed -n 's/.*"Hash":"\([0-9a-f]\{40\}\)".*/\1/p' "${info}")"
	echo "${hash:-unknown}"
}

# go_install_into DIR LDFLAGS PACKAGE@VERSION: `go install` a pinned command into DIR.
go_install_into() {
	GOBIN="$1" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-}" go install -trimpath -ldflags "$2" "$3"
}

# go_build_wrapper WRAPPER OUT LDFLAGS PACKAGE: build PACKAGE in a wrapper module.
go_build_wrapper() {
	(cd "${TOOLS_DIR}/$1" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$3" -o "$2" "$4")
}

build_helm() {
	local out="$1" version="$2" ldflags
	ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=${version}"
	ldflags+=" -X helm.sh/helm/v4/internal/version.gitCommit=$(origin_commit "helm.sh/helm/v4@${version}")"
	ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
	go_install_into "${out}" "${ldflags}" "helm.sh/helm/v4/cmd/helm@${version}"
}

build_helm3() {
	local out="$1" version="$2" gomod client_go major minor ldflags
	# Helm 3's Makefile derives its default Kubernetes version (used for
	# .Capabilities.KubeVersion and lint) from its client-go requirement.
	gomod="$(module_file "helm.sh/helm/v3@${version}" GoMod)"
	client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${gomod}")"
	[[ "${client_go}" =~ ^v0\.([0-9]+)\. ]] || die "cannot read client-go version from ${gomod}"
	major=1
	minor="${BASH_REMATCH[1]}"
	ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version}"
	ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$(origin_commit "helm.sh/helm/v3@${version}")"
	ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${major}"
	ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}"
	ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${major}"
	ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
	go_install_into "${out}" "${ldflags}" "helm.sh/helm/v3/cmd/helm@${version}"
	mv "${out}/helm" "${out}/helm3"
}

build_kubernetes_command() {
	local tool="$1" out="$2" version="$3" ldflags pkg commit
	[[ "${version}" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected Kubernetes version ${version}"
	commit="$(origin_commit "k8s.io/kubernetes@${version}" kubernetes)"
	ldflags="-s -w"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X ${pkg}.gitVersion=${version}"
		ldflags+=" -X ${pkg}.gitMajor=${BASH_REMATCH[1]}"
		ldflags+=" -X ${pkg}.gitMinor=${BASH_REMATCH[2]}"
		ldflags+=" -X ${pkg}.gitCommit=${commit}"
		ldflags+=" -X ${pkg}.gitTreeState=clean"
		ldflags+=" -X ${pkg}.buildDate=$(build_date)"
	done
	go_build_wrapper kubernetes "${out}/${tool}" "${ldflags}" "k8s.io/kubernetes/cmd/${tool}"
}

build_etcd() {
	local out="$1" version="$2" ldflags
	ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$(origin_commit "go.etcd.io/etcd/server/v3@${version}" etcd)"
	go_build_wrapper etcd "${out}/etcd" "${ldflags}" .
}

build_kind() {
	local out="$1" version="$2"
	go_install_into "${out}" "-s -w" "sigs.k8s.io/kind@${version}"
}

build_coredns() {
	local out="$1" version="$2" ldflags
	ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$(origin_commit "github.com/coredns/coredns@${version}")"
	go_install_into "${out}" "${ldflags}" "github.com/coredns/coredns@${version}"
}

# cert-manager's controller only: its webhook and cainjector are not needed
# where it runs (hack/local-cluster.sh). The version ldflags are those of
# cert-manager's Makefile (GOLDFLAGS).
build_cert_manager_controller() {
	local out="$1" version="$2" ldflags
	ldflags="-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=${version}"
	ldflags+=" -X github.com/cert-manager/cert-manager/pkg/util.AppGitCommit=$(origin_commit "github.com/cert-manager/cert-manager@${version}" cert-manager)"
	go_build_wrapper cert-manager "${out}/cert-manager-controller" "${ldflags}" github.com/cert-manager/cert-manager/cmd/controller
}

# kube-router: the version ldflags of its Makefile (Version is the git
# describe there; the release tag here).
build_kube_router() {
	local out="$1" version="$2" ldflags pkg="github.com/cloudnativelabs/kube-router/v2/pkg/version"
	ldflags="-s -w -X ${pkg}.Version=${version} -X ${pkg}.BuildDate=$(build_date)"
	go_install_into "${out}" "${ldflags}" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@${version}"
}

# shfmt reports the module version go install records (debug.ReadBuildInfo).
build_shfmt() {
	local out="$1" version="$2"
	go_install_into "${out}" "-s -w" "mvdan.cc/sh/v3/cmd/shfmt@${version}"
}

build_tilt() {
	local out="$1" version="$2" ldflags src work
	# tilt embeds its web UI from pkg/assets/build, but the module does not
	# hold the built bundle, and without it `tilt up`/`tilt ci` refuse to run.
	# So tilt is built from a writable copy of the module (outside the
	# checkout, removed afterwards) given a placeholder index page, through a
	# temporary copy of the wrapper's go.mod that points at the copy.
	src="$(module_file "github.com/tilt-dev/tilt@${version}" Dir tilt)"
	work="${out}/.src"
	mkdir -p "${work}"
	cp -R "${src}" "${work}/tilt"
	chmod -R u+w "${work}/tilt"
	cp "${TOOLS_DIR}/tilt/web-placeholder/index.html" "${work}/tilt/pkg/assets/build/index.html"
	cp "${TOOLS_DIR}/tilt/go.mod" "${work}/go.mod"
	cp "${TOOLS_DIR}/tilt/go.sum" "${work}/go.sum"
	printf '\nreplace github.com/tilt-dev/tilt => %s\n' "${work}/tilt" >>"${work}/go.mod"
	ldflags="-s -w -X main.version=${version#v} -X main.date=$(build_date)"
	ldflags+=" -X github.com/tilt-dev/tilt/internal/cli.commitSHA=$(origin_commit "github.com/tilt-dev/tilt@${version}" tilt)"
	# Tiltfile parsing uses tree-sitter, a C library: tilt needs cgo (a C compiler).
	(cd "${TOOLS_DIR}/tilt" && CGO_ENABLED=1 go build -modfile="${work}/go.mod" -mod=readonly \
		-trimpath -ldflags "${ldflags}" -o "${out}/tilt" github.com/tilt-dev/tilt/cmd/tilt)
	rm -rf "${work}"
}

# build_into_cache TOOL VERSION: build TOOL into its cache entry unless there.
build_into_cache() {
	local tool="$1" version="$2" entry="${CACHE_DIR}/$1-$2" tmp
	[[ -x "${entry}/${tool}" ]] && return 0
	tmp="$(mktemp -d "${CACHE_DIR}/.build-${tool}.XXXXXX")"
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '${tmp}'" EXIT
	case "${tool}" in
		helm) build_helm "${tmp}" "${version}" ;;
		helm3) build_helm3 "${tmp}" "${version}" ;;
		kube-apiserver | kube-controller-manager | kubectl | kube-scheduler | kube-proxy | kubelet) build_kubernetes_command "${tool}" "${tmp}" "${version}" ;;
		etcd) build_etcd "${tmp}" "${version}" ;;
		kind) build_kind "${tmp}" "${version}" ;;
		tilt) build_tilt "${tmp}" "${version}" ;;
		coredns) build_coredns "${tmp}" "${version}" ;;
		cert-manager-controller) build_cert_manager_controller "${tmp}" "${version}" ;;
		kube-router) build_kube_router "${tmp}" "${version}" ;;
		shfmt) build_shfmt "${tmp}" "${version}" ;;
	esac
	[[ -x "${tmp}/${tool}" ]] || die "${tool} ${version}: the build produced no ${tool} binary"
	rm -rf "${entry}"
	mv "${tmp}" "${entry}"
	trap - EXIT
}

# install_from_cache TOOL VERSION: copy the cached binary into .bin/ atomically.
install_from_cache() {
	local tool="$1" version="$2"
	cp "${CACHE_DIR}/${tool}-${version}/${tool}" "${BIN_DIR}/.${tool}.tmp.$$"
	mv -f "${BIN_DIR}/.${tool}.tmp.$$" "${BIN_DIR}/${tool}"
	echo "${version}" >"${STAMP_DIR}/${tool}"
}

ensure_tool() {
	local tool="$1" version start how
	version="$(tool_version "${tool}")" || die "unknown tool '${tool}' (see --help)"
	[[ -n "${version}" ]] || die "no pinned version found for ${tool}"
	start="$(now)"
	if [[ -x "${BIN_DIR}/${tool}" && "$(cat "${STAMP_DIR}/${tool}" 2>/dev/null)" == "${version}" ]]; then
		how="skipped (already in .bin)"
	else
		(
			# One builder per tool at a time, across concurrent runs.
			exec 9>"${CACHE_DIR}/.${tool}.lock"
			flock 9
			if [[ -x "${CACHE_DIR}/${tool}-${version}/${tool}" ]]; then
				echo cached >"${CACHE_DIR}/.${tool}.how.$$"
			else
				log "==> ${tool} ${version}: building"
				build_into_cache "${tool}" "${version}"
				echo built >"${CACHE_DIR}/.${tool}.how.$$"
			fi
		)
		how="$(cat "${CACHE_DIR}/.${tool}.how.$$")"
		rm -f "${CACHE_DIR}/.${tool}.how.$$"
		install_from_cache "${tool}" "${version}"
		[[ "${how}" == cached ]] && how="copied from cache"
	fi
	log "==> ${tool} ${version}: ${how} in $(elapsed_since "${start}")s"
}

main() {
	local tools=() arg tool
	for arg in "$@"; do
		case "${arg}" in
			-h | --help)
				usage
				return 0
				;;
			-*) die "unknown option ${arg} (see --help)" ;;
			*) tools+=("${arg}") ;;
		esac
	done
	((${#tools[@]} > 0)) || tools=("${ALL_TOOLS[@]}")
	for tool in "${tools[@]}"; do
		tool_version "${tool}" >/dev/null || die "unknown tool '${tool}' (see --help)"
	done
	command -v go >/dev/null || die "go is not on PATH"
	mkdir -p "${BIN_DIR}" "${STAMP_DIR}" "${CACHE_DIR}"
	for tool in "${tools[@]}"; do
		ensure_tool "${tool}"
	done
}

main "$@"
