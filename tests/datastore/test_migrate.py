"""``nvsentinel-store migrate``: mongoexport files and a live MongoDB wire server into PostgreSQL.

The files are generated in mongoexport's format (compact extended JSON, one
document per line, relaxed and canonical modes); the live source is FerretDB.
The target is the TLS test server with the schema applied; the importer
connects as the tables' owner (``nvsentinel_migrator``), as the guide says.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bson.objectid import ObjectId
from pymongo import MongoClient

from devsupport.ca import Pki
from devsupport.documents import as_stored_json, documents
from devsupport.mongoexport import export_line, write_export
from devsupport.postgres import MIGRATION_USER, PostgresDatabase
from nvsentinel_store import cli, migrate
from nvsentinel_store.config import Settings, mongo_client_kwargs
from nvsentinel_store.errors import ConfigError
from nvsentinel_store.migrate.convert import rfc3339
from nvsentinel_store.migrate.importer import Importer
from nvsentinel_store.migrate.sources import mongo_reader
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from nvsentinel_store.query import encode_datetime, json_equal
from nvsentinel_store.store import WatchOptions
from tests.fixtures.ferretdb import FerretDBServer

pytestmark = pytest.mark.datastore

Row = tuple[Any, ...]


def env_for(database: PostgresDatabase, user: str = MIGRATION_USER) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATASTORE_"))}
    env.pop("MONGODB_CLIENT_CERT_MOUNT_PATH", None)
    env.pop("POSTGRESQL_CLIENT_CERT_MOUNT_PATH", None)
    env.update(database.datastore_env(user=user))
    return env


def run(database: PostgresDatabase, *args: str, user: str = MIGRATION_USER) -> tuple[int, str, str]:
    """``nvsentinel-store migrate ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["migrate", *args], env=env_for(database, user), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def summary(stdout: str) -> dict[str, list[str]]:
    """The summary table: collection -> [read, imported, already present, rejected, in PG]."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("health_events", "maintenance_events") and len(parts) == 6:
            rows[parts[0]] = [p.replace(",", "") for p in parts[1:]]
    return rows


def query(database: PostgresDatabase, text: str, *params: Any) -> list[Row]:
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        cur = conn.execute(text, params or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def export_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nvsentinel-export-") as path:
        yield Path(path)


@pytest.fixture
def exported(export_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """300 health events (relaxed mode) and 60 maintenance events (canonical mode) on disk."""
    docs = {
        "health_events": list(documents("health_events", 300, seed=7)),
        "maintenance_events": list(documents("maintenance_events", 60, seed=8)),
    }
    write_export(export_dir / "health_events.json", docs["health_events"], "relaxed")
    write_export(export_dir / "maintenance_events.json", docs["maintenance_events"], "canonical")
    return docs


#: A UUID as ``nvsentinel_document_uuid`` recognises one (any case, hyphens optional).
UUID_TEXT = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
#: NVSentinel's RecommendedAction enum names (its health_events.recommended_action column).
ACTION_NAMES = {
    0: "NONE",
    2: "COMPONENT_RESET",
    5: "CONTACT_SUPPORT",
    15: "RESTART_VM",
    24: "RESTART_BM",
}


def row_uuid(doc_id: str) -> uuid.UUID:
    """The row id the schema derives from a document's ``_id``, computed here on its own:
    the ``_id`` itself when it is a UUID, else the UUID md5('nvsentinel:' || _id)."""
    if UUID_TEXT.fullmatch(doc_id):
        return uuid.UUID(doc_id)
    return uuid.UUID(hashlib.md5(f"nvsentinel:{doc_id}".encode()).hexdigest())


def stored(database: PostgresDatabase, table: str) -> dict[str, Any]:
    """The table's documents by their ``_id`` text; every row's id is derived from it."""
    rows = query(database, f"SELECT id, document ->> '_id', document FROM {table}")
    for row_id, doc_id, _ in rows:
        assert row_id == row_uuid(doc_id), (table, row_id, doc_id)
    return {str(r[1]): r[2] for r in rows}


def changelog_count(database: PostgresDatabase) -> int:
    return int(query(database, "SELECT count(*) FROM datastore_changelog")[0][0])


def test_import_keeps_ids_documents_and_extracted_columns_from_relaxed_and_canonical_files(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    code, out, err = run(schema_database, "--from-files", str(export_dir), "--batch-size", "70")
    assert code == 0, out + err
    assert summary(out) == {
        "health_events": ["300", "300", "0", "0", "300"],
        "maintenance_events": ["60", "60", "0", "0", "60"],
    }, out

    for table, docs in exported.items():
        rows = stored(schema_database, table)
        assert len(rows) == len(docs)
        for doc in docs:
            want = as_stored_json(doc)
            assert json_equal(rows[str(doc["_id"])], want), (rows[str(doc["_id"])], want)

    # Our typed columns and NVSentinel's, both filled from the imported documents
    # (NVSentinel's services query theirs).
    columns = {
        str(r[0]): r[1:]
        for r in query(
            schema_database,
            "SELECT document ->> '_id', node_name, check_name, is_fatal, recommended_action_code, "
            "created_at, event_timestamp, quarantine_status, eviction_status, remediated, "
            "last_remediation_at, event_type, severity, recommended_action, node_quarantined, "
            "user_pods_eviction_status, fault_remediated, last_remediation_timestamp "
            "FROM health_events",
        )
    }
    for doc in exported["health_events"]:
        he, st = doc["healthevent"], doc["healtheventstatus"]
        generated = he["generatedtimestamp"]
        assert columns[str(doc["_id"])] == (
            he["nodename"],
            he["checkname"],
            he["isfatal"],
            he["recommendedaction"],
            doc["createdAt"],
            datetime.fromtimestamp(generated["seconds"] + generated["nanos"] / 1e9, UTC),
            st["nodequarantined"],
            st["userpodsevictionstatus"]["status"] or None,
            st["faultremediated"],
            st["lastremediationtimestamp"],
            he["checkname"],
            he["componentclass"],
            ACTION_NAMES[he["recommendedaction"]],
            st["nodequarantined"],
            st["userpodsevictionstatus"]["status"] or "NotStarted",
            st["faultremediated"],
            st["lastremediationtimestamp"],
        )
    maintenance = {
        str(r[0]): r[1:]
        for r in query(
            schema_database,
            "SELECT document ->> '_id', event_id, csp, cluster_name, node_name, status, "
            "csp_status, scheduled_start_time, actual_end_time, event_received_timestamp, "
            "last_updated_timestamp FROM maintenance_events",
        )
    }
    for doc in exported["maintenance_events"]:
        assert maintenance[str(doc["_id"])] == (
            doc["eventId"],
            doc["csp"],
            doc["clusterName"],
            doc["nodeName"],
            doc["status"],
            doc["cspStatus"],
            doc["scheduledStartTime"],
            doc.get("actualEndTime"),
            doc["eventReceivedTimestamp"],
            doc["lastUpdatedTimestamp"],
        )


def test_second_run_adds_nothing_and_reports_every_document_already_present(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    assert run(schema_database, "--from-files", str(export_dir))[0] == 0
    before = {t: stored(schema_database, t) for t in exported}
    row_versions = query(schema_database, "SELECT id, xmin::text FROM health_events ORDER BY id")

    code, out, err = run(schema_database, "--from-files", str(export_dir))

    assert code == 0, out + err
    assert summary(out) == {
        "health_events": ["300", "0", "300", "0", "300"],
        "maintenance_events": ["60", "0", "60", "0", "60"],
    }, out
    assert {t: stored(schema_database, t) for t in exported} == before
    assert query(schema_database, "SELECT id, xmin::text FROM health_events ORDER BY id") == (
        row_versions
    ), "a re-run must not rewrite (update) stored documents"


def test_import_wakes_no_consumer_and_leaves_change_capture_on(
    schema_database: PostgresDatabase,
    store: PostgresStore,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    options = WatchOptions(poll_interval=0.05)
    events = store.collection("health_events")
    with events.watch(client_name="fault-quarantine", options=options) as stream:
        stream.save_token()

    code, out, err = run(schema_database, "--from-files", str(export_dir))
    assert code == 0, out + err
    assert "without change events" in out
    assert changelog_count(schema_database) == 0

    # Every trigger of the event tables is on again, NVSentinel's change log
    # triggers (the ones the import disables) included.
    enabled = query(
        schema_database,
        "SELECT tgname::text, tgenabled::text FROM pg_trigger "
        "WHERE tgrelid IN ('health_events'::regclass, 'maintenance_events'::regclass) "
        "AND NOT tgisinternal ORDER BY 1",
    )
    assert {"health_events_changes", "maintenance_events_changes"} <= {t for t, _ in enabled}
    assert all(state == "O" for _, state in enabled), enabled

    live_id = events.insert_one({"healthevent": {"nodename": "gpu-node-after-import"}})
    with events.watch(client_name="fault-quarantine", options=options) as stream:
        first = stream.try_next(timeout=10)
        assert first is not None
        assert first["documentKey"] == {"_id": live_id}, "the consumer saw imported history"
        assert stream.try_next(timeout=0.3) is None


def test_capture_changes_imports_as_the_application_and_each_document_is_an_insert(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    code, out, err = run(schema_database, "--from-files", str(export_dir), user="nvsentinel")
    assert code == cli.EXIT_USAGE
    assert "nvsentinel_migrator" in err and "--capture-changes" in err, err
    assert stored(schema_database, "health_events") == {}

    code, out, err = run(
        schema_database, "--from-files", str(export_dir), "--capture-changes", user="nvsentinel"
    )

    assert code == 0, out + err
    rows = query(
        schema_database,
        "SELECT table_name::text, operation::text, count(*) FROM datastore_changelog "
        "GROUP BY 1, 2 ORDER BY 1",
    )
    assert rows == [("health_events", "INSERT", 300), ("maintenance_events", "INSERT", 60)]


def test_bad_documents_go_to_the_rejects_file_with_line_numbers_and_the_rest_imports(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    good = list(documents("health_events", 6, seed=3))
    lines = [export_line(d) for d in good]
    bad = {
        2: ('{"_id":{"$oid":"65f000000000000000000001"},"healthevent":{"nodename":', "not valid"),
        4: (
            '{"_id":"no-node","healthevent":{"agent":"gpu-health-monitor"}}',
            "healthevent.nodename",
        ),
        6: ('{"_id":"nan","healthevent":{"nodename":"n1","x":{"$numberDouble":"NaN"}}}', "nan"),
        8: (
            '{"_id":"far","createdAt":{"$date":{"$numberLong":"-99999999999999999"}},'
            '"healthevent":{"nodename":"n1"}}',
            "outside the years",
        ),
        # Passes the checks; PostgreSQL refuses it (jsonb has no lone surrogates).
        10: (
            '{"_id":"surrogate","healthevent":{"nodename":"n1","message":"\\ud800"}}',
            "refused by PostgreSQL",
        ),
        11: ('{"healthevent":{"nodename":"n1"}}', "missing _id"),
    }
    # Changed on purpose with NVSentinel's schema (0002): an impossible date no
    # longer fails the write, it is read as no date. The document is imported
    # exactly as written and its created_at is the time of the import.
    feb30 = '{"_id":"feb30","createdAt":"2026-02-30T00:00:00Z","healthevent":{"nodename":"n1"}}'
    body: list[str] = []
    it = iter(lines)
    for number in range(1, 13):
        body.append(bad[number][0] if number in bad else next(it))
    body.append(feb30)  # line 13
    source = export_dir / "health_events-2026-03.json"
    source.write_text("\n".join(body) + "\n", encoding="utf-8")
    rejects = export_dir / "rejects.ndjson"

    started = query(schema_database, "SELECT now()")[0][0]
    code, out, err = run(
        schema_database, "--from-files", str(source), "--rejects", str(rejects), "--verify"
    )
    finished = query(schema_database, "SELECT now()")[0][0]

    assert code == 1, out + err
    assert summary(out)["health_events"] == ["13", "7", "0", "6", "7"], out
    documents_stored = stored(schema_database, "health_events")
    assert set(documents_stored) == {str(d["_id"]) for d in good} | {"feb30"}
    assert documents_stored["feb30"] == json.loads(feb30)
    created_at = query(
        schema_database, "SELECT created_at FROM health_events WHERE document ->> '_id' = 'feb30'"
    )[0][0]
    assert started <= created_at <= finished
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    lines_of = [int(r["where"].rsplit(":", 1)[1]) for r in written]
    assert sorted(lines_of) == sorted(bad)
    assert all(r["where"].startswith(f"{source}:") for r in written)
    for record in written:
        number = int(record["where"].rsplit(":", 1)[1])
        raw, reason = bad[number]
        assert record["raw"] == raw, "a reject is kept exactly as it was read"
        assert reason.lower() in record["reason"].lower(), record
        assert record["collection"] == "health_events"
    assert f"{source}:2" in err and "verified" in out


def test_maintenance_event_whose_eventId_is_stored_under_another_id_is_rejected(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    first, second = documents("maintenance_events", 2, seed=5)
    clash = dict(second, _id=ObjectId(), eventId=first["eventId"])
    write_export(export_dir / "maintenance_events.json", [first, clash, second])

    code, out, err = run(schema_database, "--from-files", str(export_dir))

    assert code == 1
    assert summary(out)["maintenance_events"] == ["3", "2", "0", "1", "2"], out
    assert f"eventId {first['eventId']} is already stored under _id {first['_id']}" in err


def test_dry_run_checks_everything_and_writes_nothing(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    (export_dir / "health_events.json").open("a").write('{"_id":"x","healthevent":{}}\n')

    code, out, err = run(schema_database, "--from-files", str(export_dir), "--dry-run")

    assert code == 1, out + err
    assert "would import" in out and "dry run, nothing written" in out
    assert summary(out) == {
        "health_events": ["301", "300", "0", "1", "0"],
        "maintenance_events": ["60", "60", "0", "0", "0"],
    }, out
    assert stored(schema_database, "health_events") == {}
    assert stored(schema_database, "maintenance_events") == {}
    assert changelog_count(schema_database) == 0

    assert run(schema_database, "--from-files", str(export_dir))[0] == 1
    _, out, _ = run(schema_database, "--from-files", str(export_dir), "--dry-run")
    assert summary(out)["health_events"] == ["301", "0", "300", "1", "300"], out


def test_verify_passes_after_import_and_names_a_stored_document_that_differs(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    code, out, err = run(schema_database, "--from-files", str(export_dir), "--verify")
    assert code == 0, out + err
    assert out.rstrip().endswith("verified"), out

    victim = exported["health_events"][17]
    query(
        schema_database,
        "UPDATE health_events SET document = jsonb_set(document, "
        "'{healthevent,nodename}', '\"gpu-node-tampered\"') WHERE document ->> '_id' = %s",
        str(victim["_id"]),
    )
    code, out, err = run(
        schema_database, "--from-files", str(export_dir), "--verify", "--sample", "1000"
    )

    assert code == 1, out + err
    assert "VERIFY FAILED" in out
    assert f"_id {victim['_id']} differs: healthevent.nodename" in out, out
    assert "gpu-node-tampered" in out


def test_dry_run_verify_checks_without_writing_and_names_a_missing_document(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    assert run(schema_database, "--from-files", str(export_dir))[0] == 0
    gone = str(exported["maintenance_events"][3]["_id"])
    query(schema_database, "DELETE FROM maintenance_events WHERE document ->> '_id' = %s", gone)

    code, out, err = run(schema_database, "--from-files", str(export_dir), "--dry-run", "--verify")

    assert code == 1, out + err
    assert f"maintenance_events: missing in PostgreSQL: {gone}" in out
    assert stored(schema_database, "maintenance_events").keys() == {
        str(d["_id"]) for d in exported["maintenance_events"]
    } - {gone}, "a dry run must not put the document back"
    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER)) as conn:
        report = migrate.migrate(
            conn,
            migrate.file_sources([export_dir], ["maintenance_events"]),
            migrate.MigrateOptions(dry_run=True, verify=True),
        )
    assert report.verify is not None
    result = report.verify["maintenance_events"]
    assert (result.expected, result.found, result.ok) == (60, 59, False)


def test_literal_mongoexport_lines_of_every_extended_json_type(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    uid = "3f2a1b4c-5d6e-4f70-8192-a3b4c5d6e7f8"
    relaxed = (
        '{"_id":{"$oid":"65f1a2b3c4d5e6f708192a3b"},"createdAt":{"$date":"2026-03-01T10:00:00.123Z"},'
        '"healthevent":{"nodename":"gpu-node-0001","recommendedaction":24,'
        '"generatedtimestamp":{"seconds":1772359200,"nanos":5},"ratio":0.5,'
        '"isfatal":true,"errorcode":["79"]},'
        '"healtheventstatus":{"lastremediationtimestamp":{"$date":"2026-03-01T11:00:00Z"}}}'
    )
    canonical = (
        '{"_id":{"$uuid":"' + uid + '"},'
        '"createdAt":{"$date":{"$numberLong":"1772359200123"}},'
        '"healthevent":{"nodename":"gpu-node-0002","version":{"$numberInt":"1"},'
        '"recommendedaction":{"$numberInt":"5"},'
        '"generatedtimestamp":{"seconds":{"$numberLong":"1772359200"},"nanos":{"$numberInt":"7"}},'
        '"ratio":{"$numberDouble":"0.25"},"big":{"$numberLong":"9007199254740993"},'
        '"price":{"$numberDecimal":"12.345678901234567890"},"whole":{"$numberDecimal":"42"},'
        '"blob":{"$binary":{"base64":"AAEC","subType":"00"}},'
        '"seen":{"$timestamp":{"t":1772359200,"i":3}}}}'
    )
    legacy = (
        '{"_id":"legacy-1","createdAt":{"$date":"2026-03-01T05:00:00.500-0500"},'
        '"healthevent":{"nodename":"gpu-node-0003"}}'
    )
    (export_dir / "health_events.json").write_text("\n".join([relaxed, canonical, legacy]) + "\n")

    code, out, err = run(schema_database, "--from-files", str(export_dir))

    assert code == 0, out + err
    rows = stored(schema_database, "health_events")
    assert rows["65f1a2b3c4d5e6f708192a3b"] == {
        "_id": "65f1a2b3c4d5e6f708192a3b",
        "createdAt": "2026-03-01T10:00:00.123000Z",
        "healthevent": {
            "nodename": "gpu-node-0001",
            "recommendedaction": 24,
            "generatedtimestamp": {"seconds": 1772359200, "nanos": 5},
            "ratio": 0.5,
            "isfatal": True,
            "errorcode": ["79"],
        },
        "healtheventstatus": {"lastremediationtimestamp": "2026-03-01T11:00:00.000000Z"},
    }
    assert rows[uid] == {
        "_id": uid,
        "createdAt": "2026-03-01T10:00:00.123000Z",
        "healthevent": {
            "nodename": "gpu-node-0002",
            "version": 1,
            "recommendedaction": 5,
            "generatedtimestamp": {"seconds": 1772359200, "nanos": 7},
            "ratio": 0.25,
            "big": 9007199254740993,
            "price": "12.345678901234567890",
            "whole": 42,
            "blob": "AAEC",
            "seen": {"t": 1772359200, "i": 3},
        },
    }
    assert rows["legacy-1"]["createdAt"] == "2026-03-01T10:00:00.500000Z"
    created: dict[str, datetime] = dict(
        query(schema_database, "SELECT document ->> '_id', created_at FROM health_events")
    )
    assert created[uid] == datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert created["legacy-1"] == datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)


def test_file_names_map_to_collections_and_others_are_refused(tmp_path: Path) -> None:
    for name in ("health_events.json", "maintenance-events-part2.ndjson.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = migrate.file_sources([tmp_path], ["health_events", "maintenance_events"])
    assert sorted((s.collection, Path(s.name).name) for s in found) == [
        ("health_events", "health_events.json"),
        ("maintenance_events", "maintenance-events-part2.ndjson.gz"),
    ]
    other = tmp_path / "export.json"
    other.write_bytes(b"")
    with pytest.raises(ConfigError, match="names no collection"):
        migrate.file_sources([other], ["health_events", "maintenance_events"])
    assert migrate.file_sources([other], ["maintenance_events"])[0].collection == (
        "maintenance_events"
    )


def test_progress_is_logged_with_counts_and_rate_when_not_on_a_terminal(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nvsentinel_store.cli", "migrate", "--from-files", str(export_dir)],
        env=env_for(schema_database),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "health_events: 300 read, 300 imported, 0 already present, 0 rejected" in result.stderr
    assert "docs/s (done)" in result.stderr
    assert "\r" not in result.stderr


# -- live MongoDB (FerretDB) -------------------------------------------------------------


@pytest.fixture
def mongo_source(
    ferretdb_sqlite_server: FerretDBServer, test_ca: Pki
) -> Iterator[tuple[Any, list[str]]]:
    """A fresh database on FerretDB and the CLI options that reach it."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    certs = test_ca.client("nvsentinel")
    settings = Settings.from_env(
        {
            "DATASTORE_PROVIDER": "mongodb",
            "DATASTORE_HOST": "localhost",
            "DATASTORE_PORT": str(ferretdb_sqlite_server.port),
            "DATASTORE_DATABASE": name,
            "MONGODB_CLIENT_CERT_MOUNT_PATH": str(certs.path),
        }
    )
    with tempfile.TemporaryDirectory() as pem_dir:
        kwargs = mongo_client_kwargs(settings, pem_directory=Path(pem_dir))
        kwargs.pop("authMechanism")  # FerretDB: TLS client certificate, no X509 auth
        kwargs.pop("authSource")
        client: MongoClient[dict[str, Any]] = MongoClient(**kwargs)
    options = [
        "--from-mongodb",
        "--source-host=localhost",
        f"--source-port={ferretdb_sqlite_server.port}",
        f"--source-database={name}",
        f"--source-cert-dir={certs.path}",
        "--source-auth=none",
    ]
    try:
        yield client[name], options
    finally:
        client.drop_database(name)
        client.close()


