"""The test process's own PostgreSQL client for an installed release: the services'
settings and client certificate over a port-forward relay (see datastore_client).

Test modules import ``postgresql_connection``, the ``postgresql`` fixture, from here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from kubernetes import client

from nvsentinel_store.config import postgres_params
from tests.e2e.conftest import Installed
from tests.e2e.datastore_client import (
    Connection,
    client_environment,
    datastore_config,
    loopback_resolution,
    write_client_certificate,
)
from tests.e2e.port_forward_relay import relay_to_service


@dataclass(frozen=True)
class PostgresConnection(Connection):
    """The store's connection, plus plain psycopg connections with the services' settings."""

    def connect(self, **overrides: str) -> psycopg.Connection[tuple[object, ...]]:
        params = {**postgres_params(self.settings), **overrides}
        return psycopg.connect(**params, autocommit=True)


def development_password(api: client.ApiClient, installed: Installed) -> str | None:
    """The application role's password where the release has one (values-tilt-postgresql.yaml).

    With `postgresql.auth.passwordAuthentication`, PostgreSQL asks a connection from
    its pod's loopback (which is where a port-forward arrives) for the password
    instead of the certificate, as a developer's psql through a port-forward
    uses it. The subchart's Secret holds it under `password` only then.
    """
    secret = client.CoreV1Api(api).read_namespaced_secret(
        f"{installed.release}-postgresql", installed.namespace
    )
    encoded = (secret.data or {}).get("password")
    return base64.b64decode(encoded).decode() if encoded else None


@pytest.fixture(scope="module", name="postgresql")
def postgresql_connection(
    installed: Installed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresConnection]:
    """A relay to the release's PostgreSQL Service and the services' settings for it."""
    api = installed.cluster.api
    config = datastore_config(api, installed.namespace, installed.release)
    cert_dir = write_client_certificate(
        api, installed.namespace, "postgresql-client-cert", tmp_path_factory.mktemp("pg-client")
    )
    relay = relay_to_service(api, installed.namespace, f"{installed.release}-postgresql", 5432)
    env = client_environment(
        config, host=config["DATASTORE_HOST"], port=relay.local_port, cert_dir=cert_dir
    )
    password = development_password(api, installed)
    if password is not None:
        env["DATASTORE_PASSWORD"] = password
    try:
        with loopback_resolution(config["DATASTORE_HOST"]):
            yield PostgresConnection(relay, env)
    finally:
        relay.close()
    assert not relay.errors, relay.errors
