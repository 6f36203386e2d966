"""Health of a PostgreSQL datastore as a service sees it (the ``health`` command).

The checks run on one connection made with the application's settings:
TLS in use, schema version against the migration files, the extraction and
capture triggers present and enabled, the changelog's size and age, and each
change-stream consumer's lag.

Two renderings of a :class:`HealthReport`: :func:`render_table` for people
(aligned columns check / status / detail, then one row per consumer) and
:meth:`HealthReport.as_dict` for scripts (``--json``). The JSON shape is
stable (documented in docs/metrics-and-health.md; fields are only ever added)::

    {"healthy": bool,
     "checks": [{"name": str, "ok": bool, "detail": str}, ...],
     "changelog_rows": int | null,
     "consumers": [{"client_owner": str, "client_name": str, "collection": str,
                    "updated_at": ISO 8601, "expired": bool, "pending_changes": int,
                    "oldest_pending_at": ISO 8601 | null, "lag_seconds": float}, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import psycopg

from nvsentinel_store.errors import MigrationError, StoreError
from nvsentinel_store.providers.postgresql import migrations
from nvsentinel_store.text import table_lines

#: The event tables, whose names are also the change streams' collections.
EVENT_TABLES: Final = ("health_events", "maintenance_events")

#: Triggers the migrations create: table -> trigger names.
EXPECTED_TRIGGERS: Final[dict[str, tuple[str, ...]]] = {
    # NVSentinel's change log trigger (0001) and our extraction (0002).
    **{table: (f"{table}_changes", f"{table}_extract") for table in EVENT_TABLES},
    # Our change positions and pruned frontier (0002).
    "datastore_changelog": ("datastore_changelog_position", "datastore_changelog_record_pruned"),
}

#: The version of NVSentinel's schema its store-client waits for.
NVSENTINEL_SCHEMA_VERSION: Final = 3


#: Changes held back by a running transaction longer than this make the datastore unhealthy.
HELD_BACK_LIMIT_SECONDS: Final = 300.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ConsumerLag:
    client_owner: str
    client_name: str
    collection: str
    updated_at: datetime
    expired: bool
    pending_changes: int
    oldest_pending_at: datetime | None
    #: Age of the oldest change the consumer has not passed (0 when none is pending).
    lag_seconds: float = 0.0


@dataclass
class HealthReport:
    checks: list[Check] = field(default_factory=list)
    consumers: list[ConsumerLag] = field(default_factory=list)
    changelog_rows: int = 0

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "changelog_rows": self.changelog_rows,
            "consumers": [
                {
                    "client_owner": c.client_owner,
                    "client_name": c.client_name,
                    "collection": c.collection,
                    "updated_at": c.updated_at.isoformat(),
                    "expired": c.expired,
                    "pending_changes": c.pending_changes,
                    "oldest_pending_at": c.oldest_pending_at.isoformat()
                    if c.oldest_pending_at
                    else None,
                    "lag_seconds": round(c.lag_seconds, 3),
                }
                for c in self.consumers
            ],
        }


def check(
    conn: psycopg.Connection[Any], sslmode: str, migrations_dir: Path | None = None
) -> HealthReport:
    """Run every check on ``conn`` (autocommit); failures are reported, not raised."""
    report = HealthReport()
    row = conn.execute(
        "SELECT current_user, current_database(), current_setting('server_version')"
    ).fetchone()
    assert row is not None
    report.add("connection", True, f"user {row[0]} on database {row[1]}, PostgreSQL {row[2]}")

    tls = conn.execute(
        "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone()
    if tls is not None and tls[0]:
        report.add("tls", True, f"{tls[1]} {tls[2]} (sslmode {sslmode})")
    else:
        report.add("tls", sslmode == "disable", f"not in use (sslmode {sslmode})")

    try:
        state = migrations.status(conn, migrations_dir)
    except MigrationError as err:
        # No migration files here (an installed client): report what the database says.
        _schema_without_files(conn, report, str(err))
    except (psycopg.Error, StoreError) as err:
        report.add("schema", False, f"cannot read nvsentinel_store_migrations: {err}")
    else:
        detail = f"version {state.version}"
        if state.pending:
            detail += f", pending: {', '.join(m.name for m in state.pending)}"
        if state.mismatched:
            detail += (
                f", changed since applied: {', '.join(m.migration.name for m in state.mismatched)}"
            )
        if state.unknown:
            detail += f", newer than this client: {', '.join(a.name for a in state.unknown)}"
        report.add("schema", state.current, detail)
    _nvsentinel_schema(conn, report)

    rows = conn.execute(
        "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger AS t "
        "JOIN pg_class AS c ON c.oid = t.tgrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
    ).fetchall()
    present = {(str(r[0]), str(r[1])): str(r[2]) for r in rows}
    missing = [
        f"{table}.{name}"
        for table, names in EXPECTED_TRIGGERS.items()
        for name in names
        if (table, name) not in present
    ]
    disabled = [f"{t}.{n}" for (t, n), enabled in present.items() if enabled == "D"]
    total = sum(len(v) for v in EXPECTED_TRIGGERS.values())
    if missing or disabled:
        report.add(
            "triggers",
            False,
            "; ".join(
                part
                for part in (
                    f"missing: {', '.join(missing)}" if missing else "",
                    f"disabled: {', '.join(disabled)}" if disabled else "",
                )
                if part
            ),
        )
    else:
        report.add("triggers", True, f"{total} present and enabled")

    _epoch(conn, report)

    try:
        size = conn.execute(
            "SELECT count(*), min(changed_at), max(changed_at) FROM datastore_changelog"
        ).fetchone()
        assert size is not None
        report.changelog_rows = int(size[0])
        report.add(
            "changelog",
            True,
            f"{size[0]} changes retained"
            + (f", oldest {size[1].isoformat()}, newest {size[2].isoformat()}" if size[0] else ""),
        )
        held = conn.execute(
            "SELECT count(*), min(changed_at), now() - min(changed_at) FROM datastore_changelog "
            "WHERE table_name = ANY(%s) "
            "AND position_txid >= pg_snapshot_xmin(pg_current_snapshot())",
            (list(EVENT_TABLES),),
        ).fetchone()
        assert held is not None
        if held[0]:
            waited = held[2].total_seconds()
            report.add(
                "delivery",
                waited < HELD_BACK_LIMIT_SECONDS,
                f"{held[0]} committed change(s) wait for an older transaction to end "
                f"(oldest written {waited:.0f}s ago); a long-running writing transaction "
                "delays every change stream",
            )
        else:
            report.add("delivery", True, "no committed change waits for an older transaction")
        for lag in conn.execute(
            "SELECT client_owner, client_name, collection, updated_at, expired, "
            "pending_changes, oldest_pending_at, "
            "coalesce(extract(epoch FROM now() - oldest_pending_at), 0)::float8 "
            "FROM datastore_consumer_lag()"
        ).fetchall():
            report.consumers.append(
                ConsumerLag(
                    str(lag[0]),
                    str(lag[1]),
                    str(lag[2]),
                    lag[3],
                    bool(lag[4]),
                    int(lag[5]),
                    lag[6],
                    max(0.0, float(lag[7])),
                )
            )
    except psycopg.Error as err:
        report.add("changelog", False, f"cannot read: {str(err).strip().splitlines()[0]}")
    return report


def _nvsentinel_schema(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """NVSentinel's own schema version: its services start only at version 3 or later."""
    try:
        row = conn.execute(
            "SELECT coalesce(max(version), 0) FROM nvsentinel_schema_migrations"
        ).fetchone()
    except psycopg.Error as err:
        report.add(
            "nvsentinel-schema",
            False,
            f"cannot read nvsentinel_schema_migrations: {str(err).strip().splitlines()[0]}",
        )
        return
    assert row is not None
    version = int(row[0])
    report.add(
        "nvsentinel-schema",
        version >= NVSENTINEL_SCHEMA_VERSION,
        f"version {version} (NVSentinel's services wait for {NVSENTINEL_SCHEMA_VERSION})",
    )


