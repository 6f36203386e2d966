#!/usr/bin/env bash
# Installs everything the project needs, idempotently: Debian packages, the
# Python virtual environment, and the Go-built tools in .bin/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"
APT_PACKAGES=(postgresql postgresql-client build-essential shellcheck openssl curl ca-certificates iproute2 procps
	containerd runc containernetworking-plugins iptables conntrack ipset debootstrap)

usage() {
	cat <<USAGE
Usage: hack/setup.sh [--skip-apt] [--skip-tools]

Installs, skipping what is already there:
  1. Debian packages: ${APT_PACKAGES[*]}
  2. .venv: a Python virtual environment with nvsentinel-store installed
     editable and its pinned development dependencies (pyproject.toml)
  3. .bin/: helm, helm3, kube-apiserver, kube-controller-manager, kubectl,
     kube-scheduler, kubelet, kube-proxy, etcd, kind, tilt, coredns,
     cert-manager-controller, kube-router and shfmt, built from their Go modules
     at the versions of hack/versions.env and hack/tools/ (hack/build-tools.sh),
     and nvsentinel-client-check, NVSentinel's own Go store-client driven by
     tests/nvsentinel_client (hack/build-nvsentinel-client.sh)
Needs: root (or sudo) for apt-get, python3 >= 3.11, go.
USAGE
}

step() { printf '\n==> %s\n' "$*"; }

elapsed() { printf '    done in %ds\n' "$((SECONDS - $1))"; }

missing_apt_packages() {
	local pkg
	for pkg in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
	done
}

install_apt_packages() {
	local start=$SECONDS missing
	step "Debian packages"
	mapfile -t missing < <(missing_apt_packages)
	if [ "${#missing[@]}" -eq 0 ]; then
		echo "    all present"
		return
	fi
	echo "    installing: ${missing[*]}"
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	elapsed "$start"
}

pyproject_stamp() { sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1; }

install_venv() {
	local start=$SECONDS stamp_file="$VENV/.nvsentinel-pyproject.sha256"
	step "Python virtual environment (.venv)"
	if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$(pyproject_stamp)" ]; then
		echo "    up to date with pyproject.toml"
		return
	fi
	[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
	"$VENV/bin/python" -m pip install --quiet --upgrade pip
	echo "    installing nvsentinel-store[dev] (editable, pinned)"
	"$VENV/bin/python" -m pip install --quiet --editable "${REPO}[dev]"
	pyproject_stamp >"$stamp_file"
	elapsed "$start"
}

build_tools() {
	local start=$SECONDS
	step "Go-built tools (.bin/)"
	"$REPO/hack/build-tools.sh"
	# NVSentinel's own Go store-client, for the datastore tier's compatibility tests.
	"$REPO/hack/build-nvsentinel-client.sh"
	elapsed "$start"
}

main() {
	local skip_apt=false skip_tools=false arg
	for arg in "$@"; do
		case "$arg" in
			-h | --help)
				usage
				exit 0
				;;
			--skip-apt) skip_apt=true ;;
			--skip-tools) skip_tools=true ;;
			*)
				echo "setup.sh: unknown argument '$arg' (expected --skip-apt, --skip-tools or --help)" >&2
				exit 2
				;;
		esac
	done
	local start=$SECONDS
	$skip_apt || install_apt_packages
	install_venv
	$skip_tools || build_tools
	printf '\nsetup complete in %ds\n' "$((SECONDS - start))"
}

main "$@"
