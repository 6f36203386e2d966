"""The chart configurations the chart tier renders, each rendered once per session.

A scenario is a values file list plus `--set` assignments. `rendered()` caches
by scenario, so the many invariant tests share a handful of helm runs.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import chart
from tests.fixtures.chart import SERVICES

REPO = chart.REPO
VALUES_FILES = (
    "values-postgresql.yaml",
    "values-tilt-postgresql.yaml",
    "values-tilt-mongodb.yaml",
)
MOUNT_PATH = "/etc/nvsentinel/datastore-tls"
CLIENT_LABEL = "nvsentinel.nvidia.com/datastore-client"
#: Turns on the store tools Deployment, one more datastore client.
STORE_TOOLS = "storeTools.enabled=true"

EXTERNAL_POSTGRESQL = (
    "global.datastore.provider=postgresql",
    "postgresql.enabled=false",
    "mongodb.enabled=false",
    "global.datastore.connection.host=pg.example.internal",
)


@dataclass(frozen=True)
class Scenario:
    """One way to install the chart."""

    name: str
    provider: str
    values_files: tuple[str, ...] = ()
    set_values: tuple[str, ...] = ()
    in_cluster: bool = True
    password_auth: bool = False
    notes: str = field(default="", compare=False)

    @property
    def store_tools(self) -> bool:
        """Whether this scenario renders the store tools Deployment."""
        return STORE_TOOLS in self.set_values


SCENARIOS = (
    Scenario("mongodb-defaults", "mongodb"),
    Scenario("postgresql-production", "postgresql", ("values-postgresql.yaml",)),
    Scenario("postgresql-tilt", "postgresql", ("values-tilt-postgresql.yaml",)),
    Scenario("mongodb-tilt", "mongodb", ("values-tilt-mongodb.yaml",), (STORE_TOOLS,)),
    Scenario(
        "postgresql-external-password",
        "postgresql",
        set_values=(
            *EXTERNAL_POSTGRESQL,
            "global.datastore.credentialsFromSecret.name=nvsentinel-db",
            "global.datastore.caFromSecret.name=nvsentinel-db-ca",
            "schema.credentialsFromSecret.name=nvsentinel-db-migrator",
            "changelogRetention.credentialsFromSecret.name=nvsentinel-db-pruner",
            "services.platform-connectors.credentialsFromSecret.name=nvsentinel-db-platform-connectors",
            STORE_TOOLS,
        ),
        in_cluster=False,
        password_auth=True,
    ),
    Scenario(
        "postgresql-external-certificate",
        "postgresql",
        set_values=(
            *EXTERNAL_POSTGRESQL,
            "certManager.issuerRef.name=corporate-pki",
            "certManager.issuerRef.kind=ClusterIssuer",
        ),
        in_cluster=False,
    ),
    Scenario(
        "postgresql-custom-host-and-domain",
        "postgresql",
        ("values-postgresql.yaml",),
        set_values=(
            "global.clusterDomain=k8s.example",
            "global.datastore.connection.host=nvsentinel-postgresql.nvsentinel.svc.k8s.example",
            "global.datastore.connection.port=5432",
            STORE_TOOLS,
        ),
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


@functools.cache
def rendered(scenario: Scenario, helm: Path = chart.HELM) -> tuple[dict[str, Any], ...]:
    """Every object the scenario renders (cached; do not mutate)."""
    return tuple(chart.render(scenario.values_files, scenario.set_values, helm=helm))


def render_chart_dir(chart_dir: Path, set_values: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Render a copy of the chart elsewhere on disk (for tests that modify it)."""
    cmd = [str(chart.HELM), "template", "nvsentinel", str(chart_dir), "--namespace", "nvsentinel"]
    for assignment in set_values:
        cmd += ["--set", assignment]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise chart.RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment, StatefulSet, Job or CronJob (a Pod is its own)."""
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, Job, CronJob or Pod."""
    return pod_template(obj)["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    """The labels the pods of a Deployment, Job, CronJob or Pod carry."""
    return pod_template(obj)["metadata"].get("labels", {})


def datastore_clients(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Every workload of the umbrella chart that talks to the store: the six services,
    the store tools, the schema Job, the changelog-prune CronJob and the helm test pod
    (the subcharts' own pods are excluded)."""

    def is_client(obj: dict[str, Any]) -> bool:
        kind, name = obj["kind"], obj["metadata"]["name"]
        return (
            (kind == "Deployment" and name in (*SERVICES, "nvsentinel-store-tools"))
            or (kind == "Job" and name.startswith("nvsentinel-schema-"))
            or (kind == "CronJob" and name == "nvsentinel-changelog-prune")
            or (kind == "Pod" and name == "nvsentinel-datastore-test")
        )

    return [obj for obj in objects if is_client(obj)]


def expected_client_identity(obj: dict[str, Any], provider: str) -> tuple[str, str | None]:
    """The client certificate Secret a datastore client mounts and the DATASTORE_USERNAME
    it overrides (None: the ConfigMap's shared username), with client certificates.

    On PostgreSQL each service has its own login role and certificate, the prune
    CronJob the pruner's, the schema Job the migration role's; the store tools and
    the helm test pod share ``postgresql-client-cert`` (connection.username). On
    MongoDB every client shares ``mongodb-client-cert``.
    """
    kind, name = obj["kind"], obj["metadata"]["name"]
    if provider != "postgresql":
        return f"{provider}-client-cert", None
    if kind == "Job":
        return "postgresql-migration-cert", "nvsentinel_migrator"
    if kind == "CronJob":
        return "nvsentinel-postgresql-pruner-cert", "nvsentinel_pruner"
    if kind == "Deployment" and name in SERVICES:
        return f"postgresql-client-cert-{name}", "nvsentinel_" + name.replace("-", "_")
    return "postgresql-client-cert", None


def env_map(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> the EnvVar entry."""
    return {e["name"]: e for e in container.get("env", [])}
