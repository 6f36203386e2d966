"""NOTES.txt prints the seed's verification and troubleshooting commands that apply
to the release's provider, and none that do not."""

from __future__ import annotations

import subprocess

import pytest

from tests.chart.scenarios import BY_NAME, REPO, Scenario
from tests.fixtures import chart

pytestmark = pytest.mark.chart


def notes(scenario: Scenario) -> str:
    cmd = [str(chart.HELM), "install", "nvsentinel", str(chart.CHART), "-n", "nvsentinel"]
    cmd += ["--dry-run=client", "--hide-notes=false"]
    for values_file in scenario.values_files:
        cmd += ["-f", str(REPO / values_file)]
    for assignment in scenario.set_values:
        cmd += ["--set", assignment]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_postgresql_notes_carry_the_seed_commands() -> None:
    text = notes(BY_NAME["postgresql-production"])
    for command in (
        "kubectl get certificate -n nvsentinel",
        "kubectl get secret postgresql-client-cert -n nvsentinel",
        "kubectl get svc nvsentinel-postgresql -n nvsentinel",
        "nslookup nvsentinel-postgresql.nvsentinel.svc.cluster.local",
        "kubectl logs -n nvsentinel deployment/fault-quarantine -c fix-cert-permissions",
        "psql -U postgres -d nvsentinel -c '\\d health_events'",
        "psql -U postgres -d nvsentinel -c 'SELECT COUNT(*) FROM datastore_changelog;'",
        "psql -U postgres -d nvsentinel -c 'SELECT * FROM resume_tokens;'",
        "helm test nvsentinel -n nvsentinel --logs",
    ):
        assert command in text, command
    assert "mongodb" not in text


def test_mongodb_notes_name_mongodb_objects_only() -> None:
    text = notes(BY_NAME["mongodb-defaults"])
    assert "kubectl get secret mongodb-client-cert -n nvsentinel" in text
    assert "kubectl exec -n nvsentinel nvsentinel-mongodb-0 -c mongod" in text
    assert "postgresql" not in text and "schema" not in text


def test_password_auth_notes_skip_certificate_commands() -> None:
    text = notes(BY_NAME["postgresql-external-password"])
    assert "password from Secret nvsentinel-db" in text
    assert "fix-cert-permissions" not in text and "kubectl get certificate" not in text
    assert "pg.example.internal:5432 (external server)" in text


def test_store_tools_commands_appear_only_when_the_pod_exists() -> None:
    health = "kubectl exec -n nvsentinel deploy/nvsentinel-store-tools -- nvsentinel-store health"
    watch = "deploy/nvsentinel-store-tools -- nvsentinel-store watch --collection health_events"
    with_tools = notes(BY_NAME["postgresql-custom-host-and-domain"])
    assert health in with_tools and watch in with_tools
    without = notes(BY_NAME["postgresql-production"])
    assert "store-tools" not in without
    # health is PostgreSQL-only; watch works on MongoDB too
    mongodb = notes(BY_NAME["mongodb-tilt"])
    assert health not in mongodb and watch in mongodb
