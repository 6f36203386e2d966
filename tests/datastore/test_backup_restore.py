"""Backup and restore as docs/backup-restore.md tells an operator to do them.

The source is a populated store on the session's server. The backup is the
chart's own CronJob container (``backup.sh`` from the rendered scripts
ConfigMap, with the CronJob's environment: TLS verify-full as the backup role
with its client certificate). The target is a FRESH server (its own initdb,
so its own transaction counter and system identifier), initialised the way the
chart's pod initialises an empty volume (the subchart's ``initdb.sh``: the
umbrella chart's bootstrap.sql, then the monitor and backup roles), restored
with ``pg_restore`` as documented, then adopted with
``datastore_adopt_restore()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devsupport.ca import Pki
from devsupport.postgres import (
    APP_USER,
    MIGRATION_USER,
    PostgresDatabase,
    PostgresServer,
    destroy_server,
    start_server,
)
from nvsentinel_store.errors import HistoryLostError
from nvsentinel_store.providers.postgresql.changestream import PostgresChangeStream
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions
from nvsentinel_store.store import ChangeEvent, WatchOptions
from tests.datastore.subchart_scripts import BACKUP_USER, run_initdb_script, scripts
from tests.datastore.test_prune_limits import backdate, pruner_store
from tests.fixtures import chart

pytestmark = pytest.mark.datastore

FAST = WatchOptions(poll_interval=0.02, min_poll_interval=0.001)
DATABASE = "nvsentinel"
#: Columns every event table row keeps across a restore (all but the position,
#: which is the old server's transaction id and is rebased on adoption).
KEPT = (
    "to_jsonb(t) || jsonb_build_object('version', (SELECT v.version "
    "FROM datastore_document_versions AS v WHERE v.table_name = {table!r} AND v.id = t.id))"
)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return chart.render(["values-postgresql.yaml"])


@pytest.fixture
def fresh_server(test_ca: Pki) -> Iterator[PostgresServer]:
    """A second server: its own initdb, transaction counter and system identifier."""
    server = start_server(test_ca)
    try:
        yield server
    finally:
        destroy_server(server)


def run_backup_cronjob(
    objects: list[dict[str, Any]], db: PostgresDatabase, script_dir: Path, backups: Path
) -> subprocess.CompletedProcess[str]:
    """The backup CronJob's container with its rendered environment, against ``db``."""
    cronjob = chart.find(objects, "CronJob", "nvsentinel-postgresql-backup")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container["env"]}
    assert env["PGUSER"] == BACKUP_USER and env["PGSSLMODE"] == "verify-full"
    cert = db.server.client_cert(BACKUP_USER)
    env.update(
        PATH=f"{db.server.bindir}:{os.environ['PATH']}",
        PGHOST="localhost",  # the Service name; the test server certificate covers localhost
        PGHOSTADDR="127.0.0.1",
        PGPORT=str(db.server.port),
        PGDATABASE=db.name,
        PGSSLCERT=str(cert.cert),
        PGSSLKEY=str(cert.key),
        PGSSLROOTCERT=str(cert.ca),
        BACKUP_DIR=str(backups),
    )
    command = container["command"][0]
    assert command.endswith("/backup.sh")
    return subprocess.run(
        [str(script_dir / "backup.sh")], env=env, capture_output=True, text=True, check=False
    )


