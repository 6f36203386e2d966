#!/usr/bin/env bash
# Builds the container images the local cluster (hack/local-cluster.sh) runs,
# as OCI archives, from things this machine can get without a registry: a
# pause program written here, Debian's busybox, PostgreSQL and Python
# packages, and this repository's own nvsentinel_store. Archives are cached
# outside the checkout.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${NVSENTINEL_IMAGES_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/nvsentinel-images}"
# Bump when the way an image is built changes: cached archives of another
# revision are built again.
IMAGES_REVISION="2"
DEBIAN_SUITE="bookworm"
POSTGRESQL_MAJOR="15"
# Where the nvsentinel-store image keeps the chart's migrations (what `health`
# and `schema status` compare the database with, unless the chart mounts its own).
STORE_MIGRATIONS_DIR="/usr/share/nvsentinel-store/migrations"
PAUSE_REF="localhost/nvsentinel-local/pause:${IMAGES_REVISION}"
ALL_IMAGES=(pause shell postgresql coredns nvsentinel-store)
BIN_DIR="${NVSENTINEL_BIN_DIR:-${ROOT_DIR}/.bin}"

usage() {
	cat <<EOF
Usage: hack/build-images.sh [--help] [--refs-file FILE] [IMAGE...]

Builds OCI image archives (all of them when no IMAGE is named) into
${CACHE_DIR}/IMAGE-r${IMAGES_REVISION}.tar, unless already there,
and prints each archive's path.

Images (local builds; none is the published image whose name it may carry):
  pause       a static Go program (hack/images/pause) that holds a pod
              sandbox; reference ${PAUSE_REF}
  shell       Debian ${DEBIAN_SUITE}'s busybox-static with its applets linked
              (stands in for the busybox image the chart's init containers use)
  postgresql  Debian ${DEBIAN_SUITE} (debootstrap minbase) with postgresql-${POSTGRESQL_MAJOR},
              its server binaries on PATH, user postgres 999:999 (stands in for the postgres image;
              NOTE: PostgreSQL ${POSTGRESQL_MAJOR}, whatever the tag it is given says)
  coredns     .bin/coredns (hack/build-tools.sh coredns) alone in an image
  nvsentinel-store
              this repository's client and operator tools: Debian ${DEBIAN_SUITE} (debootstrap
              minbase) with python3, nvsentinel_store and its pinned dependencies from the
              package index, the chart's migrations in ${STORE_MIGRATIONS_DIR};
              entrypoint nvsentinel-store (built again whenever src/, pyproject.toml or
              the migrations change)

--refs-file FILE names the references to give the images, one 'IMAGE REF'
per line (an image may have several); without it an image is named
localhost/nvsentinel-local/IMAGE:${IMAGES_REVISION}. An archive is rebuilt when
its references change.

Needs: go (pause), .bin/coredns (coredns), apt-get and dpkg-deb (shell), debootstrap as root
(postgresql, nvsentinel-store; the Debian mirror is the one apt uses), .venv (make setup;
nvsentinel-store), python3, tar.

Environment:
  NVSENTINEL_IMAGES_CACHE  archive cache (default: \${XDG_CACHE_HOME:-~/.cache}/nvsentinel-images)
EOF
}

log() {
	printf '%s\n' "$*" >&2
}

die() {
	log "build-images: $*"
	exit 1
}

now() {
	date +%s.%N
}

seconds_since() {
	awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'
}

# refs_of IMAGE: the references IMAGE gets, one per line.
refs_of() {
	local image="$1" refs=""
	if [[ -n "${REFS_FILE:-}" ]]; then
		refs="$(awk -v img="${image}" '$1 == img { print $2 }' "${REFS_FILE}")"
	fi
	[[ "${image}" == pause ]] && refs="${PAUSE_REF}${refs:+$'\n'${refs}}"
	[[ -z "${refs}" ]] && refs="localhost/nvsentinel-local/${image}:${IMAGES_REVISION}"
	printf '%s\n' "${refs}" | sort -u
}

archive_path() {
	echo "${CACHE_DIR}/$1-r${IMAGES_REVISION}.tar"
}

# write_archive IMAGE ROOTFS ARGS...: the OCI archive of ROOTFS named with IMAGE's references.
write_archive() {
	local image="$1" rootfs="$2" ref ref_args=()
	shift 2
	while read -r ref; do
		ref_args+=(--ref "${ref}")
	done < <(refs_of "${image}")
	python3 "${ROOT_DIR}/hack/oci-archive.py" --rootfs "${rootfs}" --out "$(archive_path "${image}")" \
		"${ref_args[@]}" "$@"
	refs_of "${image}" >"$(archive_path "${image}").refs"
	inputs_of "${image}" >"$(archive_path "${image}").inputs"
}

build_pause() {
	local work="$1"
	mkdir -p "${work}/rootfs"
	(cd "${work}" && CGO_ENABLED=0 GOFLAGS='' go build -trimpath -ldflags "-s -w" -o "${work}/rootfs/pause" \
		"${ROOT_DIR}/hack/images/pause/main.go")
	write_archive pause "${work}/rootfs" --entrypoint '["/pause"]' --user 65535:65535
}

