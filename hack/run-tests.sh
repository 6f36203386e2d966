#!/usr/bin/env bash
# Runs the test tiers one after another and prints, per tier, how many tests
# ran, passed, failed and skipped. Exits non-zero if any tier failed, or if a
# tier that must run here collected nothing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTEST="$REPO/.venv/bin/pytest"
REPORTS="$REPO/test-reports"
ALL_TIERS=(chart datastore cluster e2e)

usage() {
	cat <<USAGE
Usage: hack/run-tests.sh [TIER ...] [-- PYTEST-ARGS]

Tiers: ${ALL_TIERS[*]} (default: all). Each runs as 'pytest -m TIER tests/TIER'
and writes test-reports/TIER.xml. Where no container engine runs, the e2e tier
runs the PostgreSQL suite on a single-node cluster made of processes
(hack/local-cluster.sh, root only: it starts and stops it); otherwise on kind,
or on the cluster named by E2E_KUBECONFIG. No tier may skip here.
Needs: make setup.
USAGE
}

# Prints "tests failures errors skipped" summed over a JUnit XML report.
junit_counts() {
	"$REPO/.venv/bin/python" - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
totals = [sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")]
print(*totals)
PY
}

run_tier() {
	local tier=$1
	shift
	local report="$REPORTS/$tier.xml" rc=0 start=$SECONDS
	printf '\n==> tier %s\n' "$tier"
	"$PYTEST" -m "$tier" "$REPO/tests/$tier" --junitxml="$report" "$@" || rc=$?
	if [ "$rc" -eq 5 ]; then
		echo "tier $tier collected no tests" >&2
		SUMMARY+=("$(printf '%-10s no tests collected (FAILED)' "$tier")")
		return 1
	fi
	local tests failures errors skipped
	read -r tests failures errors skipped < <(junit_counts "$report")
	local passed=$((tests - failures - errors - skipped))
	TOTAL_PASSED=$((TOTAL_PASSED + passed))
	TOTAL_FAILED=$((TOTAL_FAILED + failures + errors))
	TOTAL_SKIPPED=$((TOTAL_SKIPPED + skipped))
	SUMMARY+=("$(printf '%-10s ran %4d  passed %4d  failed %3d  skipped %3d  (%ds)' \
		"$tier" "$tests" "$passed" "$((failures + errors))" "$skipped" "$((SECONDS - start))")")
	return "$rc"
}

# run_e2e_tier: without a container engine (and without E2E_KUBECONFIG), the
# PostgreSQL e2e suite on hack/local-cluster.sh, which needs root; the
# cluster runs cert-manager's controller, so the tier does not install it.
run_e2e_tier() {
	if docker info >/dev/null 2>&1 || [ -n "${E2E_KUBECONFIG:-}" ] || [ "$(id -u)" != 0 ]; then
		run_tier e2e "$@"
		return
	fi
	printf '\n==> local single-node cluster for the e2e tier (hack/local-cluster.sh up)\n'
	"$REPO/hack/local-cluster.sh" up >/dev/null || return 1
	local rc=0 kubeconfig
	kubeconfig=$("$REPO/hack/local-cluster.sh" kubeconfig)
	E2E_KUBECONFIG="$kubeconfig" E2E_DATASTORE=postgresql E2E_CERTIFICATES=installed \
		E2E_NODE_LOGS="${NVSENTINEL_LOCAL_CLUSTER_DIR:-$REPO/.state/local-cluster}/logs" \
		E2E_HELM_SET=postgresql.metrics.enabled=false run_tier e2e "$@" || rc=$?
	"$REPO/hack/local-cluster.sh" down >/dev/null || rc=1
	return "$rc"
}

main() {
	local tiers=() pytest_args=()
	while [ $# -gt 0 ]; do
		case "$1" in
			-h | --help)
				usage
				exit 0
				;;
			--)
				shift
				pytest_args=("$@")
				break
				;;
			chart | datastore | cluster | e2e) tiers+=("$1") ;;
			*)
				echo "run-tests.sh: unknown tier '$1' (expected one of: ${ALL_TIERS[*]})" >&2
				exit 2
				;;
		esac
		shift
	done
	[ "${#tiers[@]}" -gt 0 ] || tiers=("${ALL_TIERS[@]}")
	[ -x "$PYTEST" ] || {
		echo "run-tests.sh: $PYTEST not found; run 'make setup' first" >&2
		exit 2
	}
	mkdir -p "$REPORTS"
	SUMMARY=() TOTAL_PASSED=0 TOTAL_FAILED=0 TOTAL_SKIPPED=0
	local failed_tiers=() tier
	for tier in "${tiers[@]}"; do
		if [ "$tier" = e2e ]; then
			run_e2e_tier "${pytest_args[@]}" || failed_tiers+=(e2e)
		else
			run_tier "$tier" "${pytest_args[@]}" || failed_tiers+=("$tier")
		fi
	done
	printf '\n==> summary\n'
	printf '%s\n' "${SUMMARY[@]}"
	[ "${#failed_tiers[@]}" -eq 0 ] || echo "failed tiers: ${failed_tiers[*]}"
	echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed, $TOTAL_SKIPPED skipped"
	[ "${#failed_tiers[@]}" -eq 0 ]
}

main "$@"
