"""`serviceDefaults` is every service's block, written once; `services.<name>` overrides
it for one service: a key the service sets wins, maps merge, lists replace."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.scenarios import pod_spec
from tests.fixtures import chart

pytestmark = pytest.mark.chart


def container(objects: list[dict[str, Any]], service: str) -> dict[str, Any]:
    return pod_spec(chart.find(objects, "Deployment", service))["containers"][0]


def test_every_service_gets_the_defaults() -> None:
    objects = chart.render()
    for service in chart.SERVICES:
        assert container(objects, service)["resources"] == {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }, service


def test_a_default_changed_once_changes_every_service() -> None:
    objects = chart.render(
        [], ["serviceDefaults.resources.limits.memory=1Gi", "serviceDefaults.image.tag=v9"]
    )
    for service in chart.SERVICES:
        assert container(objects, service)["resources"]["limits"] == {"memory": "1Gi"}, service
        assert container(objects, service)["image"].endswith(f"/{service}:v9"), service


def test_a_service_override_changes_that_service_only_and_merges_maps() -> None:
    objects = chart.render([], ["services.fault-quarantine.resources.limits.memory=1Gi"])
    assert container(objects, "fault-quarantine")["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert container(objects, "node-drainer")["resources"]["limits"] == {"memory": "256Mi"}


def test_a_service_override_of_zero_false_or_empty_wins_over_the_default() -> None:
    objects = chart.render(
        [],
        [
            "serviceDefaults.replicas=2",
            "serviceDefaults.image.tag=v9",
            "services.node-drainer.replicas=0",
            "services.node-drainer.image.tag=",
            "services.platform-connectors.automountServiceAccountToken=false",
        ],
    )
    drainer = chart.find(objects, "Deployment", "node-drainer")
    assert drainer["spec"]["replicas"] == 0
    assert not container(objects, "node-drainer")["image"].endswith(":v9")
    assert chart.find(objects, "Deployment", "fault-quarantine")["spec"]["replicas"] == 2
    connectors = chart.find(objects, "Deployment", "platform-connectors")
    assert pod_spec(connectors)["automountServiceAccountToken"] is False


def test_a_list_set_for_a_service_replaces_the_default_list() -> None:
    objects = chart.render(
        [],
        [
            "serviceDefaults.tolerations[0].key=everywhere",
            "serviceDefaults.tolerations[0].operator=Exists",
            "services.node-drainer.tolerations[0].key=drainer-only",
            "services.node-drainer.tolerations[0].operator=Exists",
        ],
    )
    drainer = pod_spec(chart.find(objects, "Deployment", "node-drainer"))
    assert drainer["tolerations"] == [{"key": "drainer-only", "operator": "Exists"}]
    quarantine = pod_spec(chart.find(objects, "Deployment", "fault-quarantine"))
    assert quarantine["tolerations"] == [{"key": "everywhere", "operator": "Exists"}]


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        pytest.param("serviceDefaults.enabled=false", "/serviceDefaults/enabled", id="enabled"),
        pytest.param(
            "serviceDefaults.datastoreUser=shared", "/serviceDefaults/datastoreUser", id="user"
        ),
        pytest.param(
            "serviceDefaults.image.repository=x", "/serviceDefaults/image/repository", id="repo"
        ),
        pytest.param("serviceDefaults.replicas=-1", "/serviceDefaults/replicas", id="negative"),
        pytest.param(
            "services.node-drainer.replicas=-1", "/services/node-drainer/replicas", id="svc"
        ),
        pytest.param("serviceDefaults.replica=2", "'replica' not allowed", id="misspelled"),
    ],
)
def test_the_schema_refuses_what_a_service_must_set_itself_and_bad_values(
    assignment: str, fragment: str
) -> None:
    with pytest.raises(chart.RenderError) as refused:
        chart.render([], [assignment])
    assert fragment in str(refused.value)
