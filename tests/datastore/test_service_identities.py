"""Each NVSentinel service logs in as its own role, so its change-stream positions are its own.

The chart creates one login role per service through bootstrap.sql's
``service_users`` variable (each a member of ``nvsentinel_app``) and gives each
its own client certificate (CN = role). Row-level security on
``datastore_consumer_positions`` keys a row by ``client_owner = current_user``:
with one shared login any service could read, move or delete another's
position (a forged position once silently suppressed a fatal event for another
consumer). Here two service roles, created the way the chart creates them, on a
database with our schema: service B can neither see, move, delete nor forge
service A's position. Also: the pruner role, and the timeouts set on the roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devsupport.postgres import (
    APP_GROUP,
    APP_USER,
    BOOTSTRAP_SQL,
    MIGRATION_USER,
    PRUNER_USER,
    SERVICE_USERS,
    PostgresDatabase,
    PostgresServer,
)
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions
from nvsentinel_store.store import WatchOptions
from tests.datastore.conftest import apply_schema
from tests.fixtures import chart
from tests.fixtures.chart import SERVICES

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

#: Two services' login roles, named as the chart names them (nvsentinel_<service>).
SERVICE_A = "nvsentinel_fault_quarantine"
SERVICE_B = "nvsentinel_node_drainer"
PRUNER = PRUNER_USER
CONSUMER = "fault-quarantine"


@pytest.fixture
def services_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh database bootstrapped with two service login roles, schema applied."""
    name = postgres_server.create_database()
    postgres_server.psql(
        dbname=name,
        file=BOOTSTRAP_SQL,
        variables={
            "migration_user": MIGRATION_USER,
            "app_user": APP_USER,
            "service_users": f"{SERVICE_A}, {SERVICE_B}",
            "service_statement_timeout": "45s",
            "service_idle_in_transaction_timeout": "2min",
        },
    )
    database = PostgresDatabase(server=postgres_server, name=name)
    apply_schema(database)
    try:
        yield database
    finally:
        postgres_server.drop_database(name)


def connect(database: PostgresDatabase, user: str) -> Conn:
    """A TLS connection authenticated by ``user``'s client certificate (CN = user)."""
    return psycopg.connect(database.conninfo(user=user), autocommit=True)


def store_position_as_a(database: PostgresDatabase) -> None:
    """Service A stores its consumer position the way the store client does."""
    with PostgresStore(
        database.conninfo(user=SERVICE_A), database.name, StoreOptions(max_pool_size=2)
    ) as store:
        events = store.collection("health_events")
        stream = events.watch(client_name=CONSUMER, options=WatchOptions(poll_interval=0.02))
        stream.save_token()
        stream.close()


def test_bootstrap_creates_each_service_role_as_a_login_member_of_the_app_group(
    services_database: PostgresDatabase,
) -> None:
    with psycopg.connect(services_database.superuser_conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT r.rolname, r.rolcanlogin, pg_has_role(r.oid, %s, 'MEMBER'),"
            " r.rolconfig FROM pg_roles AS r WHERE r.rolname = ANY(%s) ORDER BY r.rolname",
            (APP_GROUP, [SERVICE_A, SERVICE_B, PRUNER]),
        ).fetchall()
    timeouts = ["statement_timeout=45s", "idle_in_transaction_session_timeout=2min"]
    assert rows == [
        (SERVICE_A, True, True, timeouts),
        (SERVICE_B, True, True, timeouts),
        (PRUNER, True, False, None),
    ]
    # Each logs in with its own certificate and runs under its timeout.
    with connect(services_database, SERVICE_B) as conn:
        assert conn.execute(
            "SELECT current_user, current_setting('statement_timeout')"
        ).fetchone() == (
            SERVICE_B,
            "45s",
        )


