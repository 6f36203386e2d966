#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e): a kind cluster from hack/kind-config.yaml,
# cert-manager, the chart with each datastore in turn, real clients through
# port-forwards. Unlike `make test`, which lets the tier skip where no container
# engine runs, this fails when the suite could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTEST="$REPO/.venv/bin/pytest"
REPORT="$REPO/test-reports/e2e.xml"

usage() {
	cat <<USAGE
Usage: hack/e2e.sh [-- PYTEST-ARGS]

Creates (or reuses) the kind cluster 'nvsentinel-e2e', installs cert-manager's
static manifest, installs the chart with MongoDB and then PostgreSQL, and runs
tests/e2e against each. Diagnostics of failures (events, describe output, pod
logs) are written to e2e-artifacts/. Exits non-zero when a test failed or when
the suite skipped (no container engine).

Needs: make setup (.venv, .bin/helm, .bin/kind, .bin/kubectl), a running Docker
(or podman with KIND_EXPERIMENTAL_PROVIDER=podman), and access to the image
registries and to cert-manager's release manifest.

Environment:
  E2E_DATASTORE         mongodb | postgresql: run one datastore only (default both)
  E2E_KUBECONFIG        use this cluster instead of creating a kind cluster
  E2E_KIND_CLUSTER      kind cluster name (default nvsentinel-e2e)
  E2E_KEEP_CLUSTER=1    keep the kind cluster afterwards
  KIND_NODE_IMAGE       kind node image (default: kind's own)
  CERT_MANAGER_VERSION  cert-manager release for the static manifest (default: hack/versions.env)
  CERT_MANAGER_MANIFEST URL or file of the manifest (overrides the version)
  E2E_ARTIFACTS         diagnostics folder (default e2e-artifacts/)
USAGE
}

check_prerequisites() {
	[ -x "$PYTEST" ] || {
		echo "e2e.sh: $PYTEST not found; run 'make setup' first" >&2
		exit 2
	}
	local tool
	for tool in helm kind; do
		if [ ! -x "$REPO/.bin/$tool" ] && ! command -v "$tool" >/dev/null; then
			echo "e2e.sh: $tool not found in .bin/ or on PATH; run 'make setup'" >&2
			exit 2
		fi
	done
}

# Prints "tests failures errors skipped" of the JUnit report.
report_counts() {
	"$REPO/.venv/bin/python" - "$REPORT" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
print(*[sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")])
PY
}

run_suite() {
	mkdir -p "$(dirname "$REPORT")"
	local rc=0
	PATH="$REPO/.bin:$PATH" "$PYTEST" -m e2e "$REPO/tests/e2e" -rs --junitxml="$REPORT" "$@" || rc=$?
	[ "$rc" -eq 0 ] || return "$rc"
	local tests failures errors skipped
	read -r tests failures errors skipped < <(report_counts)
	echo "e2e: ran $tests, failed $((failures + errors)), skipped $skipped"
	if [ "$tests" -eq 0 ] || [ "$skipped" -eq "$tests" ]; then
		echo "e2e.sh: the suite did not run (see the skip reason above)" >&2
		return 1
	fi
}

main() {
	case "${1:-}" in
		-h | --help)
			usage
			exit 0
			;;
		--) shift ;;
		"") ;;
		*)
			echo "e2e.sh: unknown argument '$1' (see --help)" >&2
			exit 2
			;;
	esac
	check_prerequisites
	cd "$REPO"
	run_suite "$@"
}

main "$@"
