"""The chart's PostgreSQL pods, run as processes against a real server: the schema
Job (fix-cert-permissions, wait-for-postgresql, apply-migrations), the `helm test`
pod and the changelog-prune CronJob, with the environment the kubelet would give
them from the rendered objects."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devsupport.postgres import MIGRATION_USER, PostgresDatabase
from nvsentinel_store.providers.postgresql.changestream import PostgresChangeStream
from nvsentinel_store.providers.postgresql.provider import PRUNER_ROLE, PostgresStore
from nvsentinel_store.store import ChangeEvent, WatchOptions
from tests.datastore.test_prune_limits import ensure_pruner
from tests.fixtures import chart

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
    assert "nvsentinel_store_migrations is missing" in checked.stderr


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


# -- the changelog-prune CronJob ----------------------------------------------------

FAST = WatchOptions(poll_interval=0.02)


def prune_pod(objects: list[dict[str, Any]], db: PostgresDatabase, root: Path) -> Pod:
    """The CronJob's pod with the pruner's certificate copied in by fix-cert-permissions."""
    cronjob = chart.find(objects, "CronJob", "nvsentinel-changelog-prune")
    pod = Pod(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"], objects, db, root)
    ensure_pruner(db)
    pod.copy_certificate(PRUNER_ROLE)
    return pod


def take(stream: PostgresChangeStream, count: int) -> list[ChangeEvent]:
    got: list[ChangeEvent] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        event = stream.try_next(timeout=max(0.0, deadline - time.monotonic()))
        if event is not None:
            got.append(event)
    assert len(got) == count, f"{len(got)} of {count} events arrived"
    return got


def nodes(events: list[ChangeEvent]) -> list[str]:
    return [e["fullDocument"]["healthevent"]["nodename"] for e in events]


def age_changes(db: PostgresDatabase, where: str = "true") -> None:
    """Move changes (the ``where`` ones) 8 days into the past, beyond the default 7 days."""
    with psycopg.connect(db.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(
            "UPDATE datastore_changelog SET changed_at = changed_at - interval '8 days' "
            f"WHERE {where}"
        )


def changelog_count(db: PostgresDatabase) -> int:
    with psycopg.connect(db.superuser_conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM datastore_changelog").fetchone()
    assert row is not None
    return int(row[0])


def test_prune_cronjob_deletes_old_changes_and_keeps_those_a_live_consumer_has_not_read(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    tmp_path: Path,
) -> None:
    events = store.collection("health_events")
    lagging = events.watch(client_name="node-drainer", options=FAST)
    for n in range(10):
        events.insert_one({"healthevent": {"nodename": f"n{n}", "isfatal": False}})
    assert nodes(take(lagging, 3)) == ["n0", "n1", "n2"]
    lagging.save_token()  # stored now: a live consumer, three changes behind it
    lagging.close()
    age_changes(schema_database)

    pruned = prune_pod(objects, schema_database, tmp_path / "prune").run("changelog-prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "changes older than 7 days" in pruned.stdout
    assert f"as {PRUNER_ROLE}" in pruned.stdout
    assert (
        "changelog-prune: health_events: deleted 3 change(s), expired 0 consumer(s)"
        in pruned.stdout
    ), pruned.stdout
    assert changelog_count(schema_database) == 7
    resumed = events.watch(client_name="node-drainer", options=FAST)
    assert nodes(take(resumed, 7)) == [f"n{n}" for n in range(3, 10)]
    resumed.close()


def test_prune_cronjob_keeps_changes_younger_than_max_age_and_expires_silent_consumers(
    objects: list[dict[str, Any]],
    schema_database: PostgresDatabase,
    store: PostgresStore,
    tmp_path: Path,
) -> None:
    events = store.collection("health_events")
    reader = events.watch(client_name="fault-remediation", options=FAST)
    for n in range(6):
        events.insert_one({"healthevent": {"nodename": f"n{n}", "isfatal": False}})
    take(reader, 6)
    reader.save_token()  # passed everything, but silent for 8 days (below)
    reader.close()
    with psycopg.connect(schema_database.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(
            "UPDATE datastore_consumer_positions SET updated_at = updated_at - interval '8 days'"
        )
    age_changes(schema_database, "id IN (SELECT id FROM datastore_changelog ORDER BY id LIMIT 2)")

    pod = prune_pod(objects, schema_database, tmp_path / "prune")
    pruned = pod.run("changelog-prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert (
        "changelog-prune: health_events: deleted 2 change(s), expired 1 consumer(s)"
        in pruned.stdout
    ), pruned.stdout
    assert changelog_count(schema_database) == 4
    again = pod.run("changelog-prune")
    assert "health_events: deleted 0 change(s), expired 0 consumer(s)" in again.stdout


def test_prune_cronjob_deletes_in_batches_until_nothing_is_left(
    schema_database: PostgresDatabase, store: PostgresStore, tmp_path: Path
) -> None:
    """With a batch of 2, five old changes take three transactions (2, 2, 1) and all go."""
    events = store.collection("health_events")
    for n in range(5):
        events.insert_one({"healthevent": {"nodename": f"n{n}", "isfatal": False}})
    age_changes(schema_database)
    objects = chart.render(["values-postgresql.yaml"], ["changelogRetention.batchSize=2"])
    pruned = prune_pod(objects, schema_database, tmp_path / "prune").run("changelog-prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "2 per transaction" in pruned.stdout
    assert (
        "changelog-prune: health_events: deleted 5 change(s), expired 0 consumer(s)"
        in pruned.stdout
    ), pruned.stdout
    assert "changelog-prune: done in 3 transaction(s)" in pruned.stdout
    assert changelog_count(schema_database) == 0


def test_prune_cronjob_fails_with_a_message_when_the_schema_was_never_applied(
    objects: list[dict[str, Any]], postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    pruned = prune_pod(objects, postgres_database, tmp_path / "prune").run("changelog-prune")
    assert pruned.returncode == 1
    assert "datastore_changelog_prune" in pruned.stderr
    assert "changelog-prune: FAILED" in pruned.stderr


def test_prune_cronjob_passes_every_unit_the_values_schema_accepts_to_postgresql(
    schema_database: PostgresDatabase, tmp_path: Path
) -> None:
    max_age = "1 week 2 days 36 hours 90 minutes 30 seconds"
    objects = chart.render(["values-postgresql.yaml"], [f"changelogRetention.maxAge={max_age}"])
    pruned = prune_pod(objects, schema_database, tmp_path / "prune").run("changelog-prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert f"changes older than {max_age}" in pruned.stdout
    assert "changelog-prune: done" in pruned.stdout
