#!/usr/bin/env bash
# Builds the container images the local cluster (hack/local-cluster.sh) runs,
# as OCI archives, from things this machine can get without a registry: a
# pause program written here and Debian's busybox and PostgreSQL packages.
# Archives are cached outside the checkout.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${NVSENTINEL_IMAGES_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/nvsentinel-images}"
# Bump when the way an image is built changes: cached archives of another
# revision are built again.
IMAGES_REVISION="2"
DEBIAN_SUITE="bookworm"
POSTGRESQL_MAJOR="15"
PAUSE_REF="localhost/nvsentinel-local/pause:${IMAGES_REVISION}"
ALL_IMAGES=(pause shell postgresql coredns)
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

--refs-file FILE names the references to give the images, one 'IMAGE REF'
per line (an image may have several); without it an image is named
localhost/nvsentinel-local/IMAGE:${IMAGES_REVISION}. An archive is rebuilt when
its references change.

Needs: go (pause), .bin/coredns (coredns), apt-get and dpkg-deb (shell), debootstrap as root
(postgresql; the Debian mirror is the one apt uses), python3, tar.

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

build_postgresql() {
	local work="$1" mirror bin="/usr/lib/postgresql/${POSTGRESQL_MAJOR}/bin"
	[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
	command -v debootstrap >/dev/null || die "debootstrap is not installed"
	mirror="$(debian_mirror)"
	[[ -n "${mirror}" ]] || die "apt has no source for ${DEBIAN_SUITE}"
	debootstrap --variant=minbase --include="postgresql-${POSTGRESQL_MAJOR},ca-certificates" \
		"${DEBIAN_SUITE}" "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log" 2>&1 ||
		{
			tail -n 30 "${work}/debootstrap.log" >&2
			die "debootstrap failed"
		}
	# The postgres user and group get 999, their ids in the official image,
	# which charts' securityContexts name (initdb needs the uid to have a name).
	chroot "${work}/rootfs" groupmod --gid 999 postgres
	chroot "${work}/rootfs" usermod --uid 999 --gid 999 postgres
	chown -R 999:999 "${work}/rootfs/var/lib/postgresql" "${work}/rootfs/var/run/postgresql" \
		"${work}/rootfs/var/log/postgresql" "${work}/rootfs/etc/postgresql"
	# The package's own cluster, caches and the apt lists are not part of the image.
	rm -rf "${work}/rootfs/var/lib/postgresql/${POSTGRESQL_MAJOR}/main" \
		"${work}/rootfs/etc/postgresql/${POSTGRESQL_MAJOR}/main" \
		"${work}/rootfs/var/cache/apt/archives/"*.deb "${work}/rootfs/var/lib/apt/lists/"*
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

# ensure_image IMAGE: build IMAGE's archive unless it is cached with the same references.
ensure_image() {
	local image="$1" archive work start
	archive="$(archive_path "${image}")"
	if [[ -f "${archive}" && "$(cat "${archive}.refs" 2>/dev/null)" == "$(refs_of "${image}")" ]]; then
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
