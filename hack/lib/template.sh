# shellcheck shell=bash
# Configuration files from templates, for hack/local-cluster.sh (its templates
# are in hack/local-cluster/). Sourced; the caller sets LOG_PREFIX (and
# sources hack/lib/log.sh).

# render_template FILE [NAME=VALUE...]: FILE on stdout with every ${NAME}
# replaced by the VALUE given here, or else by the shell variable NAME. A NAME
# with neither (or an empty value) is an error and nothing is printed, never
# an empty string. Nothing else is expanded: no $NAME without braces, no
# ${NAME:-default}, no commands; values are inserted as they are.
render_template() {
	local file="$1" rest out="" name value pair
	local -A given=()
	shift
	for pair in "$@"; do
		given["${pair%%=*}"]="${pair#*=}"
	done
	rest="$(<"${file}")"
	while [[ "${rest}" =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do
		name="${BASH_REMATCH[1]}"
		if [[ -v "given[${name}]" ]]; then
			value="${given[${name}]}"
		else
			value="${!name:-}"
		fi
		[[ -n "${value}" ]] || die "${file}: \${${name}} has no value"
		out+="${rest%%"${BASH_REMATCH[0]}"*}${value}"
		rest="${rest#*"${BASH_REMATCH[0]}"}"
	done
	[[ "${rest}" != *"\${"* ]] || die "${file}: a \${...} that is not a plain variable name"
	printf '%s\n' "${out}${rest}"
}
