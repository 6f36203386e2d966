"""`helm upgrade` between the datastores: MongoDB, then PostgreSQL, then MongoDB again.

One release goes through the three revisions in order; the tests of each
revision run after it. The old store's objects must be gone (PersistentVolumeClaims
excepted: they keep the data), the new store's must be there, and every
service's ConfigMap, certificate Secret, mount and mount-path variable must
follow the switch. Going back to the defaults takes `--reset-values`: a
`helm upgrade` given no values reuses the previous revision's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.chart_objects import (
    assert_certificates,
    assert_schema_delivery,
    assert_services_wired,
    assert_store_absent,
    assert_store_installed,
)
from tests.cluster.conftest import Release
from tests.fixtures.chart import SERVICES

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def on_mongodb(release_factory: Callable[[str], Release]) -> Release:
    release = release_factory("switch")
    release.install()
    return release


@pytest.fixture(scope="module")
def switched_to_postgresql(on_mongodb: Release) -> Release:
    on_mongodb.upgrade(["values-postgresql.yaml"])
    return on_mongodb


@pytest.fixture(scope="module")
def switched_back_to_mongodb(switched_to_postgresql: Release) -> Release:
    # Without values, `helm upgrade` reuses the previous revision's values
    # (values-postgresql.yaml here); --reset-values returns to the chart's defaults.
    switched_to_postgresql.upgrade((), "--reset-values")
    return switched_to_postgresql


def _template_generations(release: Release) -> dict[str, str]:
    """Each service's pod-template datastore checksum annotation (changes roll the pods)."""
    found = {}
    for service in SERVICES:
        deployment = release.apps.read_namespaced_deployment(service, release.namespace)
        annotations = deployment.spec.template.metadata.annotations or {}
        found[service] = annotations.get("checksum/datastore-config", "")
    return found


@pytest.fixture(scope="module")
def checksums_on_mongodb(on_mongodb: Release) -> dict[str, str]:
    """The services' pod-template checksums of the first revision (taken before the switch)."""
    return _template_generations(on_mongodb)


def test_first_revision_runs_mongodb(
    on_mongodb: Release, checksums_on_mongodb: dict[str, str]
) -> None:
    assert_store_installed(on_mongodb, "mongodb")
    assert_services_wired(on_mongodb, "mongodb")
    assert all(checksums_on_mongodb.values()), checksums_on_mongodb


def test_upgrade_to_postgresql_replaces_the_store(switched_to_postgresql: Release) -> None:
    assert_store_absent(switched_to_postgresql, "mongodb")
    assert_store_installed(switched_to_postgresql, "postgresql")
    assert_certificates(switched_to_postgresql, "postgresql")
    assert_schema_delivery(switched_to_postgresql)


def test_upgrade_to_postgresql_rewires_and_rolls_every_service(
    checksums_on_mongodb: dict[str, str], switched_to_postgresql: Release
) -> None:
    assert_services_wired(switched_to_postgresql, "postgresql")
    after = _template_generations(switched_to_postgresql)
    unchanged = [s for s in SERVICES if checksums_on_mongodb[s] == after[s]]
    assert unchanged == [], f"pod templates the switch did not change: {unchanged}"


def test_upgrade_back_to_mongodb_removes_postgresql(switched_back_to_mongodb: Release) -> None:
    assert_store_absent(switched_back_to_mongodb, "postgresql")
    assert_store_installed(switched_back_to_mongodb, "mongodb")
    assert_certificates(switched_back_to_mongodb, "mongodb")
    assert_services_wired(switched_back_to_mongodb, "mongodb")
    jobs = switched_back_to_mongodb.batch.list_namespaced_job(switched_back_to_mongodb.namespace)
    assert [j.metadata.name for j in jobs.items if "schema" in j.metadata.name] == []
    history = switched_back_to_mongodb.run("history", switched_back_to_mongodb.name)
    assert len(history.strip().splitlines()) == 4, history  # header + three revisions
