"""values.schema.json is generated from values.yaml, current, and cannot drift: a hand
edit of the schema or an annotation changed in values.yaml fails the check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import REPO
from tests.fixtures import chart

pytestmark = pytest.mark.chart

GENERATOR = REPO / "hack" / "gen-values-schema.py"
SCHEMA = chart.CHART / "values.schema.json"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, check=False
    )


def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "nvsentinel"
    shutil.copytree(chart.CHART, copy)
    return copy


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


def test_values_schema_is_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_check_reports_a_hand_edited_schema_with_a_diff(tmp_path: Path) -> None:
    copy = chart_copy(tmp_path)
    target = copy / "values.schema.json"
    edited = json.loads(target.read_text())
    port = edited["properties"]["global"]["properties"]["datastore"]["properties"]["connection"]
    port["properties"]["port"]["maximum"] = 70000
    target.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    stale = run_generator("--check", "--chart", str(copy))
    assert stale.returncode == 1
    assert '-                  "maximum": 70000,' in stale.stdout
    assert '+                  "maximum": 65535,' in stale.stdout
    assert "is stale" in stale.stderr
    assert run_generator("--chart", str(copy)).returncode == 0
    assert target.read_text() == SCHEMA.read_text()
    assert run_generator("--check", "--chart", str(copy)).returncode == 0


def test_an_annotation_changed_in_values_yaml_makes_the_schema_stale(tmp_path: Path) -> None:
    copy = chart_copy(tmp_path)
    values = copy / "values.yaml"
    text = values.read_text()
    assert text.count("# +schema:maximum=3600\n") == 1
    values.write_text(text.replace("# +schema:maximum=3600\n", "# +schema:maximum=600\n"))
    stale = run_generator("--check", "--chart", str(copy))
    assert stale.returncode == 1
    assert '+              "maximum": 600,' in stale.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            ("# +schema:ref=resources\n", "# +schema:ref=resourcez\n"),
            "+schema:ref=resourcez but no key has +schema:def=resourcez",
            id="ref-without-def",
        ),
        pytest.param(
            ("# +schema:maximum=3600\n", "# +schema:maximun=3600\n"),
            "unknown annotation +schema:maximun",
            id="misspelled-annotation",
        ),
        pytest.param(
            ("      port: null\n", "      port: null\n      spare: null\n"),
            "global.datastore.connection.spare: no type",
            id="null-default-without-type",
        ),
    ],
)
def test_generator_refuses_annotations_it_cannot_use(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    copy = chart_copy(tmp_path)
    values = copy / "values.yaml"
    old, new = change
    values.write_text(values.read_text().replace(old, new, 1))
    result = run_generator("--check", "--chart", str(copy))
    assert result.returncode == 1
    assert message in result.stderr


def test_generated_schema_is_deterministic_json() -> None:
    text = SCHEMA.read_text()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_the_service_block_is_one_def_that_every_service_and_the_defaults_use() -> None:
    properties = schema()["properties"]
    block = schema()["$defs"]["service"]
    assert block["additionalProperties"] is False
    assert properties["serviceDefaults"]["$ref"] == "#/$defs/service"
    services = properties["services"]["properties"]
    assert set(services) == set(chart.SERVICES)
    for name, service in services.items():
        assert service["$ref"] == "#/$defs/service", name
        assert set(service) <= {"$ref", "required", "properties"}, name