def pg_restore(server: PostgresServer, dump: Path) -> None:
    """The documented restore: as the superuser over the pod-local socket, one transaction."""
    done = subprocess.run(
        [
            str(server.bindir / "pg_restore"),
            "--exit-on-error",
            "--single-transaction",
            "--dbname",
            server.superuser_conninfo(DATABASE),
            str(dump),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def rows(conn: psycopg.Connection[Any], query: str) -> list[Any]:
    return [r[0] if len(r) == 1 else tuple(r) for r in conn.execute(query).fetchall()]


def snapshot(conninfo: str) -> dict[str, list[Any]]:
    """Everything a restore must keep: documents with extracted columns, tokens, changes."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return {
            "health_events": rows(
                conn,
                f"SELECT {KEPT.format(table='health_events')} FROM health_events AS t ORDER BY id",
            ),
            "maintenance_events": rows(
                conn,
                f"SELECT {KEPT.format(table='maintenance_events')} "
                "FROM maintenance_events AS t ORDER BY id",
            ),
            "changes": rows(
                conn,
                "SELECT id, table_name::text, operation::text, record_id, version, replaced, "
                "old_values, new_values, changed_at, processed "
                "FROM datastore_changelog ORDER BY position_txid, id",
            ),
            "consumers": rows(
                conn,
                "SELECT client_owner::text, client_name, collection, pending_changes "
                "FROM datastore_consumer_lag()",
            ),
        }


def take(stream: PostgresChangeStream, count: int) -> list[ChangeEvent]:
    got: list[ChangeEvent] = []
    deadline = time.monotonic() + 15
    while len(got) < count and time.monotonic() < deadline:
        event = stream.try_next(timeout=max(0.0, deadline - time.monotonic()))
        if event is not None:
            got.append(event)
    assert len(got) == count, f"{len(got)} of {count} events arrived"
    return got


def keys(events: list[ChangeEvent]) -> list[tuple[str, str, int]]:
    return [(e["operationType"], e["documentKey"]["_id"], e["documentVersion"]) for e in events]


def cli_env(db: PostgresDatabase) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATASTORE_"))}
    env.update(db.datastore_env())
    return env


def health_json(db: PostgresDatabase) -> dict[str, Any]:
    """``nvsentinel-store health --json`` as the application user."""
    check = subprocess.run(
        [sys.executable, "-m", "nvsentinel_store.cli", "health", "--json"],
        env=cli_env(db),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode in (0, 1), check.stdout + check.stderr
    report: dict[str, Any] = json.loads(check.stdout)
    assert check.returncode == (0 if report["healthy"] else 1)
    return report


def burn_transaction_ids(db: PostgresDatabase, count: int) -> None:
    """Advance the source server's transaction counter (a busy production server)."""
    subprocess.run(
        [str(db.server.bindir / "psql"), "-X", "-q", "-d", db.superuser_conninfo()],
        input="SELECT pg_current_xact_id();\n" * count,
        capture_output=True,
        text=True,
        check=True,
    )


def populate(store: PostgresStore) -> tuple[list[tuple[str, str, int]], ChangeEvent]:
    """Events, updates, a delete and two consumers with stored tokens.

    Returns the changes the health consumer has not handled yet (what it must
    get after the restore) and an event it did handle (its token is refused
    after the restore).
    """
    health = store.collection("health_events")
    maintenance = store.collection("maintenance_events")
    ids = [
        health.insert_one(
            {
                "healthevent": {
                    "nodename": f"node-{n}",
                    "agent": "gpu-health-monitor",
                    "checkname": "GpuXidError",
                    "isfatal": n % 2 == 0,
                    "recommendedaction": 2,
                    "generatedtimestamp": {"seconds": 1_700_000_000 + n, "nanos": 0},
                },
                "healtheventstatus": {"nodequarantined": ""},
            }
        )
        for n in range(6)
    ]
    maintenance.insert_one(
        {
            "eventId": "maint-1",
            "csp": "gcp",
            "clusterName": "c1",
            "nodeName": "node-1",
            "status": "MAINTENANCE_SCHEDULED",
            "scheduledStartTime": "2026-11-25T10:00:00Z",
        }
    )
    reader = health.watch(client_name="fault-quarantine", from_beginning=True, options=FAST)
    handled = take(reader, 3)
    reader.save_token()
    reader.close()
    maint_reader = maintenance.watch(client_name="csp-health-monitor", from_beginning=True)
    take(maint_reader, 1)
    maint_reader.save_token()
    maint_reader.close()
    health.update_one(
        {"_id": ids[1]}, {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}}
    )
    health.update_one(
        {"_id": ids[4]}, {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}}
    )
    health.delete_one({"_id": ids[5]})
    maintenance.update_one({"_id": "maint-1"}, {"$set": {"status": "MAINTENANCE_ONGOING"}})
    pending = [("insert", i, 1) for i in ids[3:]] + [
        ("update", ids[1], 2),
        ("update", ids[4], 2),
        ("delete", ids[5], 1),
    ]
    return pending, handled[0]


