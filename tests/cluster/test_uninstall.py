"""`helm uninstall` leaves nothing of the release but its PersistentVolumeClaims.

What stays, exactly: the claims the StatefulSet controller made from the
store's volumeClaimTemplates (Kubernetes keeps them when a StatefulSet is
deleted), and claims the chart marks `helm.sh/resource-policy: keep` (the
PostgreSQL backup volume). Everything else the release created, and everything
the controllers made from it (pods, ReplicaSets, ControllerRevisions,
EndpointSlices), is gone. cert-manager's Secrets are not observed here (no
cert-manager controller runs on the local control plane): on a real cluster
cert-manager leaves them unless it runs with --enable-certificate-owner-ref.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes import client

from tests.cluster.conftest import Release, objects_in_namespace, wait_until

pytestmark = pytest.mark.cluster

#: Objects every namespace has, whoever installs into it.
NAMESPACE_DEFAULTS = {"ConfigMap/kube-root-ca.crt", "ServiceAccount/default"}


def _claims(release: Release) -> set[str]:
    items = release.core.list_namespaced_persistent_volume_claim(release.namespace).items
    return {f"PersistentVolumeClaim/{pvc.metadata.name}" for pvc in items}


def _expected_claims(release: Release) -> set[str]:
    """Claims of pod 0 of each StatefulSet, plus the chart's claims marked keep."""
    expected = set()
    for sts in release.apps.list_namespaced_stateful_set(release.namespace).items:
        for template in sts.spec.volume_claim_templates or []:
            expected.add(f"PersistentVolumeClaim/{template.metadata.name}-{sts.metadata.name}-0")
    for pvc in release.core.list_namespaced_persistent_volume_claim(release.namespace).items:
        if (pvc.metadata.annotations or {}).get("helm.sh/resource-policy") == "keep":
            expected.add(f"PersistentVolumeClaim/{pvc.metadata.name}")
    return expected


def _remaining(api: client.ApiClient, namespace: str) -> set[str]:
    return {
        obj
        for obj in objects_in_namespace(api, namespace) - NAMESPACE_DEFAULTS
        if not obj.startswith("Event/")
    }


@pytest.mark.parametrize(
    "values_file", [None, "values-postgresql.yaml", "values-tilt-postgresql.yaml"]
)
def test_uninstall_leaves_only_persistent_volume_claims(
    release_factory: Callable[[str], Release], values_file: str | None
) -> None:
    release = release_factory(f"uninstall-{values_file or 'default'}")
    release.install([values_file] if values_file else [])
    expected = _expected_claims(release)
    assert expected, "the release has no persistent volume claims to keep"
    wait_until(
        lambda: expected <= _claims(release),
        f"the StatefulSet controller to create {sorted(expected)}",
    )

    output = release.uninstall()
    assert "uninstalled" in output, output

    def only_claims_left() -> bool:
        return _remaining(release.api, release.namespace) == expected

    try:
        wait_until(only_claims_left, "the garbage collector", timeout=60)
    except AssertionError:
        left = sorted(_remaining(release.api, release.namespace))
        raise AssertionError(f"after uninstall expected {sorted(expected)}, found {left}") from None
