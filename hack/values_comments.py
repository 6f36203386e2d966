"""The comments of a chart's values.yaml: `# --` documentation and `# +schema:` annotations.

values.yaml is the single source of the chart's values docs and of its
values.schema.json: hack/gen-chart-readme.py turns the `# --` comments into the
README's tables, hack/gen-values-schema.py turns the values, their types and
the `# +schema:` annotations into the schema. Both read the file through
`parse`.

A comment block sits directly above its key (a blank line ends it):

    # -- What the key does and when to change it (continued on `# ` lines).
    # +schema:pattern=^[a-z]+$
    key: value

`# -- (int) text` gives the type where the default cannot (null), as in
helm-docs. Annotations may also stand alone above a key (no `# --`). They are
`# +schema:NAME` or `# +schema:NAME=VALUE`; VALUE is JSON when it parses as
JSON, else a string, and always a string for `pattern` and `description`:

    type=T                    the JSON type(s), e.g. ["integer", "null"]; default:
                              the type of the default (a null default takes the
                              `(int)`-style hint, plus "null")
    enum=[...]  pattern=RE  minimum=N  maximum=N  minLength=N  description=TEXT
                              the JSON Schema keywords of the same name
    items=SCHEMA              the schema of each item of a list
    properties=SCHEMAS        the keys of a map whose keys are not in values.yaml
                              (a literal JSON Schema `properties` object)
    additionalProperties=X    `false` (the default for a map whose keys are
                              documented), `true`, or a schema; a map documented
                              as a whole accepts any keys unless set
    optional                  the key may be absent (default: a key is required
                              when its default is not null and its type does
                              not admit null, since Helm drops a key set to null)
    def=NAME                  this key's schema is `$defs/NAME`; the key refers to it
    ref=NAME                  this key's schema is `$defs/NAME` (keys of the def,
                              required as the values here say, constraints from
                              the def's own comments)
    property=KEY              inside a `def` map: declares KEY of the def, which
                              this map refuses (it is set at every `ref`, e.g.
                              under each service); the `+schema:` lines right
                              after it describe KEY
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#'\"-][^:#]*|\"[^\"]+\"|'[^']+'):(\s|$)")
DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
ANNOTATION = re.compile(r"^(?P<indent> *)# \+schema:(?P<name>[A-Za-z]+)(?:=(?P<value>.*))?$")
COMMENT = re.compile(r"^ *#(?: (?P<text>.*))?$")
TYPE_HINT = re.compile(r"^\((?P<type>[a-z]+)\) (?P<rest>.*)$")

#: Annotations whose value is always taken as written.
VERBATIM = frozenset({"pattern", "description"})
#: Annotations that copy a JSON Schema keyword.
KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "description",
        "items",
        "properties",
        "additionalProperties",
    }
)
#: Annotations that steer the generator instead.
DIRECTIVES = frozenset({"optional", "def", "ref", "property"})


class AnnotationError(Exception):
    """A `# +schema:` line the generator cannot use; the message names the line."""


@dataclass
class Annotations:
    """What the `# +schema:` lines of one key (or one declared key) say."""

    keywords: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    define: str | None = None
    ref: str | None = None

    def add(self, name: str, value: str | None, where: str) -> None:
        """Record one annotation line."""
        if name == "optional":
            if value is not None:
                raise AnnotationError(f"{where}: +schema:optional takes no value")
            self.optional = True
            return
        if value is None or value == "":
            raise AnnotationError(f"{where}: +schema:{name} needs a value")
        if name == "def":
            self.define = value
        elif name == "ref":
            self.ref = value
        elif name in KEYWORDS:
            self.keywords[name] = value if name in VERBATIM else json_or_text(value)
        else:
            raise AnnotationError(f"{where}: unknown annotation +schema:{name}")


@dataclass
class KeyComment:
    """The comment block above one key: its `# --` text (None without one) and annotations."""

    path: tuple[str, ...]
    description: str | None
    annotations: Annotations


@dataclass
class Declared:
    """A key declared with `+schema:property` in the map at `parent`."""

    parent: tuple[str, ...]
    name: str
    annotations: Annotations


@dataclass
class ValuesComments:
    """Every commented key of a values file, in file order, and the declared keys."""

    keys: list[KeyComment]
    declared: list[Declared]

    def documented(self) -> list[KeyComment]:
        """The keys with a `# --` description, in file order."""
        return [k for k in self.keys if k.description is not None]

    def by_path(self) -> dict[tuple[str, ...], KeyComment]:
        """The comment of each commented key, by its path."""
        return {k.path: k for k in self.keys}


def json_or_text(value: str) -> Any:
    """An annotation's value: JSON when it parses, else the text itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def split_type_hint(description: str) -> tuple[str | None, str]:
    """`(int) text` -> ("int", "text"); a description without a hint -> (None, description)."""
    hinted = TYPE_HINT.match(description)
    if hinted:
        return hinted.group("type"), hinted.group("rest")
    return None, description


@dataclass
class _Block:
    """The comment lines seen since the last key or blank line."""

    doc: list[str] | None = None
    annotations: Annotations = field(default_factory=Annotations)
    declaring: Declared | None = None


def parse(text: str) -> ValuesComments:
    """The comments of a values file; raises AnnotationError for a malformed annotation."""
    keys: list[KeyComment] = []
    declared: list[Declared] = []
    stack: list[tuple[int, str]] = []
    block = _Block()
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"line {number}"
        if not line.strip():
            block = _Block()
            continue
        annotation = ANNOTATION.match(line)
        if annotation:
            name, value = annotation.group("name"), annotation.group("value")
            if name == "property":
                if not value:
                    raise AnnotationError(f"{where}: +schema:property needs a key name")
                indent = len(annotation.group("indent"))
                parent = tuple(k for i, k in stack if i < indent)
                block.declaring = Declared(parent, value, Annotations())
                declared.append(block.declaring)
            elif block.declaring is not None:
                block.declaring.annotations.add(name, value, where)
            else:
                block.annotations.add(name, value, where)
            continue
        block.declaring = None
        start = DOC_START.match(line)
        if start:
            block.doc = [start.group("text").strip()]
            continue
        comment = COMMENT.match(line)
        if comment:
            if block.doc is not None:
                block.doc.append((comment.group("text") or "").strip())
            continue
        key = KEY_LINE.match(line)
        if not key:
            continue  # list items and block scalars belong to the key above
        indent = len(key.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group("key").strip().strip("'\"")))
        if block.doc is not None or block.annotations != Annotations():
            description = None if block.doc is None else " ".join(p for p in block.doc if p)
            keys.append(KeyComment(tuple(k for _, k in stack), description, block.annotations))
        block = _Block()
    return ValuesComments(keys, declared)
