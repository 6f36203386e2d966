"""Every DATASTORE_SSLMODE against the TLS-only, certificate-authenticated test server.

Connections are made the way a service makes them: environment ->
``Settings.from_env`` -> ``postgres_conninfo`` -> psycopg. Refusals are asserted
on the message the user sees.
"""

from __future__ import annotations

import psycopg
import pytest

from devsupport.postgres import (
    APP_USER,
    MIGRATION_USER,
    PostgresDatabase,
)
from nvsentinel_store.config import Settings, postgres_conninfo

pytestmark = pytest.mark.datastore

#: A host name the server certificate does not cover; the tests dial it at 127.0.0.1.
WRONG_NAME = "not-in-the-certificate.test"


def connect(env: dict[str, str], **overrides: str) -> tuple[str, bool, str]:
    """Connect as configured by ``env``; returns (current_user, ssl, TLS version)."""
    conninfo = postgres_conninfo(Settings.from_env(env), **overrides)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT current_user, ssl, coalesce(version, '') FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def refusal(env: dict[str, str], **overrides: str) -> str:
    """The error message of a connection that must fail."""
    conninfo = postgres_conninfo(Settings.from_env(env), **overrides)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo).close()
    return str(info.value)


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_each_tls_mode_connects_with_the_client_certificate(
    postgres_database: PostgresDatabase, sslmode: str
) -> None:
    user, ssl, version = connect(postgres_database.datastore_env(sslmode=sslmode))
    assert (user, ssl) == (APP_USER, True)
    assert version in {"TLSv1.2", "TLSv1.3"}


def test_verify_full_accepts_the_ip_address_in_the_certificate(
    postgres_database: PostgresDatabase,
) -> None:
    env = postgres_database.datastore_env()
    env["DATASTORE_HOST"] = "127.0.0.1"
    assert connect(env)[:2] == (APP_USER, True)


def test_plaintext_is_refused_by_pg_hba(postgres_database: PostgresDatabase) -> None:
    message = refusal(postgres_database.datastore_env(sslmode="disable"))
    assert "no pg_hba.conf entry" in message
    assert "no encryption" in message


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_server_signed_by_another_ca_is_refused(
    postgres_database: PostgresDatabase, sslmode: str
) -> None:
    env = postgres_database.datastore_env(sslmode=sslmode)
    env["DATASTORE_SSLROOTCERT"] = str(postgres_database.server.wrong_ca_file)
    assert "certificate verify failed" in refusal(env)


def test_verify_full_refuses_a_host_name_the_certificate_does_not_cover(
    postgres_database: PostgresDatabase,
) -> None:
    env = postgres_database.datastore_env(sslmode="verify-full")
    env["DATASTORE_HOST"] = WRONG_NAME
    message = refusal(env, hostaddr="127.0.0.1")
    assert "does not match host name" in message
    assert WRONG_NAME in message


@pytest.mark.parametrize("sslmode", ["require", "verify-ca"])
def test_modes_below_verify_full_do_not_check_the_host_name(
    postgres_database: PostgresDatabase, sslmode: str
) -> None:
    env = postgres_database.datastore_env(sslmode=sslmode)
    env["DATASTORE_HOST"] = WRONG_NAME
    assert connect(env, hostaddr="127.0.0.1")[:2] == (APP_USER, True)


def test_require_does_not_verify_the_server_certificate(
    postgres_database: PostgresDatabase,
) -> None:
    env = postgres_database.datastore_env(sslmode="require")
    env["POSTGRESQL_CLIENT_CERT_MOUNT_PATH"] = str(
        postgres_database.server.client_cert(APP_USER).path
    )
    settings = Settings.from_env(env)
    assert settings.sslrootcert is None
    assert "sslrootcert" not in postgres_conninfo(settings)
    assert connect(env)[:2] == (APP_USER, True)


def test_connection_without_a_client_certificate_is_refused(
    postgres_database: PostgresDatabase,
) -> None:
    message = refusal(
        postgres_database.datastore_env(), sslcert="/nonexistent/tls.crt", sslkey="/nonexistent/k"
    )
    assert "connection requires a valid client certificate" in message


def test_client_certificate_from_another_ca_is_refused(
    postgres_database: PostgresDatabase,
) -> None:
    stranger = postgres_database.server.pki.wrong_client(APP_USER)
    message = refusal(
        postgres_database.datastore_env(), sslcert=str(stranger.cert), sslkey=str(stranger.key)
    )
    assert "unknown ca" in message.lower() or "certificate verify failed" in message


def test_client_authenticates_only_as_its_certificates_common_name(
    postgres_database: PostgresDatabase,
) -> None:
    migrator = postgres_database.server.client_cert(MIGRATION_USER)
    message = refusal(
        postgres_database.datastore_env(user=APP_USER),
        sslcert=str(migrator.cert),
        sslkey=str(migrator.key),
    )
    assert f'certificate authentication failed for user "{APP_USER}"' in message


def test_clients_limited_to_tls_1_2_still_connect(postgres_database: PostgresDatabase) -> None:
    # The server's floor is TLS 1.2 (ssl_min_protocol_version, as in the chart); older
    # protocols cannot be offered by this client's OpenSSL at all, so the floor itself
    # is asserted in test_postgres_fixture.py.
    user, ssl, version = connect(
        postgres_database.datastore_env(),
        ssl_min_protocol_version="TLSv1.2",
        ssl_max_protocol_version="TLSv1.2",
    )
    assert (user, ssl, version) == (APP_USER, True, "TLSv1.2")


def password_env(database: PostgresDatabase, password: str) -> dict[str, str]:
    server = database.server
    return {
        "DATASTORE_PROVIDER": "postgresql",
        "DATASTORE_HOST": "localhost",
        "DATASTORE_PORT": str(server.port),
        "DATASTORE_DATABASE": database.name,
        "DATASTORE_USERNAME": server.password_user,
        "DATASTORE_PASSWORD": password,
        "DATASTORE_SSLMODE": "verify-full",
        "DATASTORE_SSLROOTCERT": str(server.ca_file),
    }


def test_password_user_logs_in_with_scram_over_tls(postgres_database: PostgresDatabase) -> None:
    server = postgres_database.server
    env = password_env(postgres_database, server.password)
    assert Settings.from_env(env).sslcert is None
    assert connect(env)[:2] == (server.password_user, True)


def test_wrong_password_is_refused(postgres_database: PostgresDatabase) -> None:
    server = postgres_database.server
    message = refusal(password_env(postgres_database, "not-the-password"))
    assert f'password authentication failed for user "{server.password_user}"' in message


def test_password_is_refused_for_certificate_users(postgres_database: PostgresDatabase) -> None:
    env = password_env(postgres_database, "anything")
    env["DATASTORE_USERNAME"] = APP_USER
    message = refusal(env)
    assert "connection requires a valid client certificate" in message