def test_live_mongodb_source_imports_both_collections_and_verifies(
    schema_database: PostgresDatabase, mongo_source: tuple[Any, list[str]]
) -> None:
    database, options = mongo_source
    docs = {
        "health_events": list(documents("health_events", 240, seed=11)),
        "maintenance_events": list(documents("maintenance_events", 40, seed=12)),
    }
    for name, items in docs.items():
        database[name].insert_many([dict(d) for d in items])
    database["health_events"].insert_one({"_id": "no-node", "healthevent": {"agent": "x"}})

    code, out, err = run(schema_database, *options, "--verify", "--batch-size", "100")

    assert code == 1, out + err  # the one bad document
    assert summary(out) == {
        "health_events": ["241", "240", "0", "1", "240"],
        "maintenance_events": ["40", "40", "0", "0", "40"],
    }, out
    assert "verified" in out.splitlines()[-1], out
    assert "health_events _id no-node: missing required field healthevent.nodename" in err
    for table, items in docs.items():
        rows = stored(schema_database, table)
        for doc in items:
            assert json_equal(rows[str(doc["_id"])], as_stored_json(doc))

    code, out, err = run(schema_database, *options, "--collection", "maintenance_events")
    assert code == 0, out + err
    assert summary(out) == {"maintenance_events": ["40", "0", "40", "0", "40"]}, out


