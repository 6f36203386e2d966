#!/usr/bin/env bash
# Builds tests/nvsentinel_client, a Go program that runs NVIDIA NVSentinel's own
# store-client operations against PostgreSQL, into .bin/nvsentinel-client-check.
# It is built against a source snapshot of NVSentinel's Go modules that lives
# outside this repository, so the module is copied to a temporary directory and
# its replace directives pointed at the snapshot there. Built binaries are
# cached outside the checkout, keyed by the hash of our sources and the
# snapshot's, the way hack/build-tools.sh caches the tools.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="${ROOT_DIR}/hack/$(basename "${BASH_SOURCE[0]}")"
SOURCE_DIR="${ROOT_DIR}/tests/nvsentinel_client"
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"
CACHE_DIR="${NVSENTINEL_TOOLS_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/nvsentinel-tools}"
STAMP_DIR="${BIN_DIR}/.versions"
TOOL="nvsentinel-client-check"
MODULE_PREFIX="github.com/nvidia/nvsentinel"
MODULES=(store-client commons data-models)

usage() {
	cat <<EOF
Usage: hack/build-nvsentinel-client.sh [--help] [--vet]

Builds tests/nvsentinel_client into .bin/${TOOL} against a snapshot of
NVSentinel's Go modules (${MODULES[*]}). Nothing is built when .bin/ already
holds the binary of the current sources; a binary found in the build cache is
copied instead of being built again.

  --vet    check instead of building: gofmt finds nothing to change and
           go vet passes (against the same snapshot)

The snapshot is the first of:
  \$NVSENTINEL_SOURCE                       (when set, it must be a snapshot)
  <repo>/../shared/third_party/nvsentinel
  /work/shared/third_party/nvsentinel
A snapshot is a directory holding store-client/, commons/ and data-models/,
each with its go.mod.

Environment:
  NVSENTINEL_SOURCE        the snapshot (see above)
  NVSENTINEL_BIN_DIR       where the binary goes (default: .bin/ in the checkout)
  NVSENTINEL_TOOLS_CACHE   built-binary cache (default: \${XDG_CACHE_HOME:-~/.cache}/nvsentinel-tools)

The cache entry is <cache>/${TOOL}-<sha256>, the hash covering
tests/nvsentinel_client (go.mod, go.sum, *.go), this script, the snapshot's
go.mod, go.sum and *.go files and the Go version. Concurrent runs are safe: the
entry is built under a lock and moved into place whole. Needs go on PATH and
the Go module proxy for the first build.
EOF
}

log() {
	printf '%s\n' "$*" >&2
}

die() {
	log "build-nvsentinel-client: $*"
	exit 1
}

now() {
	date +%s.%N
}

elapsed_since() {
	awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'
}

is_snapshot() {
	local dir="$1" module
	for module in "${MODULES[@]}"; do
		[[ -f "${dir}/${module}/go.mod" ]] || return 1
	done
}

# find_snapshot: the snapshot directory, absolute, on stdout.
find_snapshot() {
	local candidate
	if [[ -n "${NVSENTINEL_SOURCE:-}" ]]; then
		is_snapshot "${NVSENTINEL_SOURCE}" ||
			die "NVSENTINEL_SOURCE=${NVSENTINEL_SOURCE} is not an NVSentinel snapshot (it needs $(snapshot_layout))"
		(cd "${NVSENTINEL_SOURCE}" && pwd)
		return
	fi
	for candidate in "${ROOT_DIR}/../shared/third_party/nvsentinel" /work/shared/third_party/nvsentinel; do
		if is_snapshot "${candidate}"; then
			(cd "${candidate}" && pwd)
			return
		fi
	done
	die "no NVSentinel snapshot found: NVSENTINEL_SOURCE is not set, and neither" \
		"${ROOT_DIR}/../shared/third_party/nvsentinel nor /work/shared/third_party/nvsentinel" \
		"holds $(snapshot_layout). Set NVSENTINEL_SOURCE to the snapshot directory."
}

snapshot_layout() {
	local module parts=()
	for module in "${MODULES[@]}"; do
		parts+=("${module}/go.mod")
	done
	echo "${parts[*]}"
}

