"""The changelog-prune CronJob: PostgreSQL only, on by default, wired like every
datastore client, connecting as the application user, and refusing a bad
schedule or max age before anything is applied."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.scenarios import (
    BY_NAME,
    SCENARIOS,
    Scenario,
    datastore_clients,
    env_map,
    pod_labels,
    pod_spec,
    rendered,
)
from tests.fixtures import chart

pytestmark = pytest.mark.chart

NAME = "nvsentinel-changelog-prune"
PRODUCTION = BY_NAME["postgresql-production"]


def prune_cronjobs(objects: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[Any]:
    cronjobs = chart.of_kind(objects, "CronJob")
    return [c for c in cronjobs if "changelog-prune" in c["metadata"]["name"]]


def prune_container(cronjob: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(cronjob)["containers"]
    assert [c["name"] for c in containers] == ["changelog-prune"]
    return containers[0]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_prune_cronjob_is_rendered_for_postgresql_only(scenario: Scenario) -> None:
    names = [c["metadata"]["name"] for c in prune_cronjobs(rendered(scenario))]
    assert names == ([NAME] if scenario.provider == "postgresql" else [])


@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.provider == "postgresql"], ids=lambda s: s.name
)
def test_prune_cronjob_is_one_of_the_datastore_clients_the_wiring_tests_check(
    scenario: Scenario,
) -> None:
    # test_datastore_wiring.py checks every datastore client (label, ConfigMap,
    # fix-cert-permissions, mounts, password Secret); the CronJob must be among them.
    objects = rendered(scenario)
    clients = datastore_clients(objects)
    assert [c for c in clients if c["kind"] == "CronJob"] == prune_cronjobs(objects)


def test_prune_cronjob_defaults_hourly_seven_days_forbid_and_history_limits() -> None:
    (cronjob,) = prune_cronjobs(rendered(PRODUCTION))
    spec = cronjob["spec"]
    assert spec["schedule"] == "17 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3
    assert spec["failedJobsHistoryLimit"] == 3
    assert pod_spec(cronjob)["restartPolicy"] == "Never"
    assert env_map(prune_container(cronjob))["MAX_AGE"]["value"] == "7 days"
    assert env_map(prune_container(cronjob))["BATCH_SIZE"]["value"] == "5000"
    assert pod_labels(cronjob)["app.kubernetes.io/name"] == "changelog-prune"


def test_prune_cronjob_runs_psql_from_the_schema_jobs_image_as_the_pruner_role() -> None:
    objects = rendered(PRODUCTION)
    (cronjob,) = prune_cronjobs(objects)
    container = prune_container(cronjob)
    jobs = chart.of_kind(objects, "Job")
    schema_job = next(j for j in jobs if j["metadata"]["name"].startswith("nvsentinel-schema-"))
    assert container["image"] == pod_spec(schema_job)["containers"][0]["image"]
    assert "datastore_changelog_prune(:'max_age', :'batch_size')" in container["args"][0]
    env = env_map(container)
    # The pruner, not the application: EXECUTE on the function is granted to
    # nvsentinel_pruner only, the CN of the certificate only this CronJob mounts.
    assert env["DATASTORE_USERNAME"]["value"] == "nvsentinel_pruner"
    assert env["PGUSER"]["value"] == "$(DATASTORE_USERNAME)"
    assert env["PGSSLMODE"]["value"] == "$(DATASTORE_SSLMODE)"
    secrets = [v["secret"]["secretName"] for v in pod_spec(cronjob)["volumes"] if "secret" in v]
    assert secrets == ["nvsentinel-postgresql-pruner-cert"]
    cert = chart.find(objects, "Certificate", "nvsentinel-postgresql-pruner-cert")
    assert cert["spec"]["commonName"] == "nvsentinel_pruner"
    init = [c["name"] for c in pod_spec(cronjob)["initContainers"]]
    assert init == ["fix-cert-permissions"], "a short-lived pod needs no refresher"


def test_prune_cronjob_uses_the_pruner_password_with_an_external_server() -> None:
    (cronjob,) = prune_cronjobs(rendered(BY_NAME["postgresql-external-password"]))
    env = env_map(prune_container(cronjob))
    assert env["DATASTORE_USERNAME"]["value"] == "nvsentinel_pruner"
    assert env["DATASTORE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "nvsentinel-db-pruner",
        "key": "password",
    }
    assert env["PGPASSWORD"]["value"] == "$(DATASTORE_PASSWORD)"


def test_prune_cronjob_takes_its_schedule_max_age_and_resources_from_values() -> None:
    objects = chart.render(
        ["values-postgresql.yaml"],
        [
            "changelogRetention.schedule=@daily",
            "changelogRetention.maxAge=1 day 12 hours",
            "changelogRetention.successfulJobsHistoryLimit=1",
            "changelogRetention.failedJobsHistoryLimit=5",
            "changelogRetention.resources.limits.memory=96Mi",
            "changelogRetention.batchSize=500",
        ],
    )
    (cronjob,) = prune_cronjobs(objects)
    assert cronjob["spec"]["schedule"] == "@daily"
    assert cronjob["spec"]["successfulJobsHistoryLimit"] == 1
    assert cronjob["spec"]["failedJobsHistoryLimit"] == 5
    container = prune_container(cronjob)
    assert env_map(container)["MAX_AGE"]["value"] == "1 day 12 hours"
    assert env_map(container)["BATCH_SIZE"]["value"] == "500"
    assert container["resources"]["limits"]["memory"] == "96Mi"


def test_prune_cronjob_is_not_rendered_when_retention_is_disabled() -> None:
    objects = chart.render(["values-postgresql.yaml"], ["changelogRetention.enabled=false"])
    assert prune_cronjobs(objects) == []
    assert len([j for j in chart.of_kind(objects, "Job") if "schema" in j["metadata"]["name"]]) == 1


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("changelogRetention.maxAge=7d", "/changelogRetention/maxAge"),
        ("changelogRetention.maxAge=-1 days", "/changelogRetention/maxAge"),
        ("changelogRetention.maxAge=7 days; DROP TABLE x", "/changelogRetention/maxAge"),
        ("changelogRetention.schedule=every hour", "/changelogRetention/schedule"),
        ("changelogRetention.schedule=17 * * *", "/changelogRetention/schedule"),
    ],
)
def test_bad_max_age_or_schedule_is_refused_naming_the_key(assignment: str, key: str) -> None:
    with pytest.raises(chart.RenderError) as refused:
        chart.render(["values-postgresql.yaml"], [assignment])
    message = str(refused.value)
    assert key in message, message
    assert "does not match pattern" in message, message


@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_a_batch_size_below_one_or_not_a_number_is_refused_naming_the_key(size: str) -> None:
    with pytest.raises(chart.RenderError) as refused:
        chart.render(["values-postgresql.yaml"], [f"changelogRetention.batchSize={size}"])
    assert "/changelogRetention/batchSize" in str(refused.value), str(refused.value)