def test_live_source_without_certificates_is_a_usage_error(
    schema_database: PostgresDatabase,
) -> None:
    code, _, err = run(schema_database, "--from-mongodb", "--source-host", "localhost")
    assert code == cli.EXIT_USAGE
    assert "--source-cert-dir" in err


def test_dates_are_written_exactly_as_the_python_store_writes_them() -> None:
    samples = [
        datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC),
        datetime(2026, 3, 1, 5, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 0, 0),  # naive: UTC, as the store reads it
    ]
    for value in samples:
        assert rfc3339(value) == encode_datetime(value)


def test_a_file_parsed_by_a_separate_process_imports_the_same_documents_and_rejects(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    docs = list(documents("health_events", 120, seed=21))
    lines = [export_line(d) for d in docs]
    lines.insert(50, '{"_id":"bad","healthevent":{}}')
    lines.insert(90, "not json")
    (export_dir / "health_events.json").write_text("\n".join(lines) + "\n")
    rejects: list[migrate.Reject] = []

    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER)) as conn:
        report = migrate.migrate(
            conn,
            migrate.file_sources([export_dir], ["health_events"]),
            migrate.MigrateOptions(batch_size=40, subprocess_min_bytes=0, verify=True),
            on_reject=rejects.append,
        )

    counts = report.summaries["health_events"]
    assert (counts.read, counts.imported, counts.rejected) == (122, 120, 2)
    assert sorted(r.where.rsplit(":", 1)[1] for r in rejects) == ["51", "91"]
    assert report.verified is True
    rows = stored(schema_database, "health_events")
    for doc in docs:
        assert json_equal(rows[str(doc["_id"])], as_stored_json(doc))


