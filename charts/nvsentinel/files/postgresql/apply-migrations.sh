#!/usr/bin/env bash
# Apply NVSentinel's PostgreSQL schema migrations with psql (the chart's schema Job).
set -euo pipefail

MIGRATIONS_DIR="${MIGRATIONS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/migrations}"
LOCK_KEY="nvsentinel_store_migrations"
HISTORY_TABLE="nvsentinel_store_migrations"
# A database set up by a pre-release of this chart: its history table had a checksum column.
PRE_RELEASE_SQL="SELECT to_regclass('schema_migrations') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('schema_migrations') AND attname = 'checksum')"
PRE_RELEASE_MESSAGE="this database was set up by a pre-release of the nvsentinel chart (its table schema_migrations records 0001_event_tables.sql); that layout has text ids and another change log and cannot be migrated in place: export the documents, one JSON object a line (psql -AtX -c 'SELECT document FROM health_events' > health_events.json, the same for maintenance_events), create a new database and import them with nvsentinel-store migrate (docs/migration.md)"
NO_TRANSACTION_MARKER="-- nvsentinel:no-transaction"
PSQL="${PSQL:-psql}"

usage() {
	cat <<EOF
Usage: $(basename "$0") [--dir DIR] [apply|status]

Applies (default) or lists the NVSentinel PostgreSQL schema migrations
(NNNN_<name>.sql files in DIR, default: migrations/ next to this script), with
the same protocol as 'nvsentinel-store schema apply':
  - serialised by pg_advisory_lock(hashtext('$LOCK_KEY'));
  - a database set up by a pre-release of this chart (schema_migrations with a
    checksum column) is refused: its layout cannot be migrated in place;
  - recorded in $HISTORY_TABLE(version, name, checksum, applied_at), created
    if missing; name is the file name, checksum the sha256 of the file.
    NVSentinel's own nvsentinel_schema_migrations holds NVSentinel's versions,
    written by migration 0001;
  - a recorded version is skipped; a recorded checksum that differs from the
    file is an error, checked for every file before anything is applied;
  - each file runs in one transaction with its history row, unless
    its first line is '$NO_TRANSACTION_MARKER'.

'status' prints one line per migration: applied|pending|changed VERSION FILE,
and 'unknown VERSION NAME' for recorded versions without a file; it exits 1
when something is pending or changed.

Connection: the libpq environment (PGHOST, PGPORT, PGDATABASE, PGUSER,
PGSSLMODE, PGSSLCERT, PGSSLKEY, PGSSLROOTCERT, PGPASSWORD, ...); connect as the
migration role (nvsentinel_migrator). Needs psql, sha256sum, awk.
Environment: MIGRATIONS_DIR (same as --dir), PSQL (psql command).
EOF
}

die() {
	echo "apply-migrations: $*" >&2
	exit 1
}

