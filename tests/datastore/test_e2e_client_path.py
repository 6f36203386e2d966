"""The e2e tier's way to a datastore, proven here against a real PostgreSQL.

On kind, the e2e tests reach the store through a local TCP relay in front of a
Kubernetes port-forward, dial the name the services dial (resolved to the
relay's 127.0.0.1 inside the test process) and verify the server certificate
against that name. Here the relay stands in front of the session's TLS-only
server instead of a port-forward, so the relay, the name resolution, the
`verify-full` check and the round trip the e2e tier asserts are all exercised
where no container engine runs.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.config import Settings, postgres_conninfo
from tests.e2e.datastore_client import (
    assert_change_stream_round_trip,
    loopback_resolution,
    open_store,
)
from tests.e2e.port_forward_relay import PortForwardRelay
from tests.e2e.schema_checks import assert_schema_current, assert_tables_and_triggers

pytestmark = pytest.mark.datastore

#: The name the services dial in the cluster; the test server's certificate does not cover it.
SERVICE_NAME = "nvsentinel-postgresql"


@pytest.fixture
def relay(schema_database: PostgresDatabase) -> Iterator[PortForwardRelay]:
    port = schema_database.server.port

    def open_stream() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    with PortForwardRelay(open_stream, f"127.0.0.1:{port}") as started:
        yield started
    assert started.errors == []


def _settings(
    database: PostgresDatabase, relay: PortForwardRelay, host: str, sslmode: str = "verify-full"
) -> Settings:
    env = database.datastore_env(sslmode=sslmode)
    env.update(DATASTORE_HOST=host, DATASTORE_PORT=str(relay.local_port))
    return Settings.from_env(env, application_name="e2e-client-path")


def test_relay_carries_a_verified_certificate_session(
    schema_database: PostgresDatabase, relay: PortForwardRelay
) -> None:
    with psycopg.connect(postgres_conninfo(_settings(schema_database, relay, "localhost"))) as conn:
        row = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("nvsentinel", True)


def test_dialled_name_reaches_the_relay_and_is_what_tls_verifies(
    schema_database: PostgresDatabase, relay: PortForwardRelay
) -> None:
    with pytest.raises(psycopg.OperationalError, match="resolve"):
        psycopg.connect(postgres_conninfo(_settings(schema_database, relay, SERVICE_NAME)))
    with loopback_resolution(SERVICE_NAME):
        verify_ca = postgres_conninfo(_settings(schema_database, relay, SERVICE_NAME, "verify-ca"))
        with psycopg.connect(verify_ca) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        verify_full = postgres_conninfo(_settings(schema_database, relay, SERVICE_NAME))
        with pytest.raises(psycopg.OperationalError, match=SERVICE_NAME):
            psycopg.connect(verify_full)


def test_round_trip_and_seed_queries_over_the_relay(
    schema_database: PostgresDatabase, relay: PortForwardRelay
) -> None:
    settings = _settings(schema_database, relay, "localhost")
    with open_store(settings) as store:
        assert_change_stream_round_trip(store, client_name="e2e-client-path")
    with psycopg.connect(postgres_conninfo(settings)) as conn:
        count = conn.execute("SELECT COUNT(*) FROM datastore_changelog;").fetchone()
        positions = conn.execute("SELECT * FROM datastore_consumer_positions;")
        columns = [column.name for column in positions.description or []]
        rows = [dict(zip(columns, row, strict=True)) for row in positions.fetchall()]
        # The seed's query of NVSentinel's resume_tokens still runs; this
        # project's consumers keep their positions in datastore_consumer_positions.
        tokens = conn.execute("SELECT * FROM resume_tokens;").fetchall()
    assert count is not None and count[0] >= 2
    assert [(row["client_name"], row["collection"]) for row in rows] == [
        ("e2e-client-path", "health_events")
    ], rows
    assert tokens == []


def test_schema_checks_hold_for_the_application_user(
    schema_database: PostgresDatabase, relay: PortForwardRelay
) -> None:
    with psycopg.connect(postgres_conninfo(_settings(schema_database, relay, "localhost"))) as conn:
        assert_schema_current(conn)
        assert_tables_and_triggers(conn)