def test_a_service_write_during_an_import_batch_waits_for_it_and_is_captured(
    schema_database: PostgresDatabase,
    store: PostgresStore,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = store.collection("health_events")
    original = Importer._capture
    live: dict[str, Any] = {}

    def capture_then_write_concurrently(importer: Importer, on: bool) -> None:
        original(importer, on)
        if on or "thread" in live or importer.collection != "health_events":
            return

        # Capture is off inside the first batch's transaction: a service inserts now.
        def service_insert() -> None:
            live["id"] = events.insert_one({"healthevent": {"nodename": "gpu-node-live"}})

        live["thread"] = threading.Thread(target=service_insert)
        live["thread"].start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = query(
                schema_database,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )[0][0]
            if waiting:
                return
            time.sleep(0.02)
        raise AssertionError("the service's insert did not wait for the import batch")

    monkeypatch.setattr(Importer, "_capture", capture_then_write_concurrently)
    code, out, err = run(schema_database, "--from-files", str(export_dir), "--batch-size", "100")
    live["thread"].join(timeout=30)

    assert code == 0, out + err
    changes = query(
        schema_database,
        "SELECT table_name::text, operation::text, record_id, new_values -> 'document' ->> '_id' "
        "FROM datastore_changelog",
    )
    assert changes == [("health_events", "INSERT", row_uuid(live["id"]), live["id"])]
    assert len(stored(schema_database, "health_events")) == 301


def test_gzipped_export_files_are_read(schema_database: PostgresDatabase, export_dir: Path) -> None:
    docs = list(documents("maintenance_events", 25, seed=31))
    text = "".join(export_line(d, "canonical") + "\n" for d in docs)
    (export_dir / "maintenance_events.json.gz").write_bytes(gzip.compress(text.encode()))

    code, out, err = run(schema_database, "--from-files", str(export_dir))

    assert code == 0, out + err
    assert summary(out) == {"maintenance_events": ["25", "25", "0", "0", "25"]}, out
    assert set(stored(schema_database, "maintenance_events")) == {str(d["_id"]) for d in docs}


def test_progress_line_is_redrawn_in_place_on_request(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    code, out, err = run(
        schema_database, "--from-files", str(export_dir), "--progress", "line", "--batch-size", "50"
    )
    assert code == 0, out + err
    redraws = err.split("\r\033[K")
    assert len(redraws) > 6, err  # one per batch: 6 + 2 batches
    assert redraws[-1].startswith("maintenance_events: 60 read, 60 imported") and err.endswith("\n")


# -- nesting limit -------------------------------------------------------------------------


def nested_line(doc_id: str, depth: int, inner: str = "1") -> str:
    """A health event whose objects and arrays nest ``depth`` levels (the document is 1)."""
    levels = depth - 2  # the document and healthevent
    value = '{"a":[' * (levels // 2) + ('{"a":' + inner + "}" if levels % 2 else inner)
    value += "]}" * (levels // 2)
    return f'{{"_id":"{doc_id}","healthevent":{{"nodename":"n1","x":{value}}}}}'


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "parser-process"])
def test_a_line_nested_too_deep_is_rejected_with_its_line_and_the_rest_imports(
    schema_database: PostgresDatabase, export_dir: Path, in_child: bool
) -> None:
    """Before: json.loads' RecursionError ended the import (in-process: a traceback; in the
    parser process: 'reading failed') after the batches before it were committed."""
    good = list(documents("health_events", 30, seed=31))
    lines = [export_line(d) for d in good]
    lines.insert(3, nested_line("at-limit", 100))
    lines.insert(10, nested_line("one-too-deep", 101))
    lines.insert(20, nested_line("very-deep", 100_000))
    lines.insert(25, nested_line("deep-extended-json", 5_000, '{"$numberLong":"7"}'))
    (export_dir / "health_events.json").write_text("\n".join(lines) + "\n")
    rejects: list[migrate.Reject] = []

    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER)) as conn:
        report = migrate.migrate(
            conn,
            migrate.file_sources([export_dir], ["health_events"]),
            migrate.MigrateOptions(batch_size=5, subprocess_min_bytes=0 if in_child else None),
            on_reject=rejects.append,
        )

    counts = report.summaries["health_events"]
    assert (counts.read, counts.imported, counts.rejected) == (34, 31, 3)
    source = export_dir / "health_events.json"
    assert [r.where for r in rejects] == [f"{source}:11", f"{source}:21", f"{source}:26"]
    for reject in rejects:
        assert "nested deeper than 100 levels" in reject.reason, reject.reason
    rows = stored(schema_database, "health_events")
    assert set(rows) == {str(d["_id"]) for d in good} | {"at-limit"}
    assert rows["at-limit"] == json.loads(nested_line("at-limit", 100))


