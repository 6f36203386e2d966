"""PostgreSQL on kind: the chart installed with values-postgresql.yaml, used as a service uses it.

The test process reads the services' ConfigMap and the `postgresql-client-cert`
Secret, and connects through a port-forward relay with `verify-full` against the
host name the services dial. The seed's troubleshooting commands are run as an
operator types them, and its "check network policies" with probe pods: only
datastore clients reach port 5432.
"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
from kubernetes import client
from psycopg.conninfo import make_conninfo

from nvsentinel_store.config import postgres_params
from tests.e2e.conftest import STORE_TOOLS, Installed
from tests.e2e.datastore_client import assert_change_stream_round_trip, open_store
from tests.e2e.network_policy_probe import (
    DATASTORE_CLIENT_LABEL,
    PORT,
    postgresql_targets,
    probe,
)
from tests.e2e.postgresql_client import (  # the fixture `postgresql`
    PostgresConnection,
    postgresql_connection,  # noqa: F401
)
from tests.e2e.schema_checks import assert_schema_current, assert_tables_and_triggers
from tests.e2e.store_tools import StoreTools
from tests.fixtures.chart import SERVICES
from tests.fixtures.diagnostics import kubectl
from tests.fixtures.rollout import read_state

pytestmark = pytest.mark.e2e

DATASTORE = "postgresql"
HELM_SET = (STORE_TOOLS,)


def test_services_dial_postgresql_with_verify_full_and_a_client_certificate(
    postgresql: PostgresConnection,
) -> None:
    config = postgresql.env
    assert config["DATASTORE_PROVIDER"] == "postgresql"
    assert config["DATASTORE_SSLMODE"] == "verify-full"
    with postgresql.connect() as conn:
        row = conn.execute(
            "SELECT current_user, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    user, ssl, client_dn = row
    assert user == config["DATASTORE_USERNAME"]
    assert ssl is True
    assert f"CN={user}" in str(client_dn)


def test_plaintext_and_certificateless_connections_are_refused(
    postgresql: PostgresConnection,
) -> None:
    with pytest.raises(psycopg.OperationalError):
        postgresql.connect(sslmode="disable").close()
    params = postgres_params(postgresql.settings)
    params.pop("sslcert")
    params.pop("sslkey")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(make_conninfo(**params)).close()


def test_schema_job_applied_every_migration_the_chart_ships(
    installed: Installed, postgresql: PostgresConnection
) -> None:
    jobs = [
        job
        for job in client.BatchV1Api(installed.cluster.api)
        .list_namespaced_job(installed.namespace)
        .items
        if job.metadata.name.startswith(f"{installed.release}-schema-")
    ]
    assert len(jobs) == 1, [job.metadata.name for job in jobs]
    assert read_state(installed.cluster.api, "Job", jobs[0].metadata.name, installed.namespace).done
    with postgresql.connect() as conn:
        assert_schema_current(conn)


def test_services_role_reads_nvsentinel_schema_version_3(postgresql: PostgresConnection) -> None:
    """What NVSentinel's store-client waits for before every service starts."""
    with postgresql.connect() as conn:
        user = conn.execute("SELECT current_user").fetchone()
        version = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM nvsentinel_schema_migrations"
        ).fetchone()
    assert user == (postgresql.env["DATASTORE_USERNAME"],)
    assert version == (3,)


def test_tables_and_change_capture_triggers_exist(postgresql: PostgresConnection) -> None:
    with postgresql.connect() as conn:
        assert_tables_and_triggers(conn)


def test_health_event_round_trip_through_the_change_stream(postgresql: PostgresConnection) -> None:
    with open_store(postgresql.settings) as store:
        assert_change_stream_round_trip(store, client_name="e2e-postgresql-round-trip")


