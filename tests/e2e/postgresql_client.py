"""The test process's own PostgreSQL client for an installed release: the services'
settings and client certificate over a port-forward relay (see datastore_client).

Test modules import ``postgresql_connection``, the ``postgresql`` fixture, from here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from kubernetes import client

from nvsentinel_store.config import postgres_conninfo
from tests.e2e.conftest import Installed
from tests.e2e.datastore_client import Connection, relayed_environment


@dataclass(frozen=True)
class PostgresConnection(Connection):
    """The store's connection, plus plain psycopg connections with the services' settings."""

    def connect(self, **overrides: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(postgres_conninfo(self.settings, **overrides), autocommit=True)


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
    password = development_password(api, installed)
    with relayed_environment(
        api,
        installed.namespace,
        installed.release,
        store="postgresql",
        port=5432,
        certificate_secret="postgresql-client-cert",
        cert_dir=tmp_path_factory.mktemp("pg-client"),
        extra_env={"DATASTORE_PASSWORD": password} if password is not None else None,
    ) as (relay, env):
        yield PostgresConnection(relay, env)
