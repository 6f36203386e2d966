"""`helm install` with each PostgreSQL values file, read back through the API.

values-postgresql.yaml (production) and values-tilt-postgresql.yaml
(development) are installed once each, into their own namespaces, and every
assertion of this module reads the objects the API server stored for them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.chart_objects import (
    CLIENT_LABEL,
    assert_certificates,
    assert_schema_delivery,
    assert_services_wired,
    assert_store_installed,
    datastore_config,
    store_leftovers,
)
from tests.cluster.conftest import Release

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", params=["values-postgresql.yaml", "values-tilt-postgresql.yaml"])
def installed(request: pytest.FixtureRequest, release_factory: Callable[[str], Release]) -> Release:
    values_file: str = request.param
    release = release_factory(values_file.removesuffix(".yaml"))
    release.install([values_file])
    return release


def test_release_is_deployed(installed: Release) -> None:
    status = installed.run("status", installed.name, "--output", "json")
    assert '"status":"deployed"' in status.replace(" ", ""), status


def test_postgresql_statefulset_and_services_exist_as_promised(installed: Release) -> None:
    assert_store_installed(installed, "postgresql")


def test_certificate_chain_covers_dialled_names_and_client_users(installed: Release) -> None:
    assert_certificates(installed, "postgresql")


def test_schema_job_mounts_every_migration(installed: Release) -> None:
    assert_schema_delivery(installed)


def test_changelog_prune_cronjob_is_stored_with_its_schedule_and_datastore_wiring(
    installed: Release,
) -> None:
    cronjob = installed.batch.read_namespaced_cron_job(
        f"{installed.name}-changelog-prune", installed.namespace
    )
    assert cronjob.spec.schedule == "17 * * * *"
    assert cronjob.spec.concurrency_policy == "Forbid"
    pod = cronjob.spec.job_template.spec.template
    assert pod.metadata.labels.get(CLIENT_LABEL) == "true"
    assert [c.name for c in pod.spec.init_containers or []] == ["fix-cert-permissions"]
    secrets = {v.secret.secret_name for v in pod.spec.volumes or [] if v.secret is not None}
    assert secrets == {f"{installed.name}-postgresql-pruner-cert"}, secrets
    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    assert env["MAX_AGE"] == "7 days"
    assert env["DATASTORE_USERNAME"] == "nvsentinel_pruner"


def test_every_service_is_wired_to_postgresql(installed: Release) -> None:
    assert_services_wired(installed, "postgresql")
    assert datastore_config(installed)["DATASTORE_SSLMODE"] == "verify-full"


def test_no_mongodb_object_is_installed(installed: Release) -> None:
    assert store_leftovers(installed, "mongodb") == []
