"""The schema reaches PostgreSQL through a hashed ConfigMap and Job, not a Helm hook,
as the migration role; bootstrap.sql reaches the subchart's initdb."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import BY_NAME, env_map, pod_spec, render_chart_dir, rendered
from tests.fixtures import chart

pytestmark = pytest.mark.chart

FILES = chart.CHART / "files" / "postgresql"
MIGRATIONS = sorted((FILES / "migrations").glob("*.sql"))
PRODUCTION = BY_NAME["postgresql-production"]


def schema_job(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> dict[str, Any]:
    jobs = [
        j
        for j in chart.of_kind(objects, "Job")
        if j["metadata"]["name"].startswith("nvsentinel-schema-")
    ]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    return jobs[0]


def schema_configmap(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> dict[str, Any]:
    maps = [
        c
        for c in chart.of_kind(objects, "ConfigMap")
        if c["metadata"]["name"].startswith("nvsentinel-schema-")
    ]
    assert len(maps) == 1
    return maps[0]


def test_schema_configmap_ships_every_migration_and_the_applier_byte_for_byte() -> None:
    data = schema_configmap(rendered(PRODUCTION))["data"]
    assert MIGRATIONS, "no migrations in files/postgresql/migrations"
    assert set(data) == {"apply-migrations.sh", *(m.name for m in MIGRATIONS)}
    for migration in MIGRATIONS:
        assert data[migration.name] == migration.read_text(), migration.name
    assert data["apply-migrations.sh"] == (FILES / "apply-migrations.sh").read_text()


def test_schema_job_applies_the_mounted_migrations_with_the_applier() -> None:
    job = schema_job(rendered(PRODUCTION))
    spec = pod_spec(job)
    container = spec["containers"][0]
    command = container["command"]
    assert command[:2] == ["bash", "/opt/nvsentinel/schema/apply-migrations.sh"]
    assert command[command.index("--dir") + 1] == "/opt/nvsentinel/schema/migrations"
    assert command[-1] == "apply"
    volume = next(v for v in spec["volumes"] if v["name"] == "schema")
    cm_name = schema_configmap(rendered(PRODUCTION))["metadata"]["name"]
    assert volume["configMap"]["name"] == cm_name
    paths = {i["path"] for i in volume["configMap"]["items"]}
    assert paths == {"apply-migrations.sh", *(f"migrations/{m.name}" for m in MIGRATIONS)}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "schema")
    assert mount["mountPath"] == "/opt/nvsentinel/schema"


def test_schema_job_connects_as_the_migration_role_after_pg_isready() -> None:
    job = schema_job(rendered(PRODUCTION))
    spec = pod_spec(job)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["fix-cert-permissions", "wait-for-postgresql"]
    wait = spec["initContainers"][1]
    assert "pg_isready" in wait["args"][0]
    for container in (wait, spec["containers"][0]):
        env = env_map(container)
        assert env["DATASTORE_USERNAME"]["value"] == "nvsentinel_migrator"
        assert env["PGUSER"]["value"] == "$(DATASTORE_USERNAME)"
        assert env["PGSSLCERT"]["value"] == "$(DATASTORE_SSLCERT)"
        assert env["PGSSLMODE"]["value"] == "$(DATASTORE_SSLMODE)"
        # $(VAR) expands only variables defined before it in env (or envFrom).
        order = [e["name"] for e in container["env"]]
        assert order.index("DATASTORE_USERNAME") < order.index("PGUSER")
    secret = next(v for v in spec["volumes"] if v["name"] == "datastore-client-cert-secret")
    assert secret["secret"]["secretName"] == "postgresql-migration-cert"
    assert spec["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 6
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_schema_job_is_an_ordinary_object_not_a_helm_hook() -> None:
    objects = rendered(PRODUCTION)
    for obj in (schema_job(objects), schema_configmap(objects)):
        assert "helm.sh/hook" not in obj["metadata"].get("annotations", {})


def copy_chart(tmp_path: Path) -> Path:
    target = tmp_path / "nvsentinel"
    shutil.copytree(chart.CHART, target)
    return target


PG = (
    "global.datastore.provider=postgresql",
    "postgresql.enabled=true",
    "mongodb.enabled=false",
)


def test_schema_job_and_configmap_names_change_when_a_migration_changes(tmp_path: Path) -> None:
    copy = copy_chart(tmp_path)
    before = render_chart_dir(copy, PG)
    again = render_chart_dir(copy, PG)
    assert schema_job(again) == schema_job(before), "the schema Job must render the same twice"
    last = sorted((copy / "files" / "postgresql" / "migrations").glob("*.sql"))[-1]
    last.write_text(last.read_text() + "\n-- a changed migration\n")
    after = render_chart_dir(copy, PG)
    assert schema_job(after)["metadata"]["name"] != schema_job(before)["metadata"]["name"]
    assert (
        schema_configmap(after)["metadata"]["name"] != schema_configmap(before)["metadata"]["name"]
    )


def test_a_new_migration_is_shipped_and_expected_by_helm_test(tmp_path: Path) -> None:
    copy = copy_chart(tmp_path)
    migrations = copy / "files" / "postgresql" / "migrations"
    latest = int(sorted(migrations.glob("*.sql"))[-1].name[:4])
    (migrations / f"{latest + 1:04d}_later_change.sql").write_text("SELECT 1;\n")
    objects = render_chart_dir(copy, PG)
    assert f"{latest + 1:04d}_later_change.sql" in schema_configmap(objects)["data"]
    test_pod = chart.find(objects, "Pod", "nvsentinel-datastore-test")
    env = env_map(test_pod["spec"]["containers"][0])
    assert env["EXPECTED_SCHEMA_VERSION"]["value"] == str(latest + 1)


def test_schema_job_name_changes_when_its_pod_changes_so_upgrades_never_patch_a_job() -> None:
    base = schema_job(chart.render(["values-postgresql.yaml"]))["metadata"]["name"]
    changed = schema_job(
        chart.render(["values-postgresql.yaml"], ["images.postgresql.tag=17.7-bookworm"])
    )["metadata"]["name"]
    assert base != changed
    assert len(base) <= 63


def test_schema_job_is_skipped_for_mongodb_and_when_disabled() -> None:
    mongodb_jobs = chart.of_kind(rendered(BY_NAME["mongodb-defaults"]), "Job")
    assert not [j for j in mongodb_jobs if "schema" in j["metadata"]["name"]]
    objects = chart.render(["values-postgresql.yaml"], ["schema.job.enabled=false"])
    assert not [j for j in chart.of_kind(objects, "Job") if "schema" in j["metadata"]["name"]]
    certs = {c["spec"]["secretName"] for c in chart.of_kind(objects, "Certificate")}
    assert "postgresql-migration-cert" not in certs


def test_initdb_configmap_is_bootstrap_sql_under_the_name_the_subchart_mounts() -> None:
    objects = rendered(PRODUCTION)
    initdb = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-initdb")
    assert set(initdb["data"]) == {"bootstrap.sql"}
    # bootstrap.sql itself, after the psql variables only this chart knows, each set
    # only when the caller did not pass it
    text, bootstrap = initdb["data"]["bootstrap.sql"], (FILES / "bootstrap.sql").read_text()
    assert text.endswith(bootstrap)
    header = text[: -len(bootstrap)].splitlines()
    assert [line.split()[1] for line in header if line.startswith("\\set ")] == [
        "service_users",
        "service_statement_timeout",
        "service_idle_in_transaction_timeout",
    ]
    assert sum(line.startswith("\\if :{?") for line in header) == 3
    statefulset = chart.find(objects, "StatefulSet", "nvsentinel-postgresql")
    mounted = {
        v["configMap"]["name"]
        for v in statefulset["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    assert "nvsentinel-postgresql-initdb" in mounted


def test_helm_test_pod_checks_the_latest_shipped_schema_version() -> None:
    test_pod = chart.find(rendered(PRODUCTION), "Pod", "nvsentinel-datastore-test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_map(test_pod["spec"]["containers"][0])
    assert env["EXPECTED_SCHEMA_VERSION"]["value"] == str(int(MIGRATIONS[-1].name[:4]))
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert "nvsentinel_store_migrations" in script and "nvsentinel_schema_migrations" in script
    assert "pg_trigger" in script


def test_pg_hba_has_no_plaintext_remote_rule() -> None:
    for scenario in (PRODUCTION, BY_NAME["postgresql-tilt"]):
        objects = rendered(scenario)
        hba = next(
            value
            for cm in chart.of_kind(objects, "ConfigMap")
            for key, value in (cm.get("data") or {}).items()
            if key.startswith("pg_hba")
        )
        rules = [
            line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")
        ]
        assert rules, hba
        remote = [r for r in rules if r[0] != "local"]
        assert remote and all(r[0] == "hostssl" for r in remote), hba
        assert all(r[-1] != "trust" for r in remote), hba
