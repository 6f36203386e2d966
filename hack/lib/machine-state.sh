# shellcheck shell=bash
# What hack/local-cluster.sh finds on the machine before up, so that down can
# put it back: sysctls, the entries of machine-wide directories, mounts and
# cgroups. Sourced; the caller sets LOG_PREFIX (and sources hack/lib/log.sh),
# SYSCTLS (keys under /proc/sys) and HOST_DIRS (directories). Root only.

# record_sysctls DIR: the values of SYSCTLS now, for restore_sysctls.
record_sysctls() {
	local key
	for key in "${SYSCTLS[@]}"; do
		[[ -r "/proc/sys/${key}" ]] && printf '%s %s\n' "${key}" "$(cat "/proc/sys/${key}")"
	done >"$1/sysctls"
}

restore_sysctls() {
	local file="$1/sysctls" key value
	[[ -f "${file}" ]] || return 0
	while read -r key value; do
		[[ "$(cat "/proc/sys/${key}" 2>/dev/null)" == "${value}" ]] && continue
		echo "${value}" >"/proc/sys/${key}" 2>/dev/null || log "${LOG_PREFIX}: could not restore ${key}=${value}"
	done <"${file}"
}

# record_host_dirs DIR: the entries of HOST_DIRS now (or that one is absent),
# for remove_host_entries.
record_host_dirs() {
	local dir
	for dir in "${HOST_DIRS[@]}"; do
		if [[ -d "${dir}" ]]; then
			echo "${dir}"
			find "${dir}" -mindepth 1 -maxdepth 1 -printf '%p\n'
		else
			echo "absent ${dir}"
		fi
	done >"$1/paths"
}

# remove_host_entries DIR: the entries of HOST_DIRS that are not in DIR's
# record (and the directories that were absent), unmounted first.
remove_host_entries() {
	local paths="$1/paths" dir entry
	[[ -f "${paths}" ]] || return 0
	for dir in "${HOST_DIRS[@]}"; do
		if grep -qxF "absent ${dir}" "${paths}"; then
			[[ -e "${dir}" ]] || continue
			unmount_under "${dir}/"
			rm -rf "${dir}"
			continue
		fi
		[[ -d "${dir}" ]] || continue
		while read -r entry; do
			grep -qxF "${entry}" "${paths}" && continue
			unmount_under "${entry}"
			rm -rf "${entry}"
		done < <(find "${dir}" -mindepth 1 -maxdepth 1 -printf '%p\n')
	done
}

# unmount_under PREFIX: unmount every mount at or below PREFIX, deepest first.
unmount_under() {
	local prefix="$1" mountpoint
	while read -r mountpoint; do
		umount "${mountpoint}" 2>/dev/null || umount -l "${mountpoint}" 2>/dev/null || true
	done < <(awk -v p="${prefix}" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

# make_cgroups ROOT: the cgroup ROOT in every cgroup v1 hierarchy.
make_cgroups() {
	local hierarchy
	for hierarchy in /sys/fs/cgroup/*/; do
		[[ -f "${hierarchy}cgroup.procs" && "${hierarchy}" != */unified/ ]] || continue
		mkdir -p "${hierarchy%/}$1"
	done
}

# remove_cgroups ROOT: ROOT and every cgroup below it, in every hierarchy.
remove_cgroups() {
	local hierarchy
	for hierarchy in /sys/fs/cgroup/*/; do
		[[ -d "${hierarchy%/}$1" ]] || continue
		find "${hierarchy%/}$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
}
