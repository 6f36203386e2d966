# shellcheck shell=bash
# Pinned versions for the scripts in hack/: the variables of hack/versions.env,
# and the versions wrapper modules pin (hack/tools/*/go.mod). Sourced; the
# caller sets ROOT_DIR (the checkout).

# shellcheck source=hack/versions.env
source "${ROOT_DIR}/hack/versions.env"

# wrapper_version DIR MODULE: the version of MODULE required by hack/tools/DIR/go.mod.
wrapper_version() {
	local gomod="${ROOT_DIR}/hack/tools/$1/go.mod"
	awk -v mod="$2" '($1 == "require" && $2 == mod) { print $3; exit } ($1 == mod) { print $2; exit }' "${gomod}"
}

# cert_manager_controller_version: the release of the cert-manager controller
# hack/build-tools.sh builds (and hack/local-cluster.sh runs).
cert_manager_controller_version() {
	wrapper_version cert-manager github.com/cert-manager/cert-manager
}
