"""Every values file and both providers render, with Helm 4 and Helm 3, and lint clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.chart.scenarios import BY_NAME, REPO, SCENARIOS, VALUES_FILES, Scenario, rendered
from tests.fixtures import chart

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_renders_the_datastore_config_and_all_six_services(scenario: Scenario) -> None:
    objects = rendered(scenario)
    config = chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")
    assert config["data"]["DATASTORE_PROVIDER"] == scenario.provider
    deployments = {d["metadata"]["name"] for d in chart.of_kind(objects, "Deployment")}
    assert set(chart.SERVICES) <= deployments


def test_every_values_file_at_the_repository_root_is_a_scenario() -> None:
    on_disk = {p.name for p in REPO.glob("values*.yaml")}
    covered = {f for s in SCENARIOS for f in s.values_files}
    assert on_disk == set(VALUES_FILES) == covered


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_helm3_renders_the_same_objects_as_helm4(scenario: Scenario) -> None:
    def inventory(objects: tuple[dict[str, object], ...]) -> list[tuple[object, object]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)  # type: ignore[index]

    assert inventory(rendered(scenario, chart.HELM3)) == inventory(rendered(scenario))


HELMS = [
    pytest.param(chart.HELM, id="helm4"),
    pytest.param(chart.HELM3, id="helm3"),
]


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("values_file", [None, *VALUES_FILES])
def test_helm_lint_strict_is_clean(values_file: str | None, helm: Path) -> None:
    cmd = [str(helm), "lint", "--strict", str(chart.CHART), "--namespace", "nvsentinel"]
    if values_file:
        cmd += ["--values", str(REPO / values_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_production_postgresql_values_keep_data_back_it_up_and_export_metrics() -> None:
    objects = rendered(BY_NAME["postgresql-production"])
    statefulset = chart.find(objects, "StatefulSet", "nvsentinel-postgresql")
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    containers = [c["name"] for c in statefulset["spec"]["template"]["spec"]["containers"]]
    assert "metrics" in containers
    chart.find(objects, "CronJob", "nvsentinel-postgresql-backup")
    config = chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")["data"]
    assert config["DATASTORE_SSLMODE"] == "verify-full"
    assert "DATASTORE_SSLCERT" in config  # client-certificate auth
    hba = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-config")["data"]["pg_hba.conf"]
    assert "scram-sha-256" not in hba, "production has no password rule"


@pytest.mark.parametrize("name", ["postgresql-tilt", "mongodb-tilt"])
def test_tilt_values_run_one_small_store_on_the_control_plane_node(name: str) -> None:
    scenario = BY_NAME[name]
    objects = rendered(scenario)
    statefulset = chart.find(objects, "StatefulSet", f"nvsentinel-{scenario.provider}")
    assert statefulset["spec"]["replicas"] == 1
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert {
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    main = pod["containers"][0]
    assert main["resources"]["requests"]["cpu"] == "50m"
    if scenario.provider == "postgresql":
        # the schema is applied automatically, by the same Job as production
        jobs = [j["metadata"]["name"] for j in chart.of_kind(objects, "Job")]
        assert any(j.startswith("nvsentinel-schema-") for j in jobs)
        hba = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-config")["data"]
        assert "scram-sha-256" in hba["pg_hba.conf"], "the development password rule is on"
