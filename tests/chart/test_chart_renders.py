"""Every values file and both providers render, with Helm 4 and Helm 3, and lint clean."""

from __future__ import annotations

import subprocess

import pytest

from tests.chart.scenarios import REPO, SCENARIOS, VALUES_FILES, Scenario, rendered
from tests.fixtures import chart

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_renders_the_datastore_config_and_all_six_services(scenario: Scenario) -> None:
    objects = rendered(scenario)
    config = chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")
    assert config["data"]["DATASTORE_PROVIDER"] == scenario.provider
    deployments = {d["metadata"]["name"] for d in chart.of_kind(objects, "Deployment")}
    assert {
        "platform-connectors",
        "fault-quarantine",
        "node-drainer",
        "fault-remediation",
        "health-events-analyzer",
        "csp-health-monitor",
    } <= deployments


def test_every_values_file_at_the_repository_root_is_a_scenario() -> None:
    on_disk = {p.name for p in REPO.glob("values*.yaml")}
    covered = {f for s in SCENARIOS for f in s.values_files}
    assert on_disk == set(VALUES_FILES) == covered


@pytest.mark.skipif(not chart.HELM3.exists(), reason=".bin/helm3 is not built (make setup)")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_helm3_renders_the_same_objects_as_helm4(scenario: Scenario) -> None:
    def inventory(objects: tuple[dict[str, object], ...]) -> list[tuple[object, object]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)  # type: ignore[index]

    assert inventory(rendered(scenario, chart.HELM3)) == inventory(rendered(scenario))


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES])
def test_helm_lint_strict_is_clean(values_file: str | None) -> None:
    cmd = [str(chart.HELM), "lint", "--strict", str(chart.CHART), "--namespace", "nvsentinel"]
    if values_file:
        cmd += ["--values", str(REPO / values_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output
