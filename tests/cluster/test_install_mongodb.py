"""`helm install` with the chart's defaults (MongoDB), read back through the API."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.chart_objects import (
    assert_certificates,
    assert_services_wired,
    assert_store_installed,
    store_leftovers,
)
from tests.cluster.conftest import Release

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def installed(release_factory: Callable[[str], Release]) -> Release:
    release = release_factory("default-mongodb")
    release.install()
    return release


def test_mongodb_statefulset_and_services_exist_as_promised(installed: Release) -> None:
    assert_store_installed(installed, "mongodb")


def test_certificate_chain_covers_dialled_names(installed: Release) -> None:
    assert_certificates(installed, "mongodb")


def test_every_service_is_wired_to_mongodb(installed: Release) -> None:
    assert_services_wired(installed, "mongodb")


def test_no_postgresql_object_is_installed(installed: Release) -> None:
    assert store_leftovers(installed, "postgresql") == []
