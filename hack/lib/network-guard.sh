# shellcheck shell=bash
# The network guards of the local Kubernetes scripts (hack/control-plane.sh,
# hack/local-cluster.sh): 'unreachable' routes for the ranges they use, so a
# packet for them never follows the default route off the machine; a rule
# that keeps pod traffic on its bridge; and the iptables chains and ipsets
# their components add, recorded before they start and removed after them.
# Sourced; the caller sets LOG_PREFIX (and sources hack/lib/log.sh). Root only.

# Metric of the guard routes: higher than a bridge's own route for its range
# (metric 0), which therefore wins while the bridge exists.
GUARD_ROUTE_METRIC="4242"

# other_routes CIDR [DEV]: the routes for CIDR other than its guard route
# (and DEV's own), one a line.
other_routes() {
	local cidr="$1" dev="${2:-}" route
	while read -r route; do
		[[ -n "${route}" && "${route} " != *" metric ${GUARD_ROUTE_METRIC} "* ]] || continue
		[[ -n "${dev}" && "${route} " == *" dev ${dev} "* ]] && continue
		echo "${route}"
	done < <(ip route show "${cidr}")
}

# add_guard_route CIDR: the 'unreachable' route for CIDR, unless it is there.
add_guard_route() {
	local cidr="$1"
	ip route show "${cidr}" | grep -q "^unreachable ${cidr} .*metric ${GUARD_ROUTE_METRIC}" && return 0
	ip route add unreachable "${cidr}" metric "${GUARD_ROUTE_METRIC}"
	log "${LOG_PREFIX}: added route 'unreachable ${cidr} metric ${GUARD_ROUTE_METRIC}'"
}

remove_guard_route() {
	ip route del unreachable "$1" metric "${GUARD_ROUTE_METRIC}" 2>/dev/null || true
}

# bridge_guard_rule BRIDGE: the rule that drops whatever arrives on BRIDGE
# and would leave through another interface.
bridge_guard_rule() {
	printf '%s\n' -i "$1" ! -o "$1" -m comment --comment "nvsentinel-local: pod traffic stays on its bridge" -j DROP
}

# guard_bridge BRIDGE: the bridge guard rule first in the mangle table's
# FORWARD chain. mangle comes before filter, where kube-proxy's and
# kube-router's chains ACCEPT (established or policy-compliant traffic) and
# kube-router keeps its jump first.
guard_bridge() {
	local rule
	mapfile -t rule < <(bridge_guard_rule "$1")
	iptables -w -t mangle -C FORWARD "${rule[@]}" 2>/dev/null ||
		iptables -w -t mangle -I FORWARD 1 "${rule[@]}"
}

unguard_bridge() {
	local rule table
	mapfile -t rule < <(bridge_guard_rule "$1")
	# filter: where a cluster started by an older version of these scripts put it.
	for table in mangle filter; do
		while iptables -w -t "${table}" -C FORWARD "${rule[@]}" 2>/dev/null; do
			iptables -w -t "${table}" -D FORWARD "${rule[@]}"
		done
	done
}

# iptables_chains CMD: 'TABLE CHAIN' for every chain of CMD's tables.
iptables_chains() {
	local table
	for table in filter nat mangle raw; do
		"$1" -w -t "${table}" -S 2>/dev/null | awk -v t="${table}" '$1 == "-N" || $1 == "-P" { print t, $2 }'
	done
}

# record_firewall DIR: the iptables and ip6tables chains and the ipsets there
# are now, for remove_added_chains and remove_added_ipsets.
record_firewall() {
	iptables_chains iptables >"$1/iptables-chains"
	iptables_chains ip6tables >"$1/ip6tables-chains"
	ipset list -n >"$1/ipsets"
}

# remove_added_chains CMD DIR: delete the chains of CMD's tables that are not
# in DIR's record, and the rules of the other chains that jump to them.
remove_added_chains() {
	local cmd="$1" baseline="$2/$1-chains" table chain entry n rules=() new=()
	[[ -f "${baseline}" ]] || return 0
	while read -r table chain; do
		grep -qxF "${table} ${chain}" "${baseline}" || new+=("${table} ${chain}")
	done < <(iptables_chains "${cmd}")
	((${#new[@]} > 0)) || return 0
	# Rules are deleted by number, last first: a rule as -S prints it may
	# carry a quoted comment (kube-router's do), which does not survive word
	# splitting. The new chains themselves are flushed below.
	while read -r table chain; do
		mapfile -t rules < <("${cmd}" -w -t "${table}" -S "${chain}" 2>/dev/null | tail -n +2)
		for ((n = ${#rules[@]}; n >= 1; n--)); do
			for entry in "${new[@]}"; do
				[[ "${entry%% *}" == "${table}" && "${rules[n - 1]} " == *" -j ${entry#* } "* ]] || continue
				"${cmd}" -w -t "${table}" -D "${chain}" "${n}" 2>/dev/null || true
				break
			done
		done
	done <"${baseline}"
	for entry in "${new[@]}"; do
		read -r table chain <<<"${entry}"
		"${cmd}" -w -t "${table}" -F "${chain}" 2>/dev/null || true
	done
	for entry in "${new[@]}"; do
		read -r table chain <<<"${entry}"
		"${cmd}" -w -t "${table}" -X "${chain}" 2>/dev/null || true
	done
}

# remove_added_ipsets PREFIX DIR: destroy the PREFIX* sets that are not in
# DIR's record, once no iptables rule refers to them (remove_added_chains first).
remove_added_ipsets() {
	local prefix="$1" baseline="$2/ipsets" name
	[[ -f "${baseline}" ]] && command -v ipset >/dev/null || return 0
	while read -r name; do
		[[ "${name}" == "${prefix}"* || "${name}" == "inet6:${prefix}"* ]] || continue
		grep -qxF "${name}" "${baseline}" && continue
		ipset destroy "${name}" 2>/dev/null || log "${LOG_PREFIX}: could not destroy ipset ${name}"
	done < <(ipset list -n)
}