def test_seed_sql_checks_show_changelog_entries_resume_tokens_and_consumer_positions(
    postgresql: PostgresConnection,
) -> None:
    with open_store(postgresql.settings) as store:
        assert_change_stream_round_trip(store, client_name="e2e-postgresql-troubleshooting")
    with postgresql.connect() as conn:
        count = conn.execute("SELECT COUNT(*) FROM datastore_changelog;").fetchone()
        # NVSentinel's watchers' tokens: its shape, readable by the services' role.
        tokens = conn.execute("SELECT * FROM resume_tokens;")
        token_columns = [column.name for column in tokens.description or []]
        # This project's consumers, as NOTES.txt shows them.
        lag = conn.execute("SELECT * FROM datastore_consumer_lag();")
        columns = [column.name for column in lag.description or []]
        rows = [dict(zip(columns, row, strict=True)) for row in lag.fetchall()]
    assert count is not None and count[0] >= 2
    assert token_columns == ["client_name", "resume_token", "last_updated"]
    assert any(row["client_name"] == "e2e-postgresql-troubleshooting" for row in rows), rows


def _kubectl(installed: Installed, command: str, *quoted: str) -> subprocess.CompletedProcess[str]:
    """Run a seed command as written (`kubectl ...`), with the e2e cluster's kubeconfig.

    ``command`` is split on spaces; ``quoted`` arguments are appended whole.
    """
    binary = kubectl()
    assert binary is not None, "kubectl not found (.bin/kubectl or PATH)"
    argv = [*command.split(), *quoted]
    assert argv[0] == "kubectl"
    return subprocess.run(
        [binary, "--kubeconfig", str(installed.cluster.kubeconfig), *argv[1:]],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_seed_psql_in_the_pod_shows_triggers_and_changelog(installed: Installed) -> None:
    """The seed's "connect to PostgreSQL and run \\d health_events", as the postgres superuser."""
    psql = (
        "kubectl exec -n nvsentinel nvsentinel-postgresql-0 -c postgresql -- "
        "psql -U postgres -d nvsentinel -v ON_ERROR_STOP=1 -c"
    )
    described = _kubectl(installed, psql, "\\d health_events")
    assert described.returncode == 0, described.stderr
    assert "Triggers:" in described.stdout, described.stdout
    for trigger in ("health_events_changes", "health_events_extract"):
        assert trigger in described.stdout, described.stdout
    counted = _kubectl(installed, psql, "SELECT COUNT(*) FROM datastore_changelog;")
    assert counted.returncode == 0, counted.stderr
    tokens = _kubectl(installed, psql, "SELECT * FROM resume_tokens;")
    assert tokens.returncode == 0, tokens.stderr


def test_seed_command_certificates_are_ready(installed: Installed) -> None:
    result = _kubectl(installed, "kubectl get certificate -n nvsentinel")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[1:]]
    ready = header.index("READY")
    assert rows, "no certificates listed"
    assert all(row[ready] == "True" for row in rows), result.stdout
    secrets = header.index("SECRET")
    assert {"postgresql-client-cert", "nvsentinel-postgresql-server-tls"} <= {
        row[secrets] for row in rows
    }, result.stdout


def test_seed_command_client_certificate_secret_exists(installed: Installed) -> None:
    result = _kubectl(installed, "kubectl get secret postgresql-client-cert -n nvsentinel")
    assert result.returncode == 0, result.stderr
    assert "kubernetes.io/tls" in result.stdout


def test_seed_command_postgresql_service_exists(installed: Installed) -> None:
    result = _kubectl(installed, "kubectl get svc nvsentinel-postgresql -n nvsentinel")
    assert result.returncode == 0, result.stderr
    assert "5432/TCP" in result.stdout