def _epoch(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """Whether the change positions belong to this server (migration 0004, backup/restore)."""
    try:
        row = conn.execute(
            "SELECT e.epoch, e.system_identifier = s.system_identifier, e.adopted_at "
            "FROM datastore_epoch AS e, pg_control_system() AS s"
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return  # a schema before 0004: the schema check already says so
    except psycopg.Error as err:
        report.add("epoch", False, f"cannot read datastore_epoch: {str(err).strip()}")
        return
    if row is None:
        report.add("epoch", False, "datastore_epoch is empty: change streams refuse to start")
    elif not row[1]:
        report.add(
            "epoch",
            False,
            "restored from a backup of another server and not adopted: change streams refuse "
            "to start until the migration role runs SELECT * FROM datastore_adopt_restore()",
        )
    else:
        report.add("epoch", True, f"token epoch {int(row[0]):x}, this server's change positions")


def render_table(report: HealthReport) -> str:
    """The report for people: a table of checks, a table of consumers, then the verdict."""
    lines = table_lines(
        ("CHECK", "STATUS", "DETAIL"),
        [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in report.checks],
    )
    if report.consumers:
        lines.append("")
        lines += table_lines(
            ("CONSUMER", "OWNER", "COLLECTION", "PENDING", "LAG", "STATE", "LAST STORED"),
            [
                (
                    c.client_name,
                    c.client_owner,
                    c.collection,
                    str(c.pending_changes),
                    f"{c.lag_seconds:.1f}s",
                    "expired" if c.expired else "live",
                    c.updated_at.isoformat(timespec="seconds"),
                )
                for c in report.consumers
            ],
        )
    lines.append("")
    lines.append("healthy" if report.healthy else "UNHEALTHY")
    return "\n".join(lines) + "\n"


def _schema_without_files(conn: psycopg.Connection[Any], report: HealthReport, why: str) -> None:
    try:
        row = conn.execute(
            "SELECT max(version), count(*) FROM nvsentinel_store_migrations"
        ).fetchone()
    except psycopg.Error as err:
        report.add("schema", False, f"cannot read nvsentinel_store_migrations: {err}")
        return
    assert row is not None
    if not row[1]:
        report.add("schema", False, "no migration applied")
    else:
        report.add("schema", True, f"version {row[0]} (not compared with files: {why})")


def unreachable(reason: str) -> HealthReport:
    """The report when no connection could be made (same JSON shape, one failed check)."""
    report = HealthReport(changelog_rows=0)
    report.add("connection", False, reason)
    return report
