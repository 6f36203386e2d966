"""PostgreSQL installed with values-tilt-postgresql.yaml and the store tools, through its life.

A client inside the cluster (the store tools pod, wired by the chart's own
helper: `fix-cert-permissions`, `client-cert-refresher`, `verify-full`) checks
health and follows a change stream; the certificates are then renewed under
that running stream; last, `helm upgrade` with one more migration runs a new
schema Job and rolls the tools pod onto the new schema. The tests run in this
order and each leaves the release as the next one expects.
"""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.conftest import CHART, STORE_TOOLS, Installed
from tests.e2e.datastore_client import health_event, open_store
from tests.e2e.postgresql_client import (  # the fixture `postgresql`
    PostgresConnection,
    postgresql_connection,  # noqa: F401
)
from tests.e2e.schema_checks import shipped_migrations
from tests.e2e.store_tools import StoreTools, Watch
from tests.fixtures.cert_manager import renew_certificate
from tests.fixtures.rollout import read_state, wait_for_rollout

pytestmark = pytest.mark.e2e

DATASTORE = "postgresql"
VALUES = ("values-tilt-postgresql.yaml",)
HELM_SET = (STORE_TOOLS,)

SERVER_CERTIFICATE = "nvsentinel-postgresql-server-tls"
CLIENT_CERTIFICATE = "postgresql-client-cert"
MOUNT_PATH = "/etc/nvsentinel/datastore-tls"
#: PostgreSQL's SSLRequest code (protocol docs: 1234 << 16 | 5679).
SSL_REQUEST = 80877103


@pytest.fixture(scope="module")
def tools(installed: Installed) -> StoreTools:
    return StoreTools(installed.cluster.kubeconfig, installed.namespace, installed.release)


@pytest.fixture
def watch(tools: StoreTools, postgresql: PostgresConnection) -> Iterator[tuple[Watch, str]]:
    """A `watch` on health_events running in the tools pod, registered as a consumer."""
    name = f"e2e-tools-{uuid.uuid4().hex[:8]}"
    running = tools.watch("health_events", name)
    try:
        wait_until(lambda: consumer_registered(postgresql, name), f"consumer {name} registered")
        yield running, name
    finally:
        running.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(2)


def consumer_registered(postgresql: PostgresConnection, client_name: str) -> bool:
    with postgresql.connect() as conn:
        row = conn.execute(
            "SELECT 1 FROM datastore_consumer_positions WHERE client_name = %s", (client_name,)
        ).fetchone()
    return row is not None


def insert_health_event(postgresql: PostgresConnection) -> str:
    event_id = str(uuid.uuid4())
    with open_store(postgresql.settings) as store:
        store.collection("health_events").insert_one(
            health_event(event_id, f"e2e-node-{event_id[:8]}")
        )
    return event_id


def sees_insert(event_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["operationType"] == "insert" and e["documentKey"]["_id"] == event_id


def server_certificate(postgresql: PostgresConnection) -> bytes:
    """The DER certificate PostgreSQL presents to a new connection (through the relay)."""
    with socket.create_connection(("127.0.0.1", postgresql.relay.local_port), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, SSL_REQUEST))
        assert raw.recv(1) == b"S", "the server refused TLS"
        context = ssl.create_default_context()
        # Only reading the certificate; verify-full is what the clients above do.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def secret_certificate(installed: Installed, secret: str) -> str:
    data = (
        client.CoreV1Api(installed.cluster.api)
        .read_namespaced_secret(secret, installed.namespace)
        .data
    )
    return base64.b64decode(data["tls.crt"]).decode()


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def test_helm_test_passes_with_the_development_values(installed: Installed) -> None:
    output = installed.cluster.helm(
        "test", installed.release, "--namespace", installed.namespace, "--logs", timeout=600
    )
    assert "Succeeded" in output, output


def test_store_tools_pod_is_healthy_over_verify_full_as_the_service_user(
    tools: StoreTools,
) -> None:
    report = tools.health()
    by_name = checks(report)
    assert report["healthy"], report
    assert by_name["connection"]["detail"].startswith("user nvsentinel "), by_name
    assert "(sslmode verify-full)" in by_name["tls"]["detail"], by_name
    latest = max(shipped_migrations())
    assert by_name["schema"]["ok"] and by_name["schema"]["detail"] == f"version {latest}", by_name
    # the key fix-cert-permissions laid out: owned by the pod's user, 0600
    listing = tools.run("ls", "-ln", f"{MOUNT_PATH}/tls.key").stdout.split()
    assert listing[0] == "-rw-------" and listing[2] == "65532", listing


