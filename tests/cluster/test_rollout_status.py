"""`wait_for_rollout` (what the e2e tier waits with) judges rollouts as `kubectl rollout status`.

The controllers run here but no pod ever starts, so a workload that needs a
running pod never finishes: the wait must time out naming where it stuck, and a
workload that needs none must be reported done. Each test first lets the
controller observe the object, then gives the wait one second.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.cluster.conftest import wait_until
from tests.fixtures.rollout import RolloutTimeout, read_state, wait_for_rollout

pytestmark = pytest.mark.cluster

_POD: dict[str, Any] = {
    "metadata": {"labels": {"app": "probe"}},
    "spec": {
        "containers": [{"name": "probe", "image": "busybox:1.37"}],
        "restartPolicy": "Never",
    },
}


@pytest.fixture
def api(kube_api: client.ApiClient) -> client.ApiClient:
    return kube_api


def _observed(api: client.ApiClient, kind: str, namespace: str, progress: str) -> None:
    """Wait until the controller has acted on `probe` (its state mentions ``progress``)."""
    wait_until(
        lambda: progress in read_state(api, kind, "probe", namespace).message,
        f"the {kind} controller to act on probe",
        timeout=30,
    )


def _deployment(namespace: str, replicas: int) -> Any:  # a manifest; the client takes plain dicts
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {**_POD, "spec": {**_POD["spec"], "restartPolicy": "Always"}},
        },
    }


def test_deployment_without_replicas_is_rolled_out(api: client.ApiClient, namespace: str) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(namespace, 0))
    state = wait_for_rollout(api, "Deployment", "probe", namespace, timeout=30, interval=0.5)
    assert state.done
    assert state.message == "deployment probe successfully rolled out"


def test_deployment_waits_for_available_replicas(api: client.ApiClient, namespace: str) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(namespace, 1))
    _observed(api, "Deployment", namespace, "updated replicas are available")
    with pytest.raises(RolloutTimeout, match="0 of 1 updated replicas are available"):
        wait_for_rollout(api, "Deployment", "probe", namespace, timeout=1, interval=0.5)


def test_statefulset_waits_for_ready_pods(api: client.ApiClient, namespace: str) -> None:
    statefulset: Any = {  # a manifest; the client takes plain dicts
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "serviceName": "probe",
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {**_POD, "spec": {**_POD["spec"], "restartPolicy": "Always"}},
        },
    }
    client.AppsV1Api(api).create_namespaced_stateful_set(namespace, statefulset)
    _observed(api, "StatefulSet", namespace, "pods are ready")
    with pytest.raises(RolloutTimeout, match="0 of 1 pods are ready"):
        wait_for_rollout(api, "StatefulSet", "probe", namespace, timeout=1, interval=0.5)


def test_job_waits_for_completion(api: client.ApiClient, namespace: str) -> None:
    job: Any = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": _POD},
    }
    client.BatchV1Api(api).create_namespaced_job(namespace, job)
    _observed(api, "Job", namespace, "1 active")
    with pytest.raises(RolloutTimeout, match="job probe: 1 active, 0 succeeded"):
        wait_for_rollout(api, "Job", "probe", namespace, timeout=1, interval=0.5)


def test_missing_workload_is_reported_as_not_created(api: client.ApiClient, namespace: str) -> None:
    with pytest.raises(RolloutTimeout, match="does not exist yet"):
        wait_for_rollout(api, "StatefulSet", "absent", namespace, timeout=1, interval=0.5)
