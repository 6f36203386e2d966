"""The MongoDB init Job creates the collections, indexes and TTL that NVSentinel's
mongodb-store creates (its _init-eval.tpl), with `collectionExpirySeconds`, and
keeps them on every re-run: the rendered init-collections.js runs under node
against FakeMongoServer (MongoDB's answers, TTL and collMod included)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.subcharts import render_error, render_subchart
from tests.fixtures import chart
from tests.fixtures.mongosh import (
    NVSENTINEL_INDEXES,
    TTL,
    FakeMongoServer,
    ensure_collections,
    init_job_collections,
    lay_out_scripts,
)

pytestmark = pytest.mark.chart

THIRTY_DAYS = 2592000


def render(*set_values: str) -> list[dict[str, Any]]:
    return render_subchart("mongodb", set_values, release="nvsentinel", namespace="nvsentinel")


def server_indexes(server: FakeMongoServer, database: str) -> dict[str, dict[str, Any]]:
    """Each collection's indexes on the server by name, without `_id_`."""
    return {
        collection: {i["name"]: i for i in indexes if i["name"] != "_id_"}
        for collection, indexes in server.databases[database].items()
    }


def run_init(
    objects: list[dict[str, Any]], server: FakeMongoServer, tmp_path: Path, spec: Any = None
) -> Any:
    scripts = lay_out_scripts(objects, tmp_path / "scripts", "nvsentinel")
    run = ensure_collections(scripts, spec or init_job_collections(objects), server)
    assert run.returncode == 0, run.output
    return run


def test_init_job_names_nvsentinels_collections_indexes_and_ttl() -> None:
    spec = init_job_collections(render())
    assert spec["database"] == "nvsentinel"
    found: dict[str, dict[str, tuple[list[tuple[str, int]], set[str]]]] = {}
    for collection in spec["collections"]:
        found[collection["name"]] = {}
        for index in collection["indexes"]:
            key = [(field, direction) for field, direction in index["key"]]
            name = index.get("name") or "_".join(f"{f}_{d}" for f, d in key)
            found[collection["name"]][name] = (key, {o for o in index if o not in ("key", "name")})
            if TTL in index:
                assert index[TTL] == THIRTY_DAYS, name
    assert found == NVSENTINEL_INDEXES


def test_collection_expiry_from_values_sets_both_ttl_indexes_and_reruns_the_job() -> None:
    default, week = render(), render("collectionExpirySeconds=604800", "auth.database=events")
    spec = init_job_collections(week)
    assert spec["database"] == "events"
    ttls = {c["name"]: [i[TTL] for i in c["indexes"] if TTL in i] for c in spec["collections"]}
    assert ttls == {"HealthEvents": [604800], "MaintenanceEvents": [604800], "ResumeTokens": []}
    [job] = chart.of_kind(render("collectionExpirySeconds=604800"), "Job")
    [base] = chart.of_kind(default, "Job")
    assert job["metadata"]["name"] != base["metadata"]["name"]


def test_umbrella_passes_mongodb_collection_expiry_to_the_init_job() -> None:
    objects = chart.render(set_values=["mongodb.collectionExpirySeconds=86400"])
    spec = init_job_collections(objects)
    health = next(c for c in spec["collections"] if c["name"] == "HealthEvents")
    assert health["indexes"][0] == {"key": [["createdAt", 1]], TTL: 86400}


@pytest.mark.parametrize("value", ["-1", "2147483648", "thirty-days"])
def test_schema_refuses_an_expiry_outside_mongodbs_range_and_names_the_key(value: str) -> None:
    message = render_error("mongodb", [f"collectionExpirySeconds={value}"])
    assert "/collectionExpirySeconds" in message