# file_hashes DIR FIND-ARGS...: "sha256  relative/path" for the files find selects, sorted by path.
file_hashes() {
	local dir="$1"
	shift
	(cd "${dir}" && find "$@" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
		LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

# source_hash SNAPSHOT: the cache key of the binary built from these sources.
source_hash() {
	{
		echo "go $(go env GOVERSION)"
		echo "script $(sha256sum <"${SCRIPT}")"
		file_hashes "${SOURCE_DIR}" . -maxdepth 1
		file_hashes "$1" "${MODULES[@]}"
	} | sha256sum | cut -d' ' -f1
}

# prepare_module SNAPSHOT DIR: a copy of our module in DIR using the snapshot's modules.
prepare_module() {
	local snapshot="$1" dir="$2" module declared replaces=()
	for module in "${MODULES[@]}"; do
		declared="$(awk '$1 == "module" { print $2; exit }' "${snapshot}/${module}/go.mod")"
		[[ "${declared}" == "${MODULE_PREFIX}/${module}" ]] ||
			die "${snapshot}/${module}/go.mod declares module '${declared}', expected ${MODULE_PREFIX}/${module}"
		replaces+=(-replace "${MODULE_PREFIX}/${module}=${snapshot}/${module}")
	done
	mkdir -p "${dir}"
	cp "${SOURCE_DIR}/go.mod" "${SOURCE_DIR}/go.sum" "${SOURCE_DIR}"/*.go "${dir}/"
	(cd "${dir}" && go mod edit "${replaces[@]}")
}

# build_into_cache SNAPSHOT ENTRY: build the binary into its cache entry unless there.
build_into_cache() {
	local snapshot="$1" entry="$2" tmp
	[[ -x "${entry}/${TOOL}" ]] && return 0
	tmp="$(mktemp -d "${CACHE_DIR}/.build-${TOOL}.XXXXXX")"
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '${tmp}'" EXIT
	prepare_module "${snapshot}" "${tmp}/src"
	(cd "${tmp}/src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "${tmp}/${TOOL}" .)
	[[ -x "${tmp}/${TOOL}" ]] || die "the build produced no ${TOOL} binary"
	rm -rf "${tmp}/src" "${entry}"
	mv "${tmp}" "${entry}"
	trap - EXIT
}

# install_from_cache ENTRY HASH: copy the cached binary into .bin/ atomically.
install_from_cache() {
	local entry="$1" hash="$2"
	cp "${entry}/${TOOL}" "${BIN_DIR}/.${TOOL}.tmp.$$"
	mv -f "${BIN_DIR}/.${TOOL}.tmp.$$" "${BIN_DIR}/${TOOL}"
	echo "${hash}" >"${STAMP_DIR}/${TOOL}"
}

ensure_binary() {
	local snapshot="$1" hash entry start how
	start="$(now)"
	hash="$(source_hash "${snapshot}")"
	entry="${CACHE_DIR}/${TOOL}-${hash}"
	if [[ -x "${BIN_DIR}/${TOOL}" && "$(cat "${STAMP_DIR}/${TOOL}" 2>/dev/null)" == "${hash}" ]]; then
		how="skipped (already in .bin)"
	else
		(
			# One builder per source hash at a time, across concurrent runs.
			exec 9>"${CACHE_DIR}/.${TOOL}.lock"
			flock 9
			if [[ -x "${entry}/${TOOL}" ]]; then
				echo cached >"${CACHE_DIR}/.${TOOL}.how.$$"
			else
				log "==> ${TOOL} ${hash:0:12}: building against ${snapshot}"
				build_into_cache "${snapshot}" "${entry}"
				echo built >"${CACHE_DIR}/.${TOOL}.how.$$"
			fi
		)
		how="$(cat "${CACHE_DIR}/.${TOOL}.how.$$")"
		rm -f "${CACHE_DIR}/.${TOOL}.how.$$"
		install_from_cache "${entry}" "${hash}"
		[[ "${how}" == cached ]] && how="copied from cache"
	fi
	log "==> ${TOOL} ${hash:0:12}: ${how} in $(elapsed_since "${start}")s"
}

vet_sources() {
	local snapshot="$1" tmp unformatted
	unformatted="$(gofmt -l "${SOURCE_DIR}")"
	[[ -z "${unformatted}" ]] || die "gofmt would change: ${unformatted}"
	tmp="$(mktemp -d)"
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '${tmp}'" EXIT
	prepare_module "${snapshot}" "${tmp}/src"
	(cd "${tmp}/src" && go vet -mod=readonly .) || die "go vet found problems"
	log "==> ${TOOL}: gofmt and go vet clean"
}

main() {
	local vet=false arg snapshot
	for arg in "$@"; do
		case "${arg}" in
			-h | --help)
				usage
				return 0
				;;
			--vet) vet=true ;;
			*) die "unknown argument ${arg} (see --help)" ;;
		esac
	done
	command -v go >/dev/null || die "go is not on PATH"
	snapshot="$(find_snapshot)"
	if [[ "${vet}" == true ]]; then
		vet_sources "${snapshot}"
		return
	fi
	mkdir -p "${BIN_DIR}" "${STAMP_DIR}" "${CACHE_DIR}"
	ensure_binary "${snapshot}"
}

main "$@"
