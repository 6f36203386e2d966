"""The postgres-exporter's custom queries, exactly as the chart renders them, run as the
monitor role the subchart creates (pg_monitor) against a populated store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from tests.datastore.subchart_scripts import MONITOR_USER, run_initdb_script, scripts
from tests.fixtures import chart

pytestmark = pytest.mark.datastore


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return chart.render(["values-postgresql.yaml"])


@pytest.fixture(scope="module")
def queries(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-metrics-queries")["data"]
    loaded: dict[str, Any] = yaml.safe_load(data["queries.yaml"])
    return loaded


def run(conn: psycopg.Connection[Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One query as the exporter runs it: every column must be a declared metric or label."""
    cur = conn.execute(entry["query"])
    assert cur.description is not None
    columns = [c.name for c in cur.description]
    declared = [next(iter(m)) for m in entry["metrics"]]
    assert columns == declared
    usage = {name: m[name]["usage"] for m, name in zip(entry["metrics"], declared, strict=True)}
    result = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    for row in result:
        for name, cell in row.items():
            if usage[name] == "LABEL":
                assert isinstance(cell, str), (name, cell)
            else:
                assert usage[name] == "GAUGE" and isinstance(cell, int | float), (name, cell)
    return result


def test_exporter_queries_report_changelog_consumer_lag_and_the_transaction_holding_delivery(
    objects: list[dict[str, Any]],
    queries: dict[str, Any],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    tmp_path: Path,
) -> None:
    assert set(queries) == {
        "nvsentinel_changelog",
        "nvsentinel_consumer",
        "nvsentinel_oldest_transaction",
    }
    run_initdb_script(
        schema_database.server, schema_database.name, scripts(objects, tmp_path / "scripts")
    )
    events = store.collection("health_events")
    drainer = events.watch(client_name="node-drainer")
    drainer.save_token()
    drainer.close()
    for n in range(3):
        events.insert_one({"healthevent": {"nodename": f"n{n}"}})

    with (
        psycopg.connect(schema_database.conninfo(user=MONITOR_USER), autocommit=True) as monitor,
        psycopg.connect(schema_database.conninfo(user="nvsentinel")) as holder,
    ):
        idle = {r["collection"]: r for r in run(monitor, queries["nvsentinel_changelog"])}
        assert idle["health_events"]["changes"] == 3
        assert idle["health_events"]["held_back_changes"] == 0
        assert idle["maintenance_events"]["changes"] == 0
        assert run(monitor, queries["nvsentinel_oldest_transaction"]) == [{"age_seconds": 0.0}]

        # An open transaction with an id holds back a change committed after it.
        holder.execute("SELECT pg_current_xact_id()")
        events.insert_one({"healthevent": {"nodename": "held"}})
        time.sleep(1.1)
        held = {r["collection"]: r for r in run(monitor, queries["nvsentinel_changelog"])}
        assert held["health_events"]["changes"] == 4
        assert held["health_events"]["held_back_changes"] == 1
        assert held["health_events"]["oldest_held_back_age_seconds"] >= 1.0
        assert held["health_events"]["oldest_change_age_seconds"] >= 1.0
        oldest = run(monitor, queries["nvsentinel_oldest_transaction"])
        assert oldest[0]["age_seconds"] >= 1.0

        consumers = run(monitor, queries["nvsentinel_consumer"])
        assert [(c["client_name"], c["client_owner"], c["collection"]) for c in consumers] == [
            ("node-drainer", "nvsentinel", "health_events")
        ]
        assert consumers[0]["pending_changes"] == 4
        assert consumers[0]["lag_seconds"] >= 1.0
        assert consumers[0]["expired"] == 0

        holder.rollback()
        released = {r["collection"]: r for r in run(monitor, queries["nvsentinel_changelog"])}
        assert released["health_events"]["held_back_changes"] == 0
        assert run(monitor, queries["nvsentinel_oldest_transaction"]) == [{"age_seconds": 0.0}]

        # Names and counts only: the monitor role cannot read documents or tokens.
        for table in ("health_events", "datastore_changelog", "resume_tokens"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                monitor.execute(f"SELECT 1 FROM {table} LIMIT 1")
