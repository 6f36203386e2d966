# shellcheck shell=bash
# Components as background processes for the local Kubernetes scripts
# (hack/control-plane.sh, hack/local-cluster.sh): pid and log files in the
# state directory, start, wait, stop, the state lock, free ports. Sourced; the
# caller sets STATE_DIR, READY_TIMEOUT_SECONDS and LOG_PREFIX (and sources
# hack/lib/log.sh), and may define on_component_failure, which
# fail_component runs before it exits.

pid_file() {
	echo "${STATE_DIR}/pids/$1.pid"
}

log_file() {
	echo "${STATE_DIR}/logs/$1.log"
}

# component_pid NAME: the pid of a running component started by this state
# directory, or nothing (a recycled pid running another program is ignored:
# a component's command line names the state directory).
component_pid() {
	local name="$1" pid
	[[ -f "$(pid_file "${name}")" ]] || return 0
	pid="$(cat "$(pid_file "${name}")")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 0
	if [[ -r "/proc/${pid}/cmdline" ]] && tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${STATE_DIR}/"; then
		echo "${pid}"
	fi
}

# start_component NAME PROGRAM ARGS...: start a component in its own session,
# logging to its log file.
start_component() {
	local name="$1"
	shift
	# fd 9 is the state lock (take_lock): the component must not inherit (and hold) it.
	setsid "$@" </dev/null >"$(log_file "${name}")" 2>&1 9>&- &
	echo "$!" >"$(pid_file "${name}")"
}

# fail_component NAME REASON: say why, show the end of its log, and exit.
fail_component() {
	local name="$1" reason="$2"
	log "${LOG_PREFIX}: ${name} ${reason}; last lines of $(log_file "${name}"):"
	tail -n 40 "$(log_file "${name}")" >&2 || true
	if declare -F on_component_failure >/dev/null; then
		on_component_failure
	fi
	exit 1
}

# wait_until NAME WHAT COMMAND...: poll COMMAND (every POLL_SECONDS, default
# 0.5) until it succeeds while NAME runs; fail NAME when it exits or
# READY_TIMEOUT_SECONDS pass.
wait_until() {
	local name="$1" what="$2" deadline
	shift 2
	deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
	while ((SECONDS < deadline)); do
		# The pid, not component_pid: right after the fork the process may not
		# have exec'd its program yet, and its command line is still the shell's.
		kill -0 "$(cat "$(pid_file "${name}")")" 2>/dev/null || fail_component "${name}" "exited"
		"$@" >/dev/null 2>&1 && return 0
		sleep "${POLL_SECONDS:-0.5}"
	done
	fail_component "${name}" "did not get ${what} within ${READY_TIMEOUT_SECONDS}s"
}

# answers_ok URL [CURL ARGS...]: URL's body is 'ok' (a /readyz or /healthz).
answers_ok() {
	local url="$1"
	shift
	[[ "$(curl --silent --max-time 5 "$@" "${url}" 2>/dev/null || true)" == ok ]]
}

# stop_components NAME...: TERM each running component, then KILL what is
# left of it after 10s; forget their pid files.
stop_components() {
	local name pid pids=() i
	for name in "$@"; do
		pid="$(component_pid "${name}")"
		rm -f "$(pid_file "${name}")"
		[[ -n "${pid}" ]] || continue
		pids+=("${pid}")
		kill -TERM "${pid}" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 100; i++)); do
			[[ -d "/proc/${pid}" ]] || break
			sleep 0.1
		done
		if [[ -d "/proc/${pid}" ]]; then
			kill -KILL "${pid}" 2>/dev/null || true
		fi
	done
}

# take_lock SECONDS: serialise up and down on one state directory (the lock
# file sits beside it). Returns non-zero when another holder keeps the lock
# longer than SECONDS.
take_lock() {
	mkdir -p "$(dirname "${STATE_DIR}")"
	exec 9>"${STATE_DIR%/}.lock"
	flock -w "$1" 9
}

# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
	python3 - "$1" <<'EOF'
import socket
import sys

sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
EOF
}
