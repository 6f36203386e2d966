"""values.yaml is the documentation: every key is described, the README's table is
generated from it and current, and every value is read by some template."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.scenarios import BY_NAME, REPO, Scenario
from tests.fixtures import chart

pytestmark = pytest.mark.chart

GENERATOR = REPO / "hack" / "gen-chart-readme.py"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, check=False
    )


def test_readme_values_table_is_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_check_reports_a_stale_readme_with_a_diff(tmp_path: Path) -> None:
    copy = tmp_path / "nvsentinel"
    shutil.copytree(chart.CHART, copy)
    values = copy / "values.yaml"
    values.write_text(
        values.read_text().replace(
            "# -- Database the services use.", "# -- Database NVSentinel's services use."
        )
    )
    stale = run_generator("--check", "--chart", str(copy))
    assert stale.returncode == 1
    key = "`global.datastore.connection.database`"
    assert f'+| {key} | string | `"nvsentinel"` | Database NVSentinel\'s' in stale.stdout
    assert "is stale" in stale.stderr
    assert run_generator("--chart", str(copy)).returncode == 0
    assert run_generator("--check", "--chart", str(copy)).returncode == 0


def test_generator_refuses_an_undocumented_key(tmp_path: Path) -> None:
    copy = tmp_path / "nvsentinel"
    shutil.copytree(chart.CHART, copy)
    values = copy / "values.yaml"
    values.write_text(values.read_text() + "\nundocumented:\n  knob: 1\n")
    result = run_generator("--check", "--chart", str(copy))
    assert result.returncode == 1
    assert "keys without a `# --` comment: undocumented.knob" in result.stderr


# -- every value is read -----------------------------------------------------------

DEFAULTS = yaml.safe_load((chart.CHART / "values.yaml").read_text())
#: Renders in which a value may matter: each provider, password auth, a custom issuer.
BASELINES = (
    BY_NAME["mongodb-defaults"],
    BY_NAME["postgresql-production"],
    BY_NAME["postgresql-external-password"],
    BY_NAME["postgresql-external-certificate"],
)
#: The subcharts generate passwords unless given a Secret; fix them so renders compare.
REPRODUCIBLE = ("postgresql.auth.existingSecret=pg-auth", "mongodb.auth.existingSecret=mongo-auth")
STRING_CHANGES = {
    "provider": "postgresql",
    "sslmode": "require",
    "pullPolicy": "Always",
    "kind": "OtherIssuer",
    "privateKeyAlgorithm": "RSA",
    "mountPath": "/etc/other-tls",
    "clusterDomain": "k8s.example",
    "username": "other_user",
    "migrationUsername": "other_migrator",
}


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [leaf for key, child in value.items() for leaf in leaves(child, (*path, key))]
    return [path]


def own_leaves() -> list[tuple[str, ...]]:
    """The umbrella chart's own keys (the subcharts read theirs), plus the two switches.

    The six services share one template loop and one set of keys: every key of the
    first service is checked, and of the others `enabled` and the image repository
    (which differ per service)."""
    first = next(iter(DEFAULTS["services"]))
    own = [p for p in leaves(DEFAULTS) if p[0] not in ("postgresql", "mongodb")]
    own = [
        p
        for p in own
        if p[0] != "services" or p[1] == first or p[2:] in (("enabled",), ("image", "repository"))
    ]
    return [*own, ("postgresql", "enabled"), ("mongodb", "enabled")]


def changed(path: tuple[str, ...], value: Any) -> Any:
    """A different value of the same shape."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return {256: 384}.get(value, value + 1)
    if value is None:
        return 7
    if isinstance(value, str):
        if path[-1] in STRING_CHANGES and STRING_CHANGES[path[-1]] != value:
            return STRING_CHANGES[path[-1]]
        return value + "9" if value else "zz"
    if isinstance(value, list):
        if value:
            return [*value, "ZZ"]
        return {
            "args": ["--zz"],
            "env": [{"name": "ZZ", "value": "1"}],
            "imagePullSecrets": [{"name": "zz"}],
            "tolerations": [{"key": "zz", "operator": "Exists"}],
            "extraRules": [{"ports": [{"port": 1}]}],
        }[path[-1]]
    if isinstance(value, dict):
        return {"zz": "1"}
    raise AssertionError(f"no change defined for {'.'.join(path)}={value!r}")


def helm_output(scenario: Scenario, extra: tuple[str, ...] = ()) -> str:
    cmd = [str(chart.HELM), "template", "nvsentinel", str(chart.CHART), "-n", "nvsentinel"]
    for values_file in scenario.values_files:
        cmd += ["-f", str(REPO / values_file)]
    # All as --set-json, so the change (last) wins over the scenario's own settings.
    for assignment in (*scenario.set_values, *REPRODUCIBLE):
        key, _, value = assignment.partition("=")
        cmd += ["--set-json", f"{key}={json.dumps(yaml.safe_load(value))}"]
    for assignment in extra:
        cmd += ["--set-json", assignment]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


def unused(path: tuple[str, ...], baselines: dict[Scenario, str]) -> bool:
    value: Any = DEFAULTS
    for key in path:
        value = value[key]
    assignment = f"{'.'.join(path)}={json.dumps(changed(path, value))}"
    return all(helm_output(s, (assignment,)) == out for s, out in baselines.items())


def test_every_value_in_values_yaml_is_read_by_a_template() -> None:
    baselines = {s: helm_output(s) for s in BASELINES}
    for scenario, out in baselines.items():
        assert out.startswith("rc=0"), (scenario.name, out[-500:])
        # generated passwords differ per render; the baselines must not
        assert helm_output(scenario) == out, f"{scenario.name} does not render reproducibly"
    paths = own_leaves()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: unused(p, baselines), paths))
    nobody_reads = [".".join(p) for p, u in zip(paths, results, strict=True) if u]
    assert nobody_reads == [], "values no template reads (remove them or use them)"