def test_backup_cronjob_dump_restores_into_a_fresh_server_with_documents_triggers_and_consumers(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    fresh_server: PostgresServer,
    tmp_path: Path,
) -> None:
    script_dir = scripts(objects, tmp_path / "scripts")
    # The source server got its backup role at initialisation (initdb.sh, idempotent).
    run_initdb_script(schema_database.server, schema_database.name, script_dir)
    burn_transaction_ids(schema_database, 3000)
    pending, handled = populate(store)
    before = snapshot(schema_database.conninfo(user=MIGRATION_USER))
    old_token = handled["_id"]

    # -- backup: the CronJob's container ---------------------------------------
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = run_backup_cronjob(objects, schema_database, script_dir, backups)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    dumps = sorted(backups.glob(f"{schema_database.name}-*.dump"))
    assert len(dumps) == 1 and not list(backups.glob("*.partial")), backup.stdout

    # -- restore: fresh server, chart initialisation, pg_restore ----------------
    fresh_server.psql(f"CREATE DATABASE {DATABASE}")
    run_initdb_script(fresh_server, DATABASE, script_dir)
    pg_restore(fresh_server, dumps[0])
    target = PostgresDatabase(server=fresh_server, name=DATABASE)
    assert snapshot(target.conninfo(user=MIGRATION_USER)) == before

    before_adoption = health_json(target)
    assert before_adoption["healthy"] is False
    epoch_check = {c["name"]: c for c in before_adoption["checks"]}["epoch"]
    assert not epoch_check["ok"] and "datastore_adopt_restore()" in epoch_check["detail"]
    watch = subprocess.run(
        [
            sys.executable,
            "-m",
            "nvsentinel_store.cli",
            "watch",
            "--collection=health_events",
            "--client-name=fault-quarantine",
            "--idle-exit=1",
        ],
        env=cli_env(target),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert watch.returncode == 3, watch.stdout + watch.stderr  # history lost
    assert "datastore_adopt_restore()" in watch.stderr and watch.stdout == ""

    with PostgresStore(
        target.conninfo(user=APP_USER), DATABASE, StoreOptions(retry_timeout=10.0)
    ) as restored:
        health = restored.collection("health_events")
        # Not adopted yet: a stream refuses, naming the restore, instead of misreading.
        with pytest.raises(HistoryLostError, match="restored from a backup of another server"):
            health.watch(client_name="fault-quarantine")

        # The hazard it refuses: this server's transaction ids are far below the
        # restored positions, so a change written now sorts BEFORE the consumer's
        # stored position, and a stream resuming there would skip it.
        early = health.insert_one({"healthevent": {"nodename": "written-before-adoption"}})
        with psycopg.connect(target.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
            hazard = conn.execute(
                "SELECT l.position_txid < t.position_txid FROM datastore_changelog AS l, "
                "datastore_consumer_positions AS t "
                "WHERE l.new_values -> 'document' ->> '_id' = %s "
                "AND t.client_name = %s AND t.collection = 'health_events'",
                (early, "fault-quarantine"),
            ).fetchone()
            assert hazard == (True,)
            adopted = conn.execute("SELECT * FROM datastore_adopt_restore()").fetchone()
            assert adopted is not None and adopted[0] is True
            adopted_again = conn.execute("SELECT adopted FROM datastore_adopt_restore()").fetchone()
            assert adopted_again == (False,)  # idempotent: now it is this server's history
            # Change ids are kept (NVSentinel's resume tokens name them): the
            # restored ones, then the one written before adoption above them.
            ids = conn.execute(
                "SELECT id, new_values -> 'document' ->> '_id' = %s FROM datastore_changelog "
                "ORDER BY id",
                (early,),
            ).fetchall()
            assert [i for i, is_early in ids if not is_early] == sorted(
                c[0] for c in before["changes"]
            )
            assert [is_early for _, is_early in ids][-1:] == [True]
            assert sum(1 for _, is_early in ids if is_early) == 1

        # Resume tokens preserved: the consumer resumes just before the first change
        # it had not passed, then gets the change written before adoption. (Adoption
        # orders the restored history by change id; this history was written one
        # transaction at a time, so id order is the old order and nothing comes
        # again. Commits out of id order: see the test after this one.)
        resumed = health.watch(client_name="fault-quarantine", options=FAST)
        assert keys(take(resumed, len(pending))) == pending
        assert keys(take(resumed, 1)) == [("insert", early, 1)]

        # Triggers preserved: a change after the restore is extracted, captured and
        # delivered at once (not held back behind the old server's positions).
        restored_id = next(
            str(r["document"]["_id"]) for r in before["health_events"] if r["version"] == 1
        )
        health.update_one(
            {"_id": restored_id}, {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}}
        )
        new_id = health.insert_one({"healthevent": {"nodename": "after-restore", "isfatal": True}})
        assert keys(take(resumed, 2)) == [("update", restored_id, 2), ("insert", new_id, 1)]
        resumed.save_token()
        with psycopg.connect(target.conninfo(user=APP_USER), autocommit=True) as conn:
            extracted = conn.execute(
                "SELECT node_name, is_fatal FROM health_events WHERE document ->> '_id' = %s",
                (new_id,),
            ).fetchone()
            assert extracted == ("after-restore", True)
            quarantined = conn.execute(
                "SELECT quarantine_status, node_quarantined FROM health_events "
                "WHERE document ->> '_id' = %s",
                (restored_id,),
            ).fetchone()
            assert quarantined == ("Quarantined", "Quarantined")

        # The other consumer, on the other collection, resumes at its own place.
        maint = restored.collection("maintenance_events").watch(
            client_name="csp-health-monitor", options=FAST
        )
        assert keys(take(maint, 1)) == [("update", "maint-1", 2)]
        maint.close()

        # A token handed out before the restore is refused, never misread.
        with pytest.raises(HistoryLostError, match="restored from a backup since the token"):
            health.watch(resume_after=old_token)
        resumed.close()

        # Pruning works on the rebased history: it deletes what every live consumer
        # passed, and the consumer resumes after it without a gap.
        backdate(target, consumers="*")  # two hours pass
        with pruner_store(target) as pruner:
            pruned = {r.collection: r for r in pruner.prune(3600)}
        passed = 9 + 1 + 2  # restored changes, the one before adoption, the two after
        assert pruned["health_events"].deleted_changes == passed
        after_prune = health.insert_one({"healthevent": {"nodename": "after-prune"}})
        with health.watch(client_name="fault-quarantine", options=FAST) as again:
            assert keys(take(again, 1)) == [("insert", after_prune, 1)]

    # The restored and adopted store is healthy as the operators' tool sees it.
    report = health_json(target)
    assert report["healthy"] is True, report
    assert {c["name"]: c["ok"] for c in report["checks"]}["triggers"] is True


def test_restore_on_the_same_server_needs_no_adoption_and_keeps_tokens(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    tmp_path: Path,
) -> None:
    """A dump restored into a new database of the same server shares its transaction
    ids: streams work at once and the tokens handed out before still resume."""
    script_dir = scripts(objects, tmp_path / "scripts")
    run_initdb_script(schema_database.server, schema_database.name, script_dir)
    pending, handled = populate(store)
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = run_backup_cronjob(objects, schema_database, script_dir, backups)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    server = schema_database.server
    name = server.create_database()
    try:
        done = subprocess.run(
            [
                str(server.bindir / "pg_restore"),
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                server.superuser_conninfo(name),
                str(next(backups.glob("*.dump"))),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        copy = PostgresDatabase(server=server, name=name)
        with psycopg.connect(copy.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
            assert conn.execute("SELECT adopted FROM datastore_adopt_restore()").fetchone() == (
                False,
            )
        with PostgresStore(copy.conninfo(user=APP_USER), name) as restored:
            health = restored.collection("health_events")
            with health.watch(client_name="fault-quarantine", options=FAST) as resumed:
                assert keys(take(resumed, len(pending))) == pending
            with health.watch(resume_after=handled["_id"], options=FAST) as from_token:
                assert take(from_token, 1)[0]["_id"]["_data"] > handled["_id"]["_data"]
    finally:
        server.drop_database(name)


def test_a_stream_running_across_a_restore_refuses_when_it_reconnects_to_the_new_server(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    fresh_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """The Service now leads to the restored server: the stream's next connection lands
    there, and it stops with HistoryLostError instead of reading the new server's ids
    with its old cursor, before and after adoption."""
    script_dir = scripts(objects, tmp_path / "scripts")
    run_initdb_script(schema_database.server, schema_database.name, script_dir)
    burn_transaction_ids(schema_database, 1000)
    populate(store)
    dialled = [schema_database.conninfo(user=APP_USER, application_name="moving-stream")]
    stream = PostgresChangeStream(
        lambda: psycopg.connect(dialled[0], autocommit=True),
        DATABASE,
        "health_events",
        from_beginning=True,
        options=FAST,
    )
    take(stream, 2)

    backups = tmp_path / "backups"
    backups.mkdir()
    backup = run_backup_cronjob(objects, schema_database, script_dir, backups)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    fresh_server.psql(f"CREATE DATABASE {DATABASE}")
    run_initdb_script(fresh_server, DATABASE, script_dir)
    pg_restore(fresh_server, next(backups.glob("*.dump")))
    target = PostgresDatabase(server=fresh_server, name=DATABASE)

    # Fail over: new address, old connection gone.
    dialled[0] = target.conninfo(user=APP_USER, application_name="moving-stream")
    schema_database.server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'moving-stream'"
    )
    with pytest.raises(HistoryLostError, match="restored from a backup of another server"):
        for _ in range(50):  # the buffered events first, then the reconnect
            stream.try_next(timeout=0.2)

    with psycopg.connect(target.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        conn.execute("SELECT * FROM datastore_adopt_restore()")
    with pytest.raises(HistoryLostError, match="restored from a backup while the stream ran"):
        stream.try_next(timeout=1.0)
    stream.close()


def test_adoption_repeats_changes_committed_out_of_id_order_and_skips_none(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    fresh_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """Changed on purpose with NVSentinel's layout: adoption keeps the change ids
    (NVSentinel's resume tokens name them) and orders the restored history by id. A
    consumer resumes just before the first change it had not passed: it sees again a
    change it had passed that committed out of id order, and never misses one; a
    consumer that had passed everything gets exactly the changes written on the new
    server before adoption."""
    script_dir = scripts(objects, tmp_path / "scripts")
    run_initdb_script(schema_database.server, schema_database.name, script_dir)
    burn_transaction_ids(schema_database, 1000)

    # Two writers committing out of id order: "a" takes its transaction id first,
    # "b" inserts (the lower change id) and commits, then "a" inserts. In position
    # order (transaction id, change id) "a" comes first; in id order "b" does.
    def insert(conn: psycopg.Connection[Any], doc_id: str) -> None:
        conn.execute(
            "INSERT INTO health_events (document) VALUES (%s::jsonb)",
            (json.dumps({"_id": doc_id, "healthevent": {"nodename": f"node-{doc_id}"}}),),
        )

    with (
        psycopg.connect(schema_database.conninfo(user=APP_USER)) as a,
        psycopg.connect(schema_database.conninfo(user=APP_USER)) as b,
    ):
        a.execute("SELECT pg_current_xact_id()")
        insert(b, "b")
        b.commit()
        insert(a, "a")
        a.commit()
    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        order = rows(
            conn,
            "SELECT new_values -> 'document' ->> '_id' FROM datastore_changelog ORDER BY id",
        )
        assert order == ["b", "a"]

    health = store.collection("health_events")
    # One consumer passed "a" only, the other both.
    with health.watch(client_name="half", from_beginning=True, options=FAST) as half:
        assert keys(take(half, 1)) == [("insert", "a", 1)]
        half.save_token()
    with health.watch(client_name="all", from_beginning=True, options=FAST) as passed_all:
        assert keys(take(passed_all, 2)) == [("insert", "a", 1), ("insert", "b", 1)]
        passed_all.save_token()

    backups = tmp_path / "backups"
    backups.mkdir()
    backup = run_backup_cronjob(objects, schema_database, script_dir, backups)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    fresh_server.psql(f"CREATE DATABASE {DATABASE}")
    run_initdb_script(fresh_server, DATABASE, script_dir)
    pg_restore(fresh_server, next(backups.glob("*.dump")))
    target = PostgresDatabase(server=fresh_server, name=DATABASE)

    with PostgresStore(
        target.conninfo(user=APP_USER), DATABASE, StoreOptions(retry_timeout=10.0)
    ) as restored:
        restored_health = restored.collection("health_events")
        # Written before adoption: a new document and an update of a restored one.
        early = restored_health.insert_one({"healthevent": {"nodename": "before-adoption"}})
        restored_health.update_one(
            {"_id": "b"}, {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}}
        )
        with psycopg.connect(target.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
            adopted = conn.execute("SELECT adopted FROM datastore_adopt_restore()").fetchone()
            assert adopted == (True,)
        new = [("insert", early, 1), ("update", "b", 2)]

        with restored_health.watch(client_name="half", options=FAST) as resumed:
            # "b" (not passed), "a" again (passed, but above "b" in id order), then
            # the changes written before adoption; nothing else.
            assert keys(take(resumed, 4)) == [("insert", "b", 1), ("insert", "a", 1), *new]
            assert resumed.try_next(timeout=0.3) is None
        with restored_health.watch(client_name="all", options=FAST) as resumed:
            assert keys(take(resumed, 2)) == new
            assert resumed.try_next(timeout=0.3) is None
