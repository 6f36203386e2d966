# shellcheck shell=bash
# Logging and timing for the local Kubernetes scripts (hack/control-plane.sh,
# hack/local-cluster.sh). Sourced; the caller sets LOG_PREFIX (its own name).

log() {
	printf '%s\n' "$*" >&2
}

die() {
	log "${LOG_PREFIX}: $*"
	exit 1
}

now() {
	date +%s.%N
}

seconds_since() {
	awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'
}

# step WHAT FUNCTION: run FUNCTION and log how long it took.
step() {
	local what="$1" start
	start="$(now)"
	"$2"
	log "${LOG_PREFIX}: ${what} in $(seconds_since "${start}")s"
}