def test_store_tools_watch_prints_a_write_made_by_another_client(
    watch: tuple[Watch, str], postgresql: PostgresConnection
) -> None:
    running, _ = watch
    event_id = insert_health_event(postgresql)
    event = running.next_event(sees_insert(event_id))
    assert event["ns"]["coll"] == "health_events"
    assert event["fullDocument"]["healthevent"]["nodename"] == f"e2e-node-{event_id[:8]}"


def test_renewed_certificates_reach_server_and_clients_without_stopping_a_stream(
    installed: Installed,
    tools: StoreTools,
    watch: tuple[Watch, str],
    postgresql: PostgresConnection,
) -> None:
    running, _ = watch
    before = insert_health_event(postgresql)
    running.next_event(sees_insert(before))
    with postgresql.connect() as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    old_server = server_certificate(postgresql)
    old_client = secret_certificate(installed, CLIENT_CERTIFICATE)

    for certificate in (SERVER_CERTIFICATE, CLIENT_CERTIFICATE):
        renew_certificate(installed.cluster.api, installed.namespace, certificate)
    new_client = secret_certificate(installed, CLIENT_CERTIFICATE)
    assert new_client != old_client

    # kubelet updates the Secret volumes (about a minute), then the reloader
    # sidecar reloads PostgreSQL and client-cert-refresher copies the client's.
    wait_until(lambda: server_certificate(postgresql) != old_server, "the renewed server cert")
    wait_until(
        lambda: tools.read_file(f"{MOUNT_PATH}/tls.crt") == new_client,
        "client-cert-refresher to copy the renewed client cert into the tools pod",
    )
    with postgresql.connect() as conn:
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone() == started
    # new connections from the pod present the new certificate and verify the new server one
    assert tools.health()["healthy"]
    # and the stream that was running all along goes on
    after = insert_health_event(postgresql)
    running.next_event(sees_insert(after))
    assert running.process.poll() is None


def test_helm_upgrade_with_a_new_migration_runs_a_new_schema_job(
    installed: Installed, tools: StoreTools, postgresql: PostgresConnection, tmp_path: Path
) -> None:
    chart = tmp_path / "nvsentinel"
    shutil.copytree(CHART, chart)
    latest = max(shipped_migrations())
    added = f"{latest + 1:04d}_e2e_upgrade.sql"
    (chart / "files" / "postgresql" / "migrations" / added).write_text(
        "COMMENT ON TABLE health_events IS 'e2e: applied by the upgraded schema Job';\n"
    )
    batch = client.BatchV1Api(installed.cluster.api)

    def schema_jobs() -> set[str]:
        return {
            job.metadata.name
            for job in batch.list_namespaced_job(installed.namespace).items
            if job.metadata.name.startswith(f"{installed.release}-schema-")
        }

    (old_job,) = schema_jobs()
    installed.upgrade(chart)
    wait_until(lambda: schema_jobs() - {old_job}, "the new schema Job")
    (new_job,) = schema_jobs() - {old_job}
    wait_for_rollout(installed.cluster.api, "Job", new_job, installed.namespace, timeout=300)
    assert read_state(installed.cluster.api, "Job", new_job, installed.namespace).done
    # the tools pod rolls onto the new schema ConfigMap; Ready means health expects version N+1
    wait_for_rollout(
        installed.cluster.api, "Deployment", tools.deployment, installed.namespace, timeout=300
    )
    with postgresql.connect() as conn:
        versions: dict[object, object] = dict(
            conn.execute("SELECT version, name FROM nvsentinel_store_migrations").fetchall()
        )
        comment = conn.execute("SELECT obj_description('health_events'::regclass)").fetchone()
    assert versions.get(latest + 1) == added, versions
    assert comment == ("e2e: applied by the upgraded schema Job",)
    schema = checks(tools.health())["schema"]
    assert schema == {"name": "schema", "ok": True, "detail": f"version {latest + 1}"}, schema
    wait_until(lambda: old_job not in schema_jobs(), "helm to remove the old schema Job", 120)