def test_one_service_cannot_read_move_or_delete_another_services_position(
    services_database: PostgresDatabase,
) -> None:
    store_position_as_a(services_database)
    with connect(services_database, SERVICE_A) as a:
        own = a.execute(
            "SELECT client_owner, client_name, position_txid::text, change_id"
            " FROM datastore_consumer_positions"
        ).fetchall()
    assert [(r[0], r[1]) for r in own] == [(SERVICE_A, CONSUMER)]

    with connect(services_database, SERVICE_B) as b:
        assert b.execute("SELECT count(*) FROM datastore_consumer_positions").fetchone() == (0,)
        moved = b.execute(
            "UPDATE datastore_consumer_positions SET change_id = change_id + 1000,"
            " position_txid = pg_current_xact_id() WHERE client_name = %s",
            (CONSUMER,),
        )
        assert moved.rowcount == 0
        deleted = b.execute(
            "DELETE FROM datastore_consumer_positions WHERE client_owner = %s", (SERVICE_A,)
        )
        assert deleted.rowcount == 0
        # Nor can it plant a position under A's name (RLS WITH CHECK).
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            b.execute(
                "INSERT INTO datastore_consumer_positions"
                " (client_owner, client_name, collection, position_txid, change_id)"
                " VALUES (%s, 'forged', 'health_events', pg_current_xact_id(), 999999)",
                (SERVICE_A,),
            )
        # ... nor hand its own row over to A.
        b.execute(
            "INSERT INTO datastore_consumer_positions"
            " (client_name, collection, position_txid, change_id)"
            " VALUES ('mine', 'health_events', pg_current_xact_id(), 1)"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            b.execute(
                "UPDATE datastore_consumer_positions SET client_owner = %s"
                " WHERE client_name = 'mine'",
                (SERVICE_A,),
            )

    with connect(services_database, SERVICE_A) as a:
        after = a.execute(
            "SELECT client_owner, client_name, position_txid::text, change_id"
            " FROM datastore_consumer_positions"
        ).fetchall()
    assert after == own


def test_the_pruner_is_no_application_role(services_database: PostgresDatabase) -> None:
    with connect(services_database, PRUNER) as pruner:
        assert pruner.execute("SELECT current_user").fetchone() == (PRUNER,)
        for statement in (
            "SELECT count(*) FROM health_events",
            "SELECT count(*) FROM datastore_consumer_positions",
            "SELECT count(*) FROM datastore_changelog",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                pruner.execute(statement)
        # ... but it may prune (nothing to prune yet), which is all the prune CronJob does.
        pruned = pruner.execute("SELECT * FROM datastore_changelog_prune('7 days')").fetchall()
        assert isinstance(pruned, list)
    # And no service may.
    with (
        connect(services_database, SERVICE_A) as a,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        a.execute("SELECT * FROM datastore_changelog_prune('7 days')")


def test_the_charts_initdb_bootstrap_creates_every_services_role_with_its_timeouts(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # What the subchart's initdb.sh runs: the ConfigMap's bootstrap.sql with only the
    # subchart's variables; the chart's own lines supply the services' roles.
    objects = chart.render(["values-postgresql.yaml"])
    initdb = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-initdb")
    script = tmp_path / "bootstrap.sql"
    script.write_text(initdb["data"]["bootstrap.sql"])
    name = postgres_server.create_database()
    try:
        postgres_server.psql(
            dbname=name,
            file=script,
            variables={"migration_user": MIGRATION_USER, "app_user": APP_USER},
        )
        roles = ["nvsentinel_" + service.replace("-", "_") for service in SERVICES]
        assert sorted(roles) == sorted(SERVICE_USERS)  # the fixture's list is the chart's
        with psycopg.connect(postgres_server.superuser_conninfo(name), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT rolname, rolcanlogin, pg_has_role(oid, %s, 'MEMBER'), rolconfig"
                " FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
                (APP_GROUP, roles),
            ).fetchall()
        timeouts = ["statement_timeout=60s", "idle_in_transaction_session_timeout=5min"]
        assert rows == [(role, True, True, timeouts) for role in sorted(roles)]
    finally:
        postgres_server.drop_database(name)


def test_a_stalled_poll_is_cancelled_by_the_service_timeout_and_the_stream_carries_on(
    postgres_server: PostgresServer,
) -> None:
    # A role of its own (roles are server-wide; the services' roles keep their settings).
    role = "nvsentinel_stall_test"
    name = postgres_server.create_database()
    postgres_server.psql(
        dbname=name,
        file=BOOTSTRAP_SQL,
        variables={"service_users": role, "service_statement_timeout": "300ms"},
    )
    database = PostgresDatabase(server=postgres_server, name=name)
    apply_schema(database)
    try:
        with PostgresStore(
            database.conninfo(user=role), database.name, StoreOptions(max_pool_size=2)
        ) as store:
            events = store.collection("health_events")
            stream = events.watch(options=WatchOptions(poll_interval=0.02))
            with psycopg.connect(database.superuser_conninfo()) as locker:
                # Something holds the change log: every poll waits, and is cancelled.
                locker.execute("LOCK TABLE datastore_changelog IN ACCESS EXCLUSIVE MODE")
                assert stream.try_next(timeout=1.5) is None
                assert stream.reconnects >= 1
                locker.rollback()
            events.insert_one({"healthevent": {"nodename": "n1", "isfatal": True}})
            events.insert_one({"healthevent": {"nodename": "n2", "isfatal": True}})
            delivered = []
            for _ in range(50):
                event = stream.try_next(timeout=0.2)
                if event is not None:
                    delivered.append(event["fullDocument"]["healthevent"]["nodename"])
                if len(delivered) == 2:
                    break
            assert delivered == ["n1", "n2"]
            assert stream.try_next(timeout=0.3) is None
            stream.close()
    finally:
        postgres_server.drop_database(name)
