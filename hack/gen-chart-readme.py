#!/usr/bin/env python3
"""Generate the values tables of charts/nvsentinel/README.md from `# --` comments.

Reads charts/nvsentinel/values.yaml and each subchart's values.yaml
(charts/nvsentinel/charts/<name>/values.yaml, keys prefixed with `<name>.`),
and writes one table per file between the markers

    <!-- values-table:start -->
    <!-- values-table:end -->

in charts/nvsentinel/README.md. A key is documented by a comment block that
starts with `# -- ` directly above it (continuation lines start with `# `;
hack/values_comments.py parses them, and leaves the `# +schema:` lines to
hack/gen-values-schema.py). Every key must be documented, itself or through a
documented parent map. As in helm-docs, `# -- (int) text` gives the type where
the default cannot (null).

Usage:
    hack/gen-chart-readme.py           rewrite the README's tables
    hack/gen-chart-readme.py --check   exit 1 with a diff when the README is stale
                                       or a key is undocumented (for make lint)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from generated_file import write_or_check
from values_comments import AnnotationError, parse, split_type_hint

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "nvsentinel"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"


class UndocumentedError(Exception):
    """A values key has no `# --` comment (itself or on a parent), or the markers are missing."""


def leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every leaf (scalar, list, or empty map) of a values tree."""
    if isinstance(value, dict) and value:
        paths: list[tuple[str, ...]] = []
        for key, child in value.items():
            paths += leaf_paths(child, (*prefix, str(key)))
        return paths
    return [prefix]


def lookup(values: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path."""
    for key in path:
        values = values[key]
    return values


def type_name(value: Any) -> str:
    """helm-docs' name for the type of a default."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "string"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(values_file: Path, chart: Path, prefix: str = "") -> str:
    """The Markdown table of one values file; raises UndocumentedError for a bare key."""
    text = values_file.read_text()
    values = yaml.safe_load(text) or {}
    try:
        documented = parse(text).documented()
    except AnnotationError as err:
        raise UndocumentedError(f"{values_file.relative_to(chart.parent)}: {err}") from err
    covered = {d.path for d in documented}
    missing = [
        ".".join(p)
        for p in leaf_paths(values)
        if not any(p[: i + 1] in covered for i in range(len(p)))
    ]
    if missing:
        rel = values_file.relative_to(chart.parent)
        raise UndocumentedError(f"{rel}: keys without a `# --` comment: {', '.join(missing)}")
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in documented:
        default = lookup(values, doc.path)
        if isinstance(default, dict) and any(
            other.path[: len(doc.path)] == doc.path and other.path != doc.path
            for other in documented
        ):
            continue  # a documented map whose keys have their own rows
        key = prefix + ".".join(doc.path)
        hint, description = split_type_hint(doc.description or "")
        kind = hint or type_name(default)
        shown = json.dumps(default, separators=(",", ":"))
        rows.append(f"| `{cell(key)}` | {kind} | `{cell(shown)}` | {cell(description)} |")
    return "\n".join(rows)


def generated_section(chart: Path) -> str:
    """Everything between the README markers."""
    parts = ["", f"### {chart.name}", "", table(chart / "values.yaml", chart)]
    for sub in sorted((chart / "charts").glob("*/values.yaml")):
        name = sub.parent.name
        parts += [
            "",
            f"### {name} subchart",
            "",
            f"Keys under `{name}.` in the umbrella chart's values"
            f" (from `charts/{name}/values.yaml`).",
            "",
            table(sub, chart, prefix=f"{name}."),
        ]
    parts.append("")
    return "\n".join(parts)


def render_readme(current: str, chart: Path) -> str:
    """The README with its generated section replaced."""
    if START not in current or END not in current:
        raise UndocumentedError(f"{chart.name}/README.md: markers {START} / {END} not found")
    head, rest = current.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{generated_section(chart)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate charts/nvsentinel/README.md's values tables"
        " from the `# --` comments in values.yaml."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff when the README is stale"
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=CHART,
        help="chart directory (default: charts/nvsentinel)",
    )
    args = parser.parse_args(argv)
    readme = args.chart / "README.md"
    current = readme.read_text()
    try:
        wanted = render_readme(current, args.chart)
    except UndocumentedError as err:
        print(f"gen-chart-readme: {err}", file=sys.stderr)
        return 1
    return write_or_check(
        readme,
        wanted,
        check=args.check,
        tool="gen-chart-readme",
        command="hack/gen-chart-readme.py (make docs)",
    )


if __name__ == "__main__":
    sys.exit(main())
