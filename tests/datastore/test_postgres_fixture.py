"""The PostgreSQL test server is configured as the chart configures the real one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from devsupport.ca import issue_server_cert, make_pki
from devsupport.postgres import (
    APP_GROUP,
    APP_USER,
    MIGRATION_USER,
    PostgresDatabase,
    PostgresServer,
    PostgresStartError,
    start_server,
)

pytestmark = pytest.mark.datastore


def test_app_user_connects_with_its_client_certificate_under_verify_full(
    postgres_database: PostgresDatabase,
) -> None:
    with psycopg.connect(postgres_database.conninfo(APP_USER)) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), ssl, version"
            " FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    assert row[0] == APP_USER
    assert row[1] == postgres_database.name
    assert row[2] is True
    assert row[3] in {"TLSv1.2", "TLSv1.3"}


def test_server_settings_match_the_chart(postgres_database: PostgresDatabase) -> None:
    with psycopg.connect(postgres_database.superuser_conninfo()) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("ssl", "ssl_min_protocol_version", "listen_addresses")
        }
    assert settings == {
        "ssl": "on",
        "ssl_min_protocol_version": "TLSv1.2",
        "listen_addresses": "127.0.0.1",
    }


def test_bootstrap_roles_and_schema_owner_exist_in_each_database(
    postgres_database: PostgresDatabase,
) -> None:
    with psycopg.connect(postgres_database.superuser_conninfo()) as conn:
        owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
        member = conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER')", (APP_USER, APP_GROUP)
        ).fetchone()
    assert owner == (MIGRATION_USER,)
    assert member == (True,)


def test_each_test_gets_an_empty_database_of_its_own(
    postgres_server: PostgresServer, postgres_database: PostgresDatabase
) -> None:
    with psycopg.connect(postgres_database.conninfo(MIGRATION_USER)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        conn.execute("CREATE TABLE scratch (id int)")
        conn.commit()
    assert tables == (0,)
    other = postgres_server.create_database()
    try:
        with psycopg.connect(postgres_server.conninfo(MIGRATION_USER, dbname=other)) as conn:
            seen = conn.execute("SELECT to_regclass('public.scratch')").fetchone()
        assert seen == (None,)
    finally:
        postgres_server.drop_database(other)


def test_server_comes_back_on_the_same_port_after_restart(
    postgres_server: PostgresServer, postgres_database: PostgresDatabase
) -> None:
    port = postgres_server.port
    postgres_server.restart()
    with psycopg.connect(postgres_database.conninfo(APP_USER)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert postgres_server.port == port


def test_a_server_that_cannot_start_reports_its_log_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    # A server key that does not belong to the server certificate.
    shutil.copy(pki.client("someone").key, pki.server.key)
    before = set(Path(tempfile.gettempdir()).glob("nvsentinel-pg-*"))
    with pytest.raises(PostgresStartError) as info:
        start_server(pki)
    assert "could not load private key file" in str(info.value)
    assert "key values mismatch" in str(info.value)
    # Only what this start created counts: other servers on the machine may come and go.
    assert set(Path(tempfile.gettempdir()).glob("nvsentinel-pg-*")) - before == set()


def test_renewed_server_certificate_is_served_after_reload(
    postgres_server: PostgresServer, postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    original = postgres_server.pki.server
    renewed = issue_server_cert(postgres_server.pki.ca, tmp_path / "renewed", ["renewed.test"])
    conninfo = postgres_database.conninfo(APP_USER, host="renewed.test")
    try:
        postgres_server.install_server_cert(renewed)
        with pytest.raises(psycopg.OperationalError, match="does not match host name"):
            psycopg.connect(conninfo).close()
        postgres_server.reload()
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (APP_USER,)
    finally:
        postgres_server.install_server_cert(original)
        postgres_server.reload()
