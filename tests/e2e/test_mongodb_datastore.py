"""MongoDB on kind: the chart's default install, used as a service uses it.

A single-member replica set `rs0` with TLS required and X.509 client
authentication. The test process connects through a port-forward relay with the
`mongodb-client-cert` Secret, verifying the server against the host name the
services dial, and runs the same change-stream round trip as on PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymongo
import pytest
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

from nvsentinel_store.config import mongo_client_kwargs
from tests.e2e.conftest import Installed
from tests.e2e.datastore_client import (
    Connection,
    assert_change_stream_round_trip,
    open_store,
    relayed_environment,
)
from tests.fixtures.diagnostics import kubectl

pytestmark = pytest.mark.e2e

DATASTORE = "mongodb"


@dataclass(frozen=True)
class MongoConnection(Connection):
    """The store's connection, plus plain pymongo clients with the services' settings."""

    def client(self, **overrides: object) -> pymongo.MongoClient[dict[str, object]]:
        kwargs = mongo_client_kwargs(self.settings)
        kwargs.update(overrides)
        return pymongo.MongoClient(**kwargs)


@pytest.fixture(scope="module")
def mongodb(
    installed: Installed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MongoConnection]:
    with relayed_environment(
        installed.cluster.api,
        installed.namespace,
        installed.release,
        store="mongodb",
        port=27017,
        certificate_secret="mongodb-client-cert",
        cert_dir=tmp_path_factory.mktemp("mongo-client"),
    ) as (relay, env):
        yield MongoConnection(relay, env)


def test_services_authenticate_to_mongodb_with_x509_over_verified_tls(
    mongodb: MongoConnection,
) -> None:
    assert mongodb.env["DATASTORE_PROVIDER"] == "mongodb"
    assert mongodb.env.get("DATASTORE_SSLMODE", "verify-full") == "verify-full"
    with mongodb.client() as mongo:
        status = mongo.admin.command("connectionStatus")
    users = status["authInfo"]["authenticatedUsers"]
    assert [user["db"] for user in users] == ["$external"], status
    assert users[0]["user"].startswith("CN="), users


def test_mongodb_is_replica_set_rs0_with_a_primary(mongodb: MongoConnection) -> None:
    with mongodb.client() as mongo:
        hello = mongo.admin.command("hello")
    assert hello["setName"] == "rs0"
    assert hello["isWritablePrimary"] is True


def test_plaintext_and_certificateless_connections_are_refused(mongodb: MongoConnection) -> None:
    settings = mongodb.settings
    plaintext: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        host=settings.host,
        port=settings.port,
        directConnection=True,
        tls=False,
        serverSelectionTimeoutMS=3000,
    )
    with pytest.raises((ServerSelectionTimeoutError, AutoReconnect)), plaintext:
        plaintext.admin.command("ping")
    anonymous: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        host=settings.host,
        port=settings.port,
        directConnection=True,
        tls=True,
        tlsCAFile=str(settings.sslrootcert),
        serverSelectionTimeoutMS=3000,
    )
    # Refused at the TLS handshake (no client certificate) or, if the server
    # lets such clients connect, refused every command for want of a user.
    with pytest.raises((ServerSelectionTimeoutError, AutoReconnect, OperationFailure)), anonymous:
        anonymous[settings.database].list_collection_names()


def test_health_event_round_trip_through_the_change_stream(mongodb: MongoConnection) -> None:
    with open_store(mongodb.settings) as store:
        assert_change_stream_round_trip(store, client_name="e2e-mongodb-round-trip")


def test_seed_commands_show_ready_certificates_and_the_client_secret(installed: Installed) -> None:
    binary = kubectl() or shutil.which("kubectl")
    assert binary is not None
    base = [binary, "--kubeconfig", str(installed.cluster.kubeconfig)]
    certificates = subprocess.run(
        [*base, "get", "certificate", "-n", "nvsentinel"], capture_output=True, text=True
    )
    assert certificates.returncode == 0, certificates.stderr
    rows = [line.split() for line in certificates.stdout.strip().splitlines()]
    ready = rows[0].index("READY")
    assert len(rows) > 1 and all(row[ready] == "True" for row in rows[1:]), certificates.stdout
    secret = subprocess.run(
        [*base, "get", "secret", "mongodb-client-cert", "-n", "nvsentinel"],
        capture_output=True,
        text=True,
    )
    assert secret.returncode == 0, secret.stderr
    assert "kubernetes.io/tls" in secret.stdout


def test_chart_helm_test_connects_with_the_client_certificate(installed: Installed) -> None:
    output = installed.cluster.helm(
        "test", installed.release, "--namespace", installed.namespace, "--logs", timeout=600
    )
    assert "Succeeded" in output, output
