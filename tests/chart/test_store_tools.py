"""The store tools Deployment: `nvsentinel-store` in a pod wired like a service.

Its datastore wiring is checked with every other client in test_datastore_wiring
(the scenarios that set storeTools.enabled); here, what is its own: off by
default, the health readiness probe on PostgreSQL only, and the migrations it
compares the database with coming from this release's schema ConfigMap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import (
    BY_NAME,
    STORE_TOOLS,
    env_map,
    pod_spec,
    render_chart_dir,
    rendered,
)
from tests.chart.test_schema_delivery import PG, copy_chart
from tests.fixtures import chart

pytestmark = pytest.mark.chart

NAME = "nvsentinel-store-tools"


def tools_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    assert container["name"] == "store-tools"
    return container


@pytest.mark.parametrize(
    "values", [[], ["values-postgresql.yaml"], ["values-tilt-postgresql.yaml"]]
)
def test_store_tools_are_off_unless_asked_for(values: list[str]) -> None:
    objects = chart.render(values)
    assert all(obj["metadata"]["name"] != NAME for obj in objects)


def test_on_postgresql_the_pod_is_ready_only_while_health_passes() -> None:
    objects = chart.render(["values-postgresql.yaml"], [STORE_TOOLS])
    container = tools_container(chart.find(objects, "Deployment", NAME))
    probe = container["readinessProbe"]
    assert probe["exec"]["command"] == ["nvsentinel-store", "health"]
    assert probe["failureThreshold"] == 1
    assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_health_compares_the_database_with_this_releases_migrations() -> None:
    objects = chart.render(["values-postgresql.yaml"], [STORE_TOOLS])
    deployment = chart.find(objects, "Deployment", NAME)
    (schema_cm,) = [
        cm
        for cm in chart.of_kind(objects, "ConfigMap")
        if cm["metadata"]["name"].startswith("nvsentinel-schema-")
    ]
    migrations = sorted(key for key in schema_cm["data"] if key.endswith(".sql"))
    assert migrations, "the schema ConfigMap ships no migration"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    source = volumes["migrations"]["configMap"]
    assert source["name"] == schema_cm["metadata"]["name"]
    # only the SQL: the applier script is not a migration
    assert [item["key"] for item in source["items"]] == migrations
    container = tools_container(deployment)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    directory = env_map(container)["NVSENTINEL_MIGRATIONS_DIR"]["value"]
    assert mounts["migrations"]["mountPath"] == directory
    assert mounts["migrations"]["readOnly"] is True


def test_a_new_migration_rolls_the_tools_pod_onto_the_new_schema_configmap(
    tmp_path: Path,
) -> None:
    copy = copy_chart(tmp_path)
    before = chart.find(render_chart_dir(copy, (*PG, STORE_TOOLS)), "Deployment", NAME)
    migrations = copy / "files" / "postgresql" / "migrations"
    latest = int(sorted(migrations.glob("*.sql"))[-1].name[:4])
    added = f"{latest + 1:04d}_later_change.sql"
    (migrations / added).write_text("SELECT 1;\n")
    after = chart.find(render_chart_dir(copy, (*PG, STORE_TOOLS)), "Deployment", NAME)

    def source(deployment: dict[str, Any]) -> dict[str, Any]:
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        return volumes["migrations"]["configMap"]

    # a new pod template: the Deployment rolls, and its health expects the new migration
    assert source(after)["name"] != source(before)["name"]
    assert added in [item["key"] for item in source(after)["items"]]


def test_without_the_schema_job_the_images_own_migrations_count() -> None:
    objects = chart.render(["values-postgresql.yaml"], [STORE_TOOLS, "schema.job.enabled=false"])
    deployment = chart.find(objects, "Deployment", NAME)
    assert "migrations" not in {v["name"] for v in pod_spec(deployment)["volumes"]}
    assert "NVSENTINEL_MIGRATIONS_DIR" not in env_map(tools_container(deployment))


def test_on_mongodb_there_is_no_health_probe_and_no_schema() -> None:
    objects = rendered(BY_NAME["mongodb-tilt"])
    deployment = chart.find(objects, "Deployment", NAME)
    container = tools_container(deployment)
    assert "readinessProbe" not in container
    assert "NVSENTINEL_MIGRATIONS_DIR" not in env_map(container)
    assert env_map(container)["MONGODB_CLIENT_CERT_MOUNT_PATH"]["value"]


def test_the_container_waits_for_exec_and_stops_on_sigterm() -> None:
    container = tools_container(
        chart.find(chart.render(["values-postgresql.yaml"], [STORE_TOOLS]), "Deployment", NAME)
    )
    command = " ".join(container["command"])
    assert "trap 'exit 0' TERM" in command
    assert "sleep infinity" in command
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_image_follows_the_registry_mirror_and_the_chart_version() -> None:
    objects = chart.render([], [STORE_TOOLS, "global.imageRegistry=mirror.example:5000"])
    container = tools_container(chart.find(objects, "Deployment", NAME))
    assert container["image"] == "mirror.example:5000/nvidia/nvsentinel/nvsentinel-store:0.1.0"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("storeTools.readinessProbe.periodSeconds=0", "periodSeconds"),
        ("storeTools.image.pullPolicy=Sometimes", "pullPolicy"),
        ("storeTools.replicas=2", "replicas"),
    ],
)
def test_bad_store_tools_values_are_refused_by_the_schema(assignment: str, message: str) -> None:
    with pytest.raises(chart.RenderError, match=message):
        chart.render([], [STORE_TOOLS, assignment])
