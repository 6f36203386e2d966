#!/usr/bin/env python3
"""Generate charts/nvsentinel/values.schema.json from values.yaml.

The schema says what values.yaml says: every key it has (a map whose keys are
documented lists them and refuses others), the type of each default, and the
`# +schema:` annotations of its comments (the annotation set is described in
hack/values_comments.py). A key is required unless annotated `optional`, its
default is null or its type admits null. Blocks written once and used in
several places (`def=` / `ref=`) become `$defs`. Written as JSON Schema 2020-12
(a `$ref` may carry `required` beside it), keys sorted, two-space indent.

Usage:
    hack/gen-values-schema.py           rewrite values.schema.json
    hack/gen-values-schema.py --check   exit 1 with a diff when it is stale (for make lint)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from generated_file import write_or_check
from values_comments import (
    AnnotationError,
    Annotations,
    Declared,
    KeyComment,
    parse,
    split_type_hint,
)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "nvsentinel"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

Path_ = tuple[str, ...]
Schema = dict[str, Any]

#: helm-docs' type names (the `# -- (int)` hints) as JSON types.
HINT_TYPES = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "string": "string",
    "list": "array",
    "object": "object",
}


class SchemaError(Exception):
    """values.yaml and its annotations do not make a schema; the message names the key."""


@dataclass
class Node:
    """The schema of one key: its shape, and what the values at this place require.

    `required` is kept apart because a `$defs` block is shared: each place that
    uses it requires the keys its own values set."""

    shape: Schema
    required: list[str] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def requirements(self) -> Schema:
        """`required` here and below, as schema keywords to sit beside the shape."""
        out: Schema = {}
        if self.required:
            out["required"] = sorted(self.required)
        below: dict[str, Schema | bool] = {}
        for key, child in self.children.items():
            if requirements := child.requirements():
                below[key] = requirements
        # a declared key the def's own map refuses: the false schema
        below.update({key: False for key in self.refused})
        if below:
            out["properties"] = below
        return out

    def inline(self) -> Schema:
        """The shape with its requirements merged in (for a place that is no `$defs` block)."""
        return merge(self.shape, self.requirements())


def merge(shape: Schema, requirements: Schema) -> Schema:
    """A schema and the `required`/`properties` keywords of `requirements`, merged key by key."""
    out = dict(shape)
    if "required" in requirements:
        out["required"] = requirements["required"]
    props = dict(out.get("properties", {}))
    for key, sub in requirements.get("properties", {}).items():
        props[key] = merge(props[key], sub) if isinstance(sub, dict) and key in props else sub
    if props:
        out["properties"] = props
    return out


def json_type(value: Any) -> str:
    """The JSON Schema type of a default."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def admits_null(schema: Schema | bool) -> bool:
    """Whether a schema's type allows null: such a key cannot be required, since Helm
    removes a key set to null before it validates."""
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return kind == "null" or (isinstance(kind, list) and "null" in kind)