def test_a_too_deep_line_is_a_reject_of_the_cli_and_exit_1(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    good = list(documents("health_events", 4, seed=32))
    lines = [export_line(d) for d in good]
    lines.insert(2, nested_line("very-deep", 50_000))
    source = export_dir / "health_events.json"
    source.write_text("\n".join(lines) + "\n")
    rejects = export_dir / "rejects.ndjson"

    code, out, err = run(schema_database, "--from-files", str(source), "--rejects", str(rejects))

    assert code == 1, out + err
    assert summary(out)["health_events"] == ["5", "4", "0", "1", "4"], out
    assert f"{source}:3" in err and "nested deeper than 100 levels" in err
    (record,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert record["where"] == f"{source}:3"


class _FakeCollection:
    """What mongo_reader uses of a pymongo collection: name and find().sort()."""

    name = "health_events"

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def find(self, *args: Any, **kwargs: Any) -> _FakeCollection:
        return self

    def sort(self, *args: Any) -> list[dict[str, Any]]:
        return self.docs


def test_a_live_document_nested_too_deep_is_rejected_by_its_id() -> None:
    """BSON decoded by pymongo is checked before json_util or the conversion recurse."""
    deep: Any = 1
    for _ in range(5_000):
        deep = {"a": [deep]}
    at_limit: Any = 1
    for _ in range(98):
        at_limit = {"a": at_limit}
    docs = [
        {"_id": ObjectId("65f000000000000000000001"), "healthevent": {"nodename": "n", "x": deep}},
        {"_id": "ok", "healthevent": at_limit},
    ]
    records = list(mongo_reader(_FakeCollection(docs), 10)())
    assert records[0].document is None
    assert records[0].where == "health_events _id 65f000000000000000000001"
    assert records[0].error is not None and "nested deeper than 100 levels" in records[0].error
    assert json.loads(records[0].raw) == {"_id": {"$oid": "65f000000000000000000001"}}
    assert records[1].error is None and records[1].document == docs[1]


# -- documents stored with different content ---------------------------------------------


def test_a_document_stored_with_different_content_is_listed_and_fails_without_keep_existing(
    schema_database: PostgresDatabase,
    export_dir: Path,
    exported: dict[str, list[dict[str, Any]]],
) -> None:
    """Before: a re-run kept the stored copies silently and exited 0."""
    assert run(schema_database, "--from-files", str(export_dir))[0] == 0
    before = stored(schema_database, "health_events")
    docs = exported["health_events"]
    changed = {7: "first", 150: "second"}
    for index, text in changed.items():
        docs[index] = dict(docs[index], note=text)
    source = write_export(export_dir / "health_events.json", docs, "relaxed")
    ids = {index: str(docs[index]["_id"]) for index in changed}

    code, out, err = run(schema_database, "--from-files", str(export_dir))

    assert code == cli.EXIT_CONFLICT == 6, out + err
    assert summary(out)["health_events"] == ["300", "0", "300", "0", "300"], out
    assert "2 document(s) already stored with different content" in out
    assert "pass --keep-existing" in out
    for index, doc_id in ids.items():
        assert f"health_events _id {doc_id} at {source}:{index + 1}" in out, out
        assert f"conflict health_events {source}:{index + 1}: _id {doc_id}" in err, err
    assert stored(schema_database, "health_events") == before, "stored copies are kept"

    code, out, err = run(schema_database, "--from-files", str(export_dir), "--dry-run")
    assert code == cli.EXIT_CONFLICT, out + err
    assert "2 document(s) already stored with different content" in out

    code, out, err = run(
        schema_database, "--from-files", str(export_dir), "--keep-existing", "--verify"
    )
    assert code == 0, out + err
    assert "2 document(s) already stored with different content; kept the stored" in out
    for index, doc_id in ids.items():
        assert f"health_events _id {doc_id} at {source}:{index + 1}" in out, out
    assert out.rstrip().endswith("verified"), out
    assert stored(schema_database, "health_events") == before


def test_an_identical_document_in_another_key_order_is_no_conflict(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    source = export_dir / "health_events.json"
    source.write_text('{"_id":"k","healthevent":{"nodename":"n1","agent":"a"},"n":1}\n')
    assert run(schema_database, "--from-files", str(source))[0] == 0
    source.write_text('{"n":1.0,"healthevent":{"agent":"a","nodename":"n1"},"_id":"k"}\n')
    code, out, err = run(schema_database, "--from-files", str(source))
    assert code == 0, out + err
    assert "different content" not in out


def test_migrate_help_documents_keep_existing_and_exit_code_6(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["migrate", "--help"], env={})
    text = " ".join(capsys.readouterr().out.split())
    assert "--keep-existing" in text
    assert "6 documents stored with different content (without --keep-existing" in text


def test_two_copies_of_an_id_in_the_export_with_different_content_are_a_conflict(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    source = export_dir / "health_events.json"
    source.write_text(
        '{"_id":"twice","healthevent":{"nodename":"n1"}}\n'
        '{"_id":"other","healthevent":{"nodename":"n2"}}\n'
        '{"_id":"twice","healthevent":{"nodename":"n9"}}\n'
        '{"_id":"other","healthevent":{"nodename":"n2"}}\n'
    )
    code, out, err = run(schema_database, "--from-files", str(source))
    assert code == cli.EXIT_CONFLICT, out + err
    assert summary(out)["health_events"] == ["4", "2", "2", "0", "2"], out
    assert f"health_events _id twice at {source}:3" in out
    assert "1 document(s) already stored with different content" in out
    assert stored(schema_database, "health_events")["twice"]["healthevent"]["nodename"] == "n1"


def test_a_dry_run_compares_even_a_document_postgresql_would_refuse(
    schema_database: PostgresDatabase, export_dir: Path
) -> None:
    """The comparison of a dry run casts the documents to jsonb; one PostgreSQL refuses
    (a lone surrogate) is compared with the stored copy in Python instead."""
    source = export_dir / "health_events.json"
    source.write_text('{"_id":"s","healthevent":{"nodename":"n1"}}\n')
    assert run(schema_database, "--from-files", str(source))[0] == 0
    source.write_text(
        '{"_id":"s","healthevent":{"nodename":"n1","message":"\\ud800"}}\n'
        '{"_id":"t","healthevent":{"nodename":"n2"}}\n'
    )
    code, out, err = run(schema_database, "--from-files", str(source), "--dry-run")
    assert code == cli.EXIT_CONFLICT, out + err
    assert f"health_events _id s at {source}:1" in out
    assert summary(out)["health_events"] == ["2", "1", "1", "0", "1"], out
