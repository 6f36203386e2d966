"""The chart's PostgreSQL pods, run as processes against a real server: the schema
Job (fix-cert-permissions, wait-for-postgresql, apply-migrations) and the `helm test`
pod, with the environment the kubelet would give them from the rendered objects."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import chart
from tests.fixtures.postgres import MIGRATION_USER, PostgresDatabase

pytestmark = pytest.mark.datastore

MOUNT_PATH = "/etc/nvsentinel/datastore-tls"
SCHEMA_DIR = "/opt/nvsentinel/schema"
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return chart.render(["values-postgresql.yaml"])


def by_prefix(objects: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    found = [o for o in chart.of_kind(objects, kind) if o["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


class Pod:
    """One rendered pod, its paths mapped into a temporary directory."""

    def __init__(
        self,
        spec: dict[str, Any],
        objects: list[dict[str, Any]],
        db: PostgresDatabase,
        root: Path,
    ) -> None:
        self.spec = spec
        self.db = db
        self.root = root
        self.cert_dir = root / "datastore-tls"
        self.cert_dir.mkdir(parents=True)
        self.schema_dir = root / "schema"
        self.config = dict(chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")["data"])
        # The in-cluster Service is the local test server here.
        self.config.update(
            DATASTORE_HOST="localhost",
            DATASTORE_PORT=str(db.server.port),
            DATASTORE_DATABASE=db.name,
        )
        self.schema_map = objects

    def path(self, text: str) -> str:
        return text.replace(MOUNT_PATH, str(self.cert_dir)).replace(
            SCHEMA_DIR, str(self.schema_dir)
        )

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """envFrom, then env in order with $(VAR) expanded, as the kubelet does."""
        env = {"PATH": f"{self.db.server.bindir}:{os.environ['PATH']}"}
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] == "nvsentinel-datastore-config"
            env.update({k: self.path(v) for k, v in self.config.items()})
        for entry in container.get("env", []):
            value = entry["value"]
            env[entry["name"]] = self.path(
                REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), value)
            )
        env["HOME"] = str(self.root)
        return env

    def copy_certificate(self, user: str) -> None:
        """Run fix-cert-permissions with the user's certificate as the Secret."""
        fix = next(c for c in self.spec["initContainers"] if c["name"] == "fix-cert-permissions")
        env = {e["name"]: e["value"] for e in fix["env"]}
        env.update(
            PATH=os.environ["PATH"],
            CERT_SOURCE_DIR=str(self.db.server.client_cert(user).path),
            CERT_TARGET_DIR=str(self.cert_dir),
        )
        subprocess.run(["/bin/sh", "-c", fix["args"][0]], env=env, check=True, capture_output=True)

    def run(self, name: str) -> subprocess.CompletedProcess[str]:
        containers = [*self.spec.get("initContainers", []), *self.spec["containers"]]
        container = next(c for c in containers if c["name"] == name)
        argv = [self.path(a) for a in container.get("command", [])]
        argv += [self.path(a) for a in container.get("args", [])]
        return subprocess.run(
            argv, env=self.env(container), capture_output=True, text=True, timeout=120, check=False
        )


def write_schema_configmap(
    objects: list[dict[str, Any]], job_spec: dict[str, Any], to: Path
) -> None:
    """Lay the schema ConfigMap out as the Job's volume items do."""
    volume = next(v for v in job_spec["volumes"] if v["name"] == "schema")
    data = chart.find(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    for item in volume["configMap"]["items"]:
        target = to / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])


def test_schema_job_then_helm_test_pod_succeed_against_a_real_server(
    objects: list[dict[str, Any]], postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    job_spec = by_prefix(objects, "Job", "nvsentinel-schema-")["spec"]["template"]["spec"]
    job = Pod(job_spec, objects, postgres_database, tmp_path / "job")
    write_schema_configmap(objects, job_spec, job.schema_dir)
    job.copy_certificate(MIGRATION_USER)

    waited = job.run("wait-for-postgresql")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "accepts connections" in waited.stdout

    applied = job.run("apply-migrations")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "schema is current" in applied.stdout
    again = job.run("apply-migrations")
    assert again.returncode == 0 and "applying" not in again.stdout

    test_pod = chart.find(objects, "Pod", "nvsentinel-datastore-test")["spec"]
    pod = Pod(test_pod, objects, postgres_database, tmp_path / "test")
    pod.copy_certificate("nvsentinel")
    checked = pod.run("datastore-test")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "datastore-test: OK: TLS, user nvsentinel, schema version" in checked.stdout


def test_helm_test_pod_fails_when_the_schema_was_never_applied(
    objects: list[dict[str, Any]], postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    test_pod = chart.find(objects, "Pod", "nvsentinel-datastore-test")["spec"]
    pod = Pod(test_pod, objects, postgres_database, tmp_path / "test")
    pod.copy_certificate("nvsentinel")
    checked = pod.run("datastore-test")
    assert checked.returncode != 0
    assert "schema_migrations is missing" in checked.stderr


def test_wait_for_postgresql_gives_up_with_a_message_when_nothing_listens(
    objects: list[dict[str, Any]], postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    job_spec = by_prefix(objects, "Job", "nvsentinel-schema-")["spec"]["template"]["spec"]
    job = Pod(job_spec, objects, postgres_database, tmp_path / "job")
    job.copy_certificate(MIGRATION_USER)
    job.config["DATASTORE_PORT"] = "1"  # nothing listens there
    wait = next(c for c in job_spec["initContainers"] if c["name"] == "wait-for-postgresql")
    env = job.env(wait)
    env["WAIT_TIMEOUT_SECONDS"] = "3"
    result = subprocess.run(
        ["/bin/sh", "-c", wait["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "localhost:1 did not accept connections within 3s" in result.stderr
