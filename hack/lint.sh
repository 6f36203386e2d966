#!/usr/bin/env bash
# Static checks: Python (ruff, mypy --strict), shell (shellcheck, shfmt), the chart
# (helm lint --strict on every values file) and the generated docs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN="$REPO/.venv/bin"
HELM="$REPO/.bin/helm"
CHART="$REPO/charts/nvsentinel"

usage() {
	cat <<USAGE
Usage: hack/lint.sh

Runs ruff, mypy (strict on src/, devsupport/, bench/ and hack/; tests/
non-strict, see pyproject.toml), shellcheck and shfmt -d
(one style, set in .editorconfig) on every shell script under hack/, charts/
and .ci/, helm lint --strict on the chart with each values file, and checks
that the generated docs (chart README values table, values.schema.json,
docs/postgresql-schema.sql) are current. Needs: make setup.
USAGE
}

FAILED=()

check() {
	local name=$1
	shift
	printf '==> %s\n' "$name"
	if "$@"; then echo "    ok"; else FAILED+=("$name"); fi
}

shell_scripts() {
	find "$REPO/hack" "$REPO/charts" "$REPO/.ci" -type f \( -name '*.sh' -o -path "$REPO/.ci/run" \) -print | sort
}

shellcheck_all() {
	local scripts
	mapfile -t scripts < <(shell_scripts)
	shellcheck --external-sources "${scripts[@]}"
}

# shfmt_all: every script in the style .editorconfig sets (shfmt reads it);
# `.bin/shfmt -w FILE` rewrites a file in it.
shfmt_all() {
	local scripts
	mapfile -t scripts < <(shell_scripts)
	"$REPO/.bin/shfmt" -d "${scripts[@]}"
}

values_files() {
	printf '%s\n' "" "$REPO"/values-*.yaml
}

helm_lint_all() {
	local values rc=0
	while IFS= read -r values; do
		if [ -z "$values" ]; then
			"$HELM" lint --strict "$CHART" >/dev/null || {
				"$HELM" lint --strict "$CHART"
				rc=1
			}
		else
			"$HELM" lint --strict "$CHART" --values "$values" >/dev/null || {
				"$HELM" lint --strict "$CHART" --values "$values"
				rc=1
			}
		fi
	done < <(values_files)
	return "$rc"
}

main() {
	case "${1:-}" in -h | --help)
		usage
		exit 0
		;;
	"") ;; *)
		echo "lint.sh: unexpected argument '$1'" >&2
		exit 2
		;;
	esac
	cd "$REPO"
	check "ruff check" "$VENV_BIN/ruff" check src tests bench hack devsupport
	check "ruff format --check" "$VENV_BIN/ruff" format --check src tests bench hack devsupport
	check "mypy (strict; tests non-strict)" "$VENV_BIN/mypy"
	check "shellcheck" shellcheck_all
	check "shfmt -d (one shell style)" shfmt_all
	check "gofmt and go vet (tests/nvsentinel_client)" hack/build-nvsentinel-client.sh --vet
	check "helm lint --strict (every values file)" helm_lint_all
	check "chart README values table is current" "$VENV_BIN/python" hack/gen-chart-readme.py --check
	check "values.schema.json is current" "$VENV_BIN/python" hack/gen-values-schema.py --check
	check "docs/postgresql-schema.sql is current" hack/gen-schema-doc.sh --check
	if [ "${#FAILED[@]}" -gt 0 ]; then
		printf '\nlint failed: %s\n' "${FAILED[*]}" >&2
		exit 1
	fi
	printf '\nlint clean\n'
}

main "$@"
