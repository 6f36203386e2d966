#!/usr/bin/env bash
# One backup: pg_dump in custom format to the backup volume, then retention.
set -euo pipefail

BACKUP_DIR="${BACKUP_DIR:-/backups}"
RETENTION="${RETENTION:-7}"

usage() {
	cat <<'USAGE'
Usage: backup.sh [--help]

Writes `pg_dump --format=custom` of PGDATABASE to
BACKUP_DIR/<database>-<UTC timestamp>.dump (through a .partial file, so a
failed dump never counts as a backup), then deletes all but the newest
RETENTION dumps. Connects with the PG* environment (in the chart: TLS with
verify-full and a client certificate). Dumps with --enable-row-security: the
backup role (pg_read_all_data) reads datastore_consumer_positions through its
read-only policy instead of failing on row level security.

Environment: PGHOST PGPORT PGDATABASE PGUSER PGSSLMODE PGSSLCERT PGSSLKEY
PGSSLROOTCERT, BACKUP_DIR (default /backups), RETENTION (default 7).
USAGE
}

dump() {
	local stamp target
	stamp="$(date -u +%Y%m%dT%H%M%SZ)"
	target="${BACKUP_DIR}/${PGDATABASE}-${stamp}.dump"
	echo "backup.sh: dumping ${PGDATABASE} from ${PGHOST} to ${target}"
	pg_dump --format=custom --enable-row-security --no-password --file "${target}.partial"
	mv "${target}.partial" "${target}"
	echo "backup.sh: wrote $(du -h "${target}" | cut -f1) to ${target}"
}

prune() {
	local old
	rm -f -- "${BACKUP_DIR}"/*.partial
	# Names sort by time (UTC timestamps); keep the newest RETENTION.
	mapfile -t old < <(find "${BACKUP_DIR}" -maxdepth 1 -name "${PGDATABASE}-*.dump" -printf '%f\n' |
		sort -r | tail -n "+$((RETENTION + 1))")
	if [[ ${#old[@]} -gt 0 ]]; then
		echo "backup.sh: deleting ${#old[@]} dump(s) beyond retention ${RETENTION}"
		(cd "${BACKUP_DIR}" && rm -f -- "${old[@]}")
	fi
}

main() {
	if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
		usage
		return 0
	fi
	dump
	prune
}

main "$@"
