"""Render one of the local subcharts on its own, the way `helm template x <subchart>` does.

The umbrella chart is rendered through tests.fixtures.chart; these helpers cover
charts/nvsentinel/charts/<name> alone, cached per argument set, plus small parsers
for the configuration files the subcharts render.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import chart

SUBCHARTS = chart.CHART / "charts"


def subchart_path(name: str) -> Path:
    """Directory of a local subchart (`postgresql` or `mongodb`)."""
    return SUBCHARTS / name


def helm_template(
    name: str,
    set_values: Sequence[str] = (),
    *,
    release: str = "x",
    namespace: str = "nvs",
    helm: Path = chart.HELM,
) -> subprocess.CompletedProcess[str]:
    """Run `helm template` on the subchart and return the finished process."""
    cmd = [str(helm), "template", release, str(subchart_path(name)), "--namespace", namespace]
    for assignment in set_values:
        cmd += ["--set", assignment]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@functools.cache
def _render_cached(
    name: str, set_values: tuple[str, ...], release: str, namespace: str, helm: Path
) -> tuple[dict[str, Any], ...]:
    result = helm_template(name, set_values, release=release, namespace=namespace, helm=helm)
    if result.returncode != 0:
        raise chart.RenderError(result.stderr.strip() or result.stdout.strip())
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_subchart(
    name: str,
    set_values: Sequence[str] = (),
    *,
    release: str = "x",
    namespace: str = "nvs",
    helm: Path = chart.HELM,
) -> list[dict[str, Any]]:
    """Every object the subchart renders (a fresh list; the parsed objects are shared)."""
    return list(_render_cached(name, tuple(set_values), release, namespace, helm))


def render_error(name: str, set_values: Sequence[str]) -> str:
    """helm's message when the subchart refuses these values; fails if it renders."""
    result = helm_template(name, set_values)
    assert result.returncode != 0, f"{name} rendered with {list(set_values)}"
    return result.stderr + result.stdout


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a StatefulSet, Deployment, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    """The pod template labels of a workload."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    labels: dict[str, str] = spec["template"]["metadata"]["labels"]
    return labels


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """A container (or init container) of a pod spec by name."""
    for item in [*spec.get("initContainers", []), *spec["containers"]]:
        if item["name"] == name:
            return dict(item)
    names = [c["name"] for c in [*spec.get("initContainers", []), *spec["containers"]]]
    raise AssertionError(f"container {name} not in pod; containers: {names}")


def env(item: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment variables."""
    return {e["name"]: e.get("value", "") for e in item.get("env", [])}


def mount_of(item: dict[str, Any], volume: str) -> dict[str, Any]:
    """The mount of a volume in a container."""
    for mount in item.get("volumeMounts", []):
        if mount["name"] == volume:
            return dict(mount)
    raise AssertionError(f"volume {volume} not mounted in {item['name']}")


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """A volume of a pod spec by name."""
    for item in spec.get("volumes", []):
        if item["name"] == name:
            return dict(item)
    raise AssertionError(
        f"volume {name} not in pod; volumes: {[v['name'] for v in spec['volumes']]}"
    )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector selects an object with these labels."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class HbaRule:
    """One record of pg_hba.conf."""

    type: str
    database: str
    users: tuple[str, ...]
    address: str
    method: str
    options: tuple[str, ...]


def parse_pg_hba(text: str) -> list[HbaRule]:
    """The records of a pg_hba.conf, in order (comments and blank lines dropped)."""
    rules = []
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if fields[0] == "local":
            kind, database, users, method, *options = fields
            address = ""
        else:
            kind, database, users, address, method, *options = fields
        rules.append(
            HbaRule(kind, database, tuple(users.split(",")), address, method, tuple(options))
        )
    return rules


def parse_postgresql_conf(text: str) -> dict[str, str]:
    """postgresql.conf settings with quotes removed."""
    settings = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if value.startswith("'") and value.endswith("'"):
            value = value[1:-1].replace("''", "'")
        settings[name] = value
    return settings


def unread_values(name: str) -> list[str]:
    """Keys of the subchart's values.yaml that no template reads (itself or as a whole map)."""
    values = yaml.safe_load((subchart_path(name) / "values.yaml").read_text())
    templates = "".join(p.read_text() for p in (subchart_path(name) / "templates").iterdir())

    def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found: list[tuple[str, ...]] = []
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                found += leaves(value, (*prefix, key))
            else:
                found.append((*prefix, key))
        return found

    def read(path: tuple[str, ...], whole: bool) -> bool:
        ref = re.escape(".Values." + ".".join(path))
        return re.search(ref + (r"(?![\w.])" if whole else r"(?!\w)"), templates) is not None

    unread = []
    for path in leaves(values):
        parents = (path[:i] for i in range(len(path) - 1, 0, -1))
        if not read(path, whole=False) and not any(read(p, whole=True) for p in parents):
            unread.append(".".join(path))
    return unread