class SchemaBuilder:
    """Walks values.yaml with its comments and builds the schema."""

    def __init__(self, values: dict[str, Any], text: str, title: str) -> None:
        comments = parse(text)
        self.values = values
        self.title = title
        self.comments: dict[Path_, KeyComment] = comments.by_path()
        self.declared: dict[Path_, list[Declared]] = {}
        for decl in comments.declared:
            self.declared.setdefault(decl.parent, []).append(decl)
        self.described_paths = {
            *self.comments,
            *((*d.parent, d.name) for d in comments.declared),
        }
        self.def_paths = self.find_defs()
        self.defs: dict[str, Schema] = {}

    # -- comments -----------------------------------------------------------

    def annotations(self, origin: Path_) -> Annotations:
        """The annotations of a key, or of a key declared in its map; none if it has neither."""
        comment = self.comments.get(origin)
        if comment is not None:
            return comment.annotations
        for decl in self.declared.get(origin[:-1], []):
            if decl.name == origin[-1]:
                return decl.annotations
        return Annotations()

    def described(self, origin: Path_) -> bool:
        """Whether a key has a comment block of its own or is declared in its map."""
        return origin in self.described_paths

    def find_defs(self) -> dict[str, Path_]:
        """Where each `$defs` block is written (`+schema:def=NAME`)."""
        paths: dict[str, Path_] = {}
        for path, comment in self.comments.items():
            name = comment.annotations.define
            if name is None:
                continue
            if name in paths:
                raise SchemaError(
                    f"$defs/{name} is defined twice: {dotted(paths[name])} and {dotted(path)}"
                )
            paths[name] = path
        for path, comment in self.comments.items():
            name = comment.annotations.ref
            if name is not None and name not in paths:
                raise SchemaError(
                    f"{dotted(path)}: +schema:ref={name} but no key has +schema:def={name}"
                )
        return paths

    # -- building -------------------------------------------------------------

    def build(self) -> Schema:
        """The whole schema."""
        for name, path in sorted(self.def_paths.items()):
            self.defs[name] = self.node(path, lookup(self.values, path), path, reuse=False).shape
        root = self.node((), self.values, (), reuse=False)
        schema: Schema = {"$schema": DRAFT, "title": self.title, **root.inline()}
        if self.defs:
            schema["$defs"] = self.defs
        return schema

    def node(self, path: Path_, value: Any, origin: Path_, *, reuse: bool = True) -> Node:
        """The schema of the key at `path`, described by the comments at `origin`.

        Inside a `ref` the origin is the matching key of the `$defs` block.
        With `reuse`, a `def` or `ref` key becomes a `$ref`; building the block
        itself passes reuse=False."""
        ann = self.annotations(origin)
        name = ann.define or ann.ref
        if reuse and path and name is not None:
            return self.reference(path, value, name, defining=ann.define is not None)
        if isinstance(value, dict) and self.has_described_keys(origin):
            return self.mapping(path, value, origin, ann)
        return Node(self.leaf(path, value, origin, ann))

    def reference(self, path: Path_, value: Any, name: str, *, defining: bool) -> Node:
        """A key that uses `$defs/name`: a `$ref`, and what the values here require."""
        block_path = self.def_paths[name]
        inner = self.node(path, value, block_path, reuse=False)
        if not defining:
            self.check_keys_of_def(path, value, block_path)
        shape: Schema = {"$ref": f"#/$defs/{name}"}
        return Node(shape, inner.required, inner.children, inner.refused)

    def check_keys_of_def(self, path: Path_, value: Any, origin: Path_) -> None:
        """A `ref` place may set only keys of its def, and states no constraints of its own."""
        comment = self.comments.get(path)
        if comment is not None and path != origin:
            own = comment.annotations
            if own.keywords or own.optional or own.define:
                raise SchemaError(
                    f"{dotted(path)}: a key under a +schema:ref takes its constraints from the"
                    f" def ({dotted(origin)}); move its +schema: lines there"
                )
        if not isinstance(value, dict) or not self.has_described_keys(origin):
            return
        for key, child in value.items():
            inner = (*origin, key)
            if not self.described(inner) and key not in lookup_or(self.values, origin, {}):
                raise SchemaError(f"{dotted((*path, key))} is no key of {dotted(origin)}")
            self.check_keys_of_def((*path, key), child, inner)

    def has_described_keys(self, origin: Path_) -> bool:
        """Whether a map's keys are schema'd one by one (a key at some depth below it is
        commented or declared), not the map as a whole."""
        return any(
            len(path) > len(origin) and path[: len(origin)] == origin
            for path in self.described_paths
        )

    def mapping(self, path: Path_, value: dict[str, Any], origin: Path_, ann: Annotations) -> Node:
        """A map whose keys are described: each key's schema; others refused unless annotated."""
        properties: Schema = {}
        children: dict[str, Node] = {}
        required: list[str] = []
        for key, child in value.items():
            node = self.node((*path, key), child, (*origin, key))
            properties[key] = node.shape
            if node.requirements():
                children[key] = node
            optional = self.annotations((*origin, key)).optional
            if child is not None and not optional and not admits_null(node.shape):
                required.append(key)
        refused: list[str] = []
        for decl in self.declared.get(origin, []):
            if decl.name in value:
                continue
            properties[decl.name] = self.leaf(
                (*path, decl.name), None, (*origin, decl.name), decl.annotations
            )
            if path == origin:
                refused.append(decl.name)
        if "properties" in ann.keywords or "type" in ann.keywords:
            raise SchemaError(
                f"{dotted(path)}: its keys are in values.yaml; +schema:properties and"
                " +schema:type are for a map documented as a whole"
            )
        shape: Schema = {"type": "object", "properties": properties, **ann.keywords}
        shape.setdefault("additionalProperties", False)
        return Node(shape, required, children, refused)

    def leaf(self, path: Path_, value: Any, origin: Path_, ann: Annotations) -> Schema:
        """A scalar, a list, or a map documented as a whole: its type and annotated keywords."""
        schema: Schema = {
            "type": ann.keywords.get("type") or self.default_type(path, value, origin)
        }
        schema.update(ann.keywords)
        return schema

    def default_type(self, path: Path_, value: Any, origin: Path_) -> Any:
        """The type of a default; a null default takes its `(type)` hint and also admits null."""
        if value is not None:
            return json_type(value)
        comment = self.comments.get(origin)
        hint, _ = split_type_hint((comment.description or "") if comment else "")
        if hint is None:
            raise SchemaError(
                f"{dotted(path)}: no type (a null default needs `# -- (int) ...`,"
                " a declared key +schema:type)"
            )
        if hint not in HINT_TYPES:
            raise SchemaError(f"{dotted(path)}: unknown type hint ({hint})")
        return [HINT_TYPES[hint], "null"]


def dotted(path: Path_) -> str:
    """A key path as an operator writes it."""
    return ".".join(path) or "(top level)"


def lookup(values: Any, path: Path_) -> Any:
    """The value at a key path."""
    for key in path:
        values = values[key]
    return values


def lookup_or(values: Any, path: Path_, default: Any) -> Any:
    """The value at a key path, or `default` where the path does not exist."""
    try:
        return lookup(values, path)
    except (KeyError, TypeError):
        return default


def render_schema(chart: Path) -> str:
    """The schema generated from the chart's values.yaml, as the file's text."""
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text) or {}
    name = yaml.safe_load((chart / "Chart.yaml").read_text())["name"]
    schema = SchemaBuilder(values, text, f"{name} chart values").build()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate values.schema.json from values.yaml and its # +schema: annotations."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff when values.schema.json is stale"
    )
    parser.add_argument(
        "--chart", type=Path, default=CHART, help="chart directory (default: charts/nvsentinel)"
    )
    args = parser.parse_args(argv)
    target = args.chart / "values.schema.json"
    try:
        wanted = render_schema(args.chart)
    except (AnnotationError, SchemaError) as err:
        print(f"gen-values-schema: {err}", file=sys.stderr)
        return 1
    return write_or_check(
        target,
        wanted,
        check=args.check,
        tool="gen-values-schema",
        command="hack/gen-values-schema.py (make docs)",
    )


if __name__ == "__main__":
    sys.exit(main())
