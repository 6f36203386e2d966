"""The postgres-exporter's custom queries: a ConfigMap only with metrics on, mounted
into the exporter and named by --extend.query-path, the exporter in the NVSentinel
database where the queries' functions live."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.subcharts import container, env, mount_of, pod_spec, render_subchart, volume
from tests.fixtures import chart

pytestmark = pytest.mark.chart

QUERIES = "x-postgresql-metrics-queries"


def render(*set_values: str) -> list[dict[str, Any]]:
    return render_subchart("postgresql", set_values)


def exporter(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(chart.find(objects, "StatefulSet", "x-postgresql"))
    return spec, container(spec, "metrics")


def test_queries_configmap_renders_only_with_metrics_enabled() -> None:
    plain = render()
    assert QUERIES not in {c["metadata"]["name"] for c in chart.of_kind(plain, "ConfigMap")}
    spec = pod_spec(chart.find(plain, "StatefulSet", "x-postgresql"))
    assert "metrics-queries" not in {v["name"] for v in spec["volumes"]}

    objects = render("metrics.enabled=true")
    queries = yaml.safe_load(chart.find(objects, "ConfigMap", QUERIES)["data"]["queries.yaml"])
    assert set(queries) == {
        "nvsentinel_changelog",
        "nvsentinel_consumer",
        "nvsentinel_oldest_transaction",
    }
    for name, entry in queries.items():
        assert entry["query"].strip().upper().startswith("SELECT"), name
        assert all(m[next(iter(m))]["usage"] in {"LABEL", "GAUGE"} for m in entry["metrics"]), name


def test_exporter_mounts_the_queries_and_reads_them_with_extend_query_path() -> None:
    objects = render("metrics.enabled=true")
    spec, metrics = exporter(objects)
    assert volume(spec, "metrics-queries")["configMap"]["name"] == QUERIES
    mount = mount_of(metrics, "metrics-queries")
    assert mount["readOnly"] is True
    flags = [a for a in metrics["args"] if a.startswith("--extend.query-path=")]
    assert flags == [f"--extend.query-path={mount['mountPath']}/queries.yaml"]
    # Only the exporter sees the queries.
    others = [c for c in spec["containers"] if c["name"] != "metrics"]
    assert all(
        "metrics-queries" not in {m["name"] for m in c.get("volumeMounts", [])} for c in others
    )


def test_exporter_connects_to_the_nvsentinel_database_where_the_functions_live() -> None:
    for database, sets in (("nvsentinel", ()), ("events", ("auth.database=events",))):
        _, metrics = exporter(render("metrics.enabled=true", *sets))
        dsn = dict(part.split("=", 1) for part in env(metrics)["DATA_SOURCE_NAME"].split())
        assert dsn["dbname"] == database
        assert dsn["sslmode"] == "disable" and dsn["host"].startswith("/")


def test_umbrella_production_overlay_ships_the_queries() -> None:
    objects = chart.render(["values-postgresql.yaml"])
    assert chart.find(objects, "ConfigMap", "nvsentinel-postgresql-metrics-queries")