def test_rendered_scripts_are_valid_javascript(tmp_path: Path) -> None:
    scripts = lay_out_scripts(render(), tmp_path, "nvsentinel")
    javascript = sorted(scripts.glob("*.js"))
    assert {p.name for p in javascript} >= {
        "connect.js",
        "init-collections.js",
        "init-replicaset.js",
    }
    for path in javascript:
        result = subprocess.run(
            ["node", "--check", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_init_creates_every_collection_and_index_then_a_rerun_changes_nothing(
    tmp_path: Path,
) -> None:
    objects, server = render(), FakeMongoServer()
    run_init(objects, server, tmp_path)
    indexes = server_indexes(server, "nvsentinel")
    assert set(indexes) == set(NVSENTINEL_INDEXES)
    for collection, expected in NVSENTINEL_INDEXES.items():
        assert set(indexes[collection]) == set(expected), collection
        for name, (key, options) in expected.items():
            index = indexes[collection][name]
            assert list(index["key"].items()) == key, name
            assert index.get(TTL) == (THIRTY_DAYS if TTL in options else None), name
    before = copy.deepcopy(server.databases)
    again = run_init(objects, server, tmp_path)
    assert server.databases == before
    assert set(again.names()) == {"listCollections", "listIndexes"}, again.names()


def test_a_changed_expiry_updates_the_ttl_indexes_in_place_with_collmod(tmp_path: Path) -> None:
    server = FakeMongoServer()
    run_init(render(), server, tmp_path)
    changed = run_init(render("collectionExpirySeconds=3600"), server, tmp_path / "changed")
    writes = [
        (db, c)
        for db, c in changed.commands
        if next(iter(c)) not in ("listCollections", "listIndexes")
    ]
    assert writes == [
        ("nvsentinel", {"collMod": "HealthEvents", "index": {"name": "createdAt_1", TTL: 3600}}),
        (
            "nvsentinel",
            {"collMod": "MaintenanceEvents", "index": {"name": "actualEndTime_1", TTL: 3600}},
        ),
    ]
    indexes = server_indexes(server, "nvsentinel")
    assert indexes["HealthEvents"]["createdAt_1"][TTL] == 3600
    assert indexes["MaintenanceEvents"]["actualEndTime_1"][TTL] == 3600
    assert (
        "changed expireAfterSeconds of HealthEvents.createdAt_1 from 2592000 to 3600"
        in changed.output
    )


def test_init_adopts_existing_collections_and_a_ttl_index_created_without_expiry(
    tmp_path: Path,
) -> None:
    """A database NVSentinel's services wrote first (collections created by their
    first insert) or an index made by hand under another name: kept, not duplicated."""
    server = FakeMongoServer()
    server(  # a plain index on createdAt, under another name
        "nvsentinel",
        {
            "createIndexes": "HealthEvents",
            "indexes": [{"key": {"createdAt": 1}, "name": "by_time"}],
        },
    )
    server("nvsentinel", {"create": "ResumeTokens"})
    run = run_init(render(), server, tmp_path)
    health = server_indexes(server, "nvsentinel")["HealthEvents"]
    assert "createdAt_1" not in health
    assert health["by_time"][TTL] == THIRTY_DAYS
    assert ("nvsentinel", {"create": "ResumeTokens"}) not in run.commands
    assert "collection ResumeTokens exists" in run.output


def test_an_index_name_taken_by_another_key_fails_naming_the_index_and_the_fix(
    tmp_path: Path,
) -> None:
    server = FakeMongoServer()
    server(
        "nvsentinel",
        {
            "createIndexes": "HealthEvents",
            "indexes": [{"key": {"createdAt": -1}, "name": "idx_health_events_analyzer_lookup"}],
        },
    )
    objects = render()
    scripts = lay_out_scripts(objects, tmp_path, "nvsentinel")
    run = ensure_collections(scripts, init_job_collections(objects), server)
    assert run.returncode != 0
    assert "index HealthEvents.idx_health_events_analyzer_lookup has key" in run.output
    assert "dropIndex('idx_health_events_analyzer_lookup')" in run.output