# busybox-static from Debian, its applets linked under /bin and /usr/bin.
build_shell() {
	local work="$1" deb applet
	(cd "${work}" && apt-get download busybox-static >/dev/null 2>&1) ||
		die "apt-get download busybox-static failed (run apt-get update?)"
	deb="$(echo "${work}"/busybox-static_*.deb)"
	[[ -f "${deb}" ]] || die "apt-get download busybox-static produced no package"
	dpkg-deb -x "${deb}" "${work}/pkg"
	mkdir -p "${work}/rootfs/bin" "${work}/rootfs/usr/bin" "${work}/rootfs/usr/sbin" "${work}/rootfs/sbin" \
		"${work}/rootfs/tmp" "${work}/rootfs/etc"
	chmod 1777 "${work}/rootfs/tmp"
	cp "${work}/pkg/bin/busybox" "${work}/rootfs/bin/busybox"
	while read -r applet; do
		[[ "${applet}" == bin/busybox || -e "${work}/rootfs/${applet}" ]] && continue
		mkdir -p "$(dirname "${work}/rootfs/${applet}")"
		ln -s /bin/busybox "${work}/rootfs/${applet}"
	done < <("${work}/rootfs/bin/busybox" --list-full)
	printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" \
		>"${work}/rootfs/etc/passwd"
	printf '%s\n' "root:x:0:" "nogroup:x:65534:" >"${work}/rootfs/etc/group"
	write_archive shell "${work}/rootfs" --cmd '["sh"]' \
		--env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

# debian_mirror: the URI apt uses for the Debian suite (no mirror is named here).
debian_mirror() {
	# shellcheck disable=SC2016 # apt-get expands these, not the shell
	apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' |
		awk -v suite="${DEBIAN_SUITE}" '$2 == suite { print $1; exit }'
}

# debootstrap_rootfs WORK PACKAGES: a Debian minbase root filesystem in WORK/rootfs
# with PACKAGES (comma-separated), without apt's caches and lists.
debootstrap_rootfs() {
	local work="$1" mirror
	[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
	command -v debootstrap >/dev/null || die "debootstrap is not installed"
	mirror="$(debian_mirror)"
	[[ -n "${mirror}" ]] || die "apt has no source for ${DEBIAN_SUITE}"
	debootstrap --variant=minbase --include="$2" \
		"${DEBIAN_SUITE}" "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log" 2>&1 ||
		{
			tail -n 30 "${work}/debootstrap.log" >&2
			die "debootstrap failed"
		}
	rm -rf "${work}/rootfs/var/cache/apt/archives/"*.deb "${work}/rootfs/var/lib/apt/lists/"*
}

build_postgresql() {
	local work="$1" bin="/usr/lib/postgresql/${POSTGRESQL_MAJOR}/bin"
	debootstrap_rootfs "${work}" "postgresql-${POSTGRESQL_MAJOR},ca-certificates"
	# The postgres user and group get 999, their ids in the official image,
	# which charts' securityContexts name (initdb needs the uid to have a name).
	chroot "${work}/rootfs" groupmod --gid 999 postgres
	chroot "${work}/rootfs" usermod --uid 999 --gid 999 postgres
	chown -R 999:999 "${work}/rootfs/var/lib/postgresql" "${work}/rootfs/var/run/postgresql" \
		"${work}/rootfs/var/log/postgresql" "${work}/rootfs/etc/postgresql"
	# The package's own cluster, caches and the apt lists are not part of the image.
	rm -rf "${work}/rootfs/var/lib/postgresql/${POSTGRESQL_MAJOR}/main" \
		"${work}/rootfs/etc/postgresql/${POSTGRESQL_MAJOR}/main"
	mkdir -p "${work}/rootfs/var/run/postgresql"
	chmod 2777 "${work}/rootfs/var/run/postgresql"
	write_archive postgresql "${work}/rootfs" --cmd '["postgres"]' \
		--env "PATH=${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--env "PGDATA=/var/lib/postgresql/data" --env "LANG=C.UTF-8"
}

build_coredns() {
	local work="$1"
	[[ -x "${BIN_DIR}/coredns" ]] || die "${BIN_DIR}/coredns is missing; run hack/build-tools.sh coredns"
	mkdir -p "${work}/rootfs"
	cp "${BIN_DIR}/coredns" "${work}/rootfs/coredns"
	write_archive coredns "${work}/rootfs" --entrypoint '["/coredns"]'
}

# The project's sources the nvsentinel-store image is built from.
store_sources() {
	(cd "${ROOT_DIR}" && find pyproject.toml src charts/nvsentinel/files/postgresql/migrations \
		-type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort)
}

# inputs_of IMAGE: what IMAGE's cached archive must have been built from: its
# references and, for nvsentinel-store, a digest of the sources.
inputs_of() {
	refs_of "$1"
	if [[ "$1" == nvsentinel-store ]]; then
		echo "sources $(cd "${ROOT_DIR}" && store_sources | xargs sha256sum | sha256sum | cut -d' ' -f1)"
	fi
}

# python_base WORK: WORK/rootfs from a cached Debian minbase with python3
# (debootstrap once; the project's code changes more often than Debian).
python_base() {
	local work="$1" base="${CACHE_DIR}/python-rootfs-r${IMAGES_REVISION}.tar"
	if [[ ! -f "${base}" ]]; then
		debootstrap_rootfs "${work}" "python3,ca-certificates"
		tar -C "${work}/rootfs" -cf "${base}.tmp" . && mv "${base}.tmp" "${base}"
		return 0
	fi
	mkdir -p "${work}/rootfs"
	tar -C "${work}/rootfs" -xf "${base}"
}

# build_nvsentinel-store: the project's wheel and its pinned dependencies (binary
# wheels for this machine's Python 3.11 and glibc, which Debian ${DEBIAN_SUITE}'s
# python3 shares) installed where Debian's python3 looks, compiled by that python3
# (the root filesystem is read-only in the chart's pods), the migrations beside.
build_nvsentinel-store() {
	local work="$1" python="${ROOT_DIR}/.venv/bin/python"
	local site="/usr/local/lib/python3.11/dist-packages"
	[[ -x "${python}" ]] || die "${python} is missing; run make setup"
	python_base "${work}"
	# From a copy: setuptools leaves build/ in the tree it builds, and reuses it.
	mkdir -p "${work}/source"
	cp -r "${ROOT_DIR}/pyproject.toml" "${ROOT_DIR}/README.md" "${ROOT_DIR}/src" "${work}/source/"
	"${python}" -m pip wheel --quiet --no-deps --wheel-dir "${work}/wheel" "${work}/source" >&2 ||
		die "building the nvsentinel-store wheel failed"
	"${python}" -m pip install --quiet --no-compile --only-binary=:all: --target "${work}/rootfs${site}" \
		"${work}"/wheel/*.whl >&2 || die "installing nvsentinel-store and its dependencies failed"
	# pip's scripts name this machine's interpreter; the image has its own.
	rm -rf "${work}/rootfs${site}/bin"
	printf '%s\n' '#!/usr/bin/python3' 'import sys' 'from nvsentinel_store.cli import main' 'sys.exit(main())' \
		>"${work}/rootfs/usr/local/bin/nvsentinel-store"
	chmod 0755 "${work}/rootfs/usr/local/bin/nvsentinel-store"
	chroot "${work}/rootfs" python3 -m compileall -q "${site}" >/dev/null
	mkdir -p "${work}/rootfs${STORE_MIGRATIONS_DIR}"
	cp "${ROOT_DIR}"/charts/nvsentinel/files/postgresql/migrations/*.sql "${work}/rootfs${STORE_MIGRATIONS_DIR}/"
	# The chart's pods run as 65532; libpq and Python look the user up.
	echo "nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin" >>"${work}/rootfs/etc/passwd"
	echo "nonroot:x:65532:" >>"${work}/rootfs/etc/group"
	chroot "${work}/rootfs" nvsentinel-store --help >/dev/null || die "nvsentinel-store does not start in the image"
	write_archive nvsentinel-store "${work}/rootfs" --entrypoint '["nvsentinel-store"]' --cmd '["--help"]' \
		--env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--env "NVSENTINEL_MIGRATIONS_DIR=${STORE_MIGRATIONS_DIR}" --env "LANG=C.UTF-8" \
		--env "PYTHONDONTWRITEBYTECODE=1" --user 65532:65532
}

# ensure_image IMAGE: build IMAGE's archive unless it is cached with the same references.
ensure_image() {
	local image="$1" archive work start
	archive="$(archive_path "${image}")"
	if [[ -f "${archive}" && "$(cat "${archive}.inputs" 2>/dev/null)" == "$(inputs_of "${image}")" ]]; then
		echo "${archive}"
		return 0
	fi
	start="$(now)"
	work="$(mktemp -d "${CACHE_DIR}/.build-${image}.XXXXXX")"
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '${work}'" EXIT
	"build_${image}" "${work}"
	rm -rf "${work}"
	trap - EXIT
	# Archives of other revisions of this image are stale.
	find "${CACHE_DIR}" -maxdepth 1 -name "${image}-r*.tar*" ! -name "${archive##*/}*" -delete
	log "build-images: ${image} built in $(seconds_since "${start}")s ($(du -h "${archive}" | cut -f1))"
	echo "${archive}"
}

main() {
	local images=() image
	REFS_FILE=""
	while (($# > 0)); do
		case "$1" in
			-h | --help)
				usage
				return 0
				;;
			--refs-file)
				REFS_FILE="${2:?--refs-file needs a file}"
				shift
				;;
			-*) die "unknown option $1 (see --help)" ;;
			*) images+=("$1") ;;
		esac
		shift
	done
	((${#images[@]} > 0)) || images=("${ALL_IMAGES[@]}")
	mkdir -p "${CACHE_DIR}"
	for image in "${images[@]}"; do
		declare -F "build_${image}" >/dev/null || die "unknown image '${image}' (see --help)"
		(
			exec 9>"${CACHE_DIR}/.${image}.lock"
			flock 9
			ensure_image "${image}"
		)
	done
}

main "$@"