# Prints "VERSION FILE CHECKSUM TRANSACTIONAL" per migration file, in version order.
list_migrations() {
	local path file version checksum transactional seen=""
	[[ -d "$MIGRATIONS_DIR" ]] || die "migrations directory $MIGRATIONS_DIR does not exist"
	[[ "$MIGRATIONS_DIR" != *"'"* ]] || die "migrations directory may not contain a quote: $MIGRATIONS_DIR"
	for path in "$MIGRATIONS_DIR"/*.sql; do
		[[ -e "$path" ]] || continue
		file="$(basename "$path")"
		[[ "$file" =~ ^([0-9]{4})_[a-z0-9_]+\.sql$ ]] ||
			die "$path: migration files are named NNNN_<name>.sql (lower case)"
		version=$((10#${BASH_REMATCH[1]}))
		case " $seen " in
			*" $version "*) die "$path: version $version is used by two files" ;;
		esac
		seen="$seen $version"
		if grep -q '^[\]' "$path"; then
			die "$path: psql meta-commands are not allowed in migrations"
		fi
		checksum="$(sha256sum "$path" | awk '{print $1}')"
		transactional=1
		if [[ "$(head -n 1 "$path" | tr -d '\r' | sed 's/[[:space:]]*$//')" == "$NO_TRANSACTION_MARKER" ]]; then
			transactional=0
		fi
		printf '%s %s %s %s\n' "$version" "$file" "$checksum" "$transactional"
	done | sort -n
}

run_psql() {
	"$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"
}

# Writes the psql script that applies the pending migrations in one session.
apply_script() {
	local migrations="$1" version file checksum transactional
	cat <<EOF
SET client_min_messages TO warning;
SELECT pg_advisory_lock(hashtext('$LOCK_KEY')) \\gset lock_
$PRE_RELEASE_SQL AS pre_release \\gset
\\if :pre_release
DO \$m\$ BEGIN RAISE EXCEPTION '${PRE_RELEASE_MESSAGE//\'/\'\'}'; END \$m\$;
\\endif
CREATE TABLE IF NOT EXISTS $HISTORY_TABLE (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
EOF
	# First every checksum, then the applies: a changed file stops everything.
	while read -r version file checksum transactional; do
		cat <<EOF
SELECT count(*) > 0 AS changed FROM $HISTORY_TABLE
 WHERE version = $version AND checksum <> '$checksum' \\gset
\\if :changed
DO \$m\$ BEGIN RAISE EXCEPTION '$MIGRATIONS_DIR/$file: applied with checksum % but the file has %; migrations are forward-only: restore the file and add a new migration instead', (SELECT checksum FROM $HISTORY_TABLE WHERE version = $version), '$checksum'; END \$m\$;
\\endif
EOF
	done <<<"$migrations"
	while read -r version file checksum transactional; do
		cat <<EOF
SELECT count(*) > 0 AS applied FROM $HISTORY_TABLE WHERE version = $version \\gset
\\if :applied
\\else
\\echo 'applying $file'
EOF
		if [[ "$transactional" == 1 ]]; then
			echo "BEGIN;"
		fi
		cat <<EOF
\\i '$MIGRATIONS_DIR/$file'
INSERT INTO $HISTORY_TABLE (version, name, checksum) VALUES ($version, '$file', '$checksum');
EOF
		if [[ "$transactional" == 1 ]]; then
			echo "COMMIT;"
		fi
		printf '%s\n' '\endif'
	done <<<"$migrations"
	echo "SELECT pg_advisory_unlock(hashtext('$LOCK_KEY')) \\gset lock_"
}

do_apply() {
	local migrations
	migrations="$(list_migrations)"
	[[ -n "$migrations" ]] || die "no migration files in $MIGRATIONS_DIR"
	apply_script "$migrations" | run_psql -f - || die "migration failed, nothing after the failing file was applied (see the error above)"
	echo "schema is current"
}

do_status() {
	local migrations recorded="" version file checksum transactional rc=0 rv rname found exists
	migrations="$(list_migrations)"
	pre_release="$(run_psql -A -t -c "$PRE_RELEASE_SQL")" ||
		die "cannot query the database (see the psql error above)"
	[[ "$pre_release" != t ]] || die "$PRE_RELEASE_MESSAGE"
	exists="$(run_psql -A -t -c "SELECT to_regclass('$HISTORY_TABLE') IS NOT NULL")" ||
		die "cannot query the database (see the psql error above)"
	if [[ "$exists" == t ]]; then
		recorded="$(run_psql -A -t -F ' ' -c \
			"SELECT version, name, checksum FROM $HISTORY_TABLE ORDER BY version")"
	fi
	while read -r version file checksum transactional; do
		[[ -n "$version" ]] || continue
		found="$(awk -v v="$version" '$1 == v {print $3}' <<<"$recorded")"
		if [[ -z "$found" ]]; then
			echo "pending $version $file"
			rc=1
		elif [[ "$found" != "$checksum" ]]; then
			echo "changed $version $file"
			rc=1
		else
			echo "applied $version $file"
		fi
		: "$transactional"
	done <<<"$migrations"
	while read -r rv rname _; do
		[[ -n "$rv" ]] || continue
		if ! awk -v v="$rv" '$1 == v {found=1} END {exit !found}' <<<"$migrations"; then
			echo "unknown $rv $rname"
		fi
	done <<<"$recorded"
	return "$rc"
}

main() {
	local command="apply"
	while [[ $# -gt 0 ]]; do
		case "$1" in
			-h | --help)
				usage
				return 0
				;;
			--dir)
				[[ $# -ge 2 ]] || die "--dir needs a directory"
				MIGRATIONS_DIR="$2"
				shift
				;;
			apply | status) command="$1" ;;
			*)
				usage >&2
				die "unknown argument: $1"
				;;
		esac
		shift
	done
	case "$command" in
		apply) do_apply ;;
		status) do_status ;;
	esac
}

main "$@"