def test_seed_command_resolves_the_service_name_in_cluster(installed: Installed) -> None:
    result = _kubectl(
        installed,
        "kubectl run dns-check --rm -i --restart=Never -n nvsentinel --image=busybox:1.36 "
        "-- nslookup nvsentinel-postgresql.nvsentinel.svc.cluster.local",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nvsentinel-postgresql.nvsentinel.svc.cluster.local" in result.stdout


def fix_cert_permissions_runs(
    installed: Installed, service: str
) -> list[client.V1ContainerStateTerminated]:
    """The terminated states of `fix-cert-permissions` in the service's pods (may be empty)."""
    core = client.CoreV1Api(installed.cluster.api)
    deployment = client.AppsV1Api(installed.cluster.api).read_namespaced_deployment(
        service, installed.namespace
    )
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    pods = core.list_namespaced_pod(installed.namespace, label_selector=selector).items
    return [
        status.state.terminated
        for pod in pods
        for status in pod.status.init_container_statuses or []
        if status.name == "fix-cert-permissions" and status.state.terminated is not None
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_service_init_container_fixed_certificate_permissions(
    installed: Installed, service: str
) -> None:
    deadline = time.monotonic() + 180
    finished = fix_cert_permissions_runs(installed, service)
    while not finished and time.monotonic() < deadline:
        time.sleep(3)
        finished = fix_cert_permissions_runs(installed, service)
    assert finished, f"fix-cert-permissions of {service} did not run within 180s"
    assert all(state.exit_code == 0 for state in finished), finished
    # The seed's command, as written, for the deployment it names.
    if service == "fault-quarantine":
        result = _kubectl(
            installed,
            "kubectl logs -n nvsentinel deployment/fault-quarantine -c fix-cert-permissions",
        )
        assert result.returncode == 0, result.stderr


def test_chart_helm_test_connects_with_the_client_certificate(installed: Installed) -> None:
    output = installed.cluster.helm(
        "test", installed.release, "--namespace", installed.namespace, "--logs", timeout=600
    )
    assert "Succeeded" in output, output


def test_store_tools_pod_reports_healthy_with_the_production_values(installed: Installed) -> None:
    """`nvsentinel-store health` run where operators run it: in the cluster, as the services."""
    tools = StoreTools(installed.cluster.kubeconfig, installed.namespace, installed.release)
    report = tools.health()
    assert report["healthy"], report
    checks = {check["name"]: check for check in report["checks"]}
    assert "(sslmode verify-full)" in checks["tls"]["detail"], checks
    assert checks["connection"]["detail"].startswith("user nvsentinel "), checks


def test_the_chart_renders_a_network_policy_for_postgresql(installed: Installed) -> None:
    policies = {
        policy.metadata.name: policy
        for policy in client.NetworkingV1Api(installed.cluster.api)
        .list_namespaced_network_policy(installed.namespace)
        .items
    }
    policy = policies.get(f"{installed.release}-postgresql")
    assert policy is not None, sorted(policies)
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    # PostgreSQL dials nothing but DNS.
    egress_ports = {(p.port, p.protocol) for rule in policy.spec.egress for p in rule.ports}
    assert egress_ports == {(53, "UDP"), (53, "TCP")}, egress_ports
    pod = client.CoreV1Api(installed.cluster.api).read_namespaced_pod(
        f"{installed.release}-postgresql-0", installed.namespace
    )
    selector = policy.spec.pod_selector.match_labels
    assert selector and all(pod.metadata.labels.get(k) == v for k, v in selector.items())
    client_rule = policy.spec.ingress[0]
    assert [(p.port, p.protocol) for p in client_rule.ports] == [(PORT, "TCP")]
    peers = [peer.pod_selector.match_labels for peer in client_rule._from]
    key, value = DATASTORE_CLIENT_LABEL
    assert {key: value} in peers, peers


def test_a_pod_without_the_datastore_client_label_cannot_reach_postgresql(
    installed: Installed,
) -> None:
    targets = postgresql_targets(installed)
    results = probe(installed, targets, {}, attempts=1)
    assert all(result.startswith("closed") for result in results.values()), (
        f"an unlabelled pod connected to PostgreSQL's port {PORT}: the NetworkPolicy is not "
        f"enforced ({results})"
    )
    # Refused or timed out by the policy, not a name that did not resolve.
    assert all("refused" in result or "timed out" in result for result in results.values()), results


def test_a_datastore_client_pod_reaches_postgresql(installed: Installed) -> None:
    targets = postgresql_targets(installed)
    key, value = DATASTORE_CLIENT_LABEL
    results = probe(installed, targets, {key: value}, attempts=10)
    assert results == dict.fromkeys(targets, "open"), results
