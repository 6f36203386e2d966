"""MongoDB-style query documents, updates and change descriptions, provider-neutral.

- :func:`parse_filter` turns a filter into a small tree (:class:`Cond`,
  :class:`And`, :class:`Or`, :class:`Not`); anything it does not know raises
  :class:`~nvsentinel_store.errors.QueryError` (fail closed).
- :func:`matches` evaluates a tree on a document in Python, with MongoDB's
  rules where they matter here: a dotted path steps into objects and, one
  level, into arrays of objects; equality with a scalar matches an array that
  contains it; ``{"f": None}`` matches null or missing; ``$ne``/``$nin``/
  ``$exists: false`` match missing fields; comparisons only within a type
  (numbers with numbers, strings with strings); ``True`` is not ``1``.
- :func:`apply_update` applies ``$set``/``$unset`` with dotted paths.
- :func:`update_description` computes MongoDB's ``updatedFields`` (dotted keys
  of changed leaves or replaced subtrees) and ``removedFields`` from the
  documents before and after an update.

Datetimes are stored as RFC 3339 strings in UTC with microseconds
(``2026-01-02T03:04:05.000006Z``); a datetime in a filter is compared as that
string unless the provider maps the path to a typed timestamp column.
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, Final

from nvsentinel_store.errors import QueryError

#: Comparison operators a filter may use on a field.
FIELD_OPERATORS: Final = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$exists", "$gt", "$gte", "$lt", "$lte"}
)
LOGICAL_OPERATORS: Final = frozenset({"$and", "$or", "$nor"})
RANGE_OPS: Final = frozenset({"gt", "gte", "lt", "lte"})
#: The deepest nesting of objects and arrays accepted in a filter (``--match``) or
#: a migrated document; the outermost object is level 1. Checked before anything
#: recursive runs, far below Python's recursion limit (MongoDB's own limit is 100).
MAX_NESTING_DEPTH: Final = 100

_JSON_STRING: Final = re.compile(r'"(?:[^"\\]+|\\.)*"', re.DOTALL)
#: Every byte but the four brackets (outside JSON strings, brackets are ASCII).
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))

Path = tuple[str, ...]


@dataclass(frozen=True)
class Cond:
    """``path`` ``op`` ``value`` with op in eq, in, exists, gt, gte, lt, lte.

    ``$ne``, ``$nin`` and ``$exists: false`` are :class:`Not` of eq, in, exists.
    """

    path: Path
    op: str
    value: Any


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Cond | And | Or | Not

MATCH_ALL: Final[Node] = And(())


def encode_datetime(value: datetime) -> str:
    """The stored form of a datetime: UTC, microseconds, ``Z``; naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_json_value(value: Any, where: str = "document") -> Any:
    """``value`` as plain JSON data (dict, list, str, int, float, bool, None).

    Datetimes become RFC 3339 strings, UUIDs strings, tuples lists. Anything
    else (and NaN or infinity) raises :class:`QueryError` naming ``where``.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"{where}: {value!r} cannot be stored in JSON")
        return value
    if isinstance(value, datetime):
        return encode_datetime(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise QueryError(f"{where}: keys must be strings, got {key!r}")
            out[key] = to_json_value(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise QueryError(f"{where}: values of type {type(value).__name__} cannot be stored")


def json_text_too_deep(text: str, limit: int = MAX_NESTING_DEPTH) -> bool:
    """Whether the JSON ``text`` nests objects and arrays deeper than ``limit``.

    A scan of the text (brackets inside strings do not count), without parsing
    it: safe on input that would exhaust the recursion of ``json.loads``.
    """
    if text.count("{") + text.count("[") <= limit:
        return False
    # Without a backslash before a quote, every other piece between quotes is a
    # string; otherwise (escaped quotes) the strings are matched one by one.
    escaped = '\\"' in text
    outside = _JSON_STRING.sub("", text) if escaped else "".join(text.split('"')[::2])
    brackets = outside.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def value_too_deep(value: Any, limit: int = MAX_NESTING_DEPTH) -> bool:
    """Whether mappings and lists in ``value`` nest deeper than ``limit`` (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def split_path(key: str) -> Path:
    """A dotted field path as its parts; rejects empty parts, ``$`` parts and array indexes."""
    if not isinstance(key, str) or not key:
        raise QueryError(f"field path must be a non-empty string, got {key!r}")
    parts = tuple(key.split("."))
    for part in parts:
        if not part:
            raise QueryError(f"field path {key!r} has an empty part")
        if part.startswith("$"):
            raise QueryError(f"field path {key!r}: unknown operator or $-prefixed field {part!r}")
        if part.isdigit():
            raise QueryError(f"field path {key!r}: array indexes in paths are not supported")
    return parts


def parse_filter(filter: Mapping[str, Any] | None) -> Node:
    """The tree of a MongoDB-style filter; ``None`` or ``{}`` match everything."""
    if filter is None:
        return MATCH_ALL
    if not isinstance(filter, Mapping):
        raise QueryError(f"a filter must be a mapping, got {type(filter).__name__}")
    if value_too_deep(filter):
        raise QueryError(
            f"a filter may nest objects and arrays at most {MAX_NESTING_DEPTH} levels deep"
        )
    return _parse_filter(filter)


def _parse_filter(filter: Mapping[str, Any]) -> Node:
    if not isinstance(filter, Mapping):
        raise QueryError(f"a filter must be a mapping, got {type(filter).__name__}")
    parts: list[Node] = []
    for key, value in filter.items():
        if isinstance(key, str) and key.startswith("$"):
            parts.append(_parse_logical(key, value))
        else:
            parts.append(_parse_field(split_path(key), value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_logical(key: str, value: Any) -> Node:
    if key not in LOGICAL_OPERATORS:
        raise QueryError(f"unsupported query operator {key!r} (supported: $and, $or, $nor)")
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise QueryError(f"{key} needs a non-empty list of filters")
    children = tuple(_parse_filter(item) for item in value)
    if key == "$and":
        return And(children)
    if key == "$or":
        return Or(children)
    return Not(Or(children))


def _operator_mapping(value: Any) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    dollar = [isinstance(k, str) and k.startswith("$") for k in value]
    if any(dollar) and not all(dollar):
        raise QueryError(f"cannot mix operators and fields in {dict(value)!r}")
    return all(dollar)


def _check_value(value: Any, where: str) -> Any:
    if isinstance(value, datetime):
        return value
    return to_json_value(value, where)


def _parse_field(path: Path, value: Any) -> Node:
    where = ".".join(path)
    if not _operator_mapping(value):
        return Cond(path, "eq", _check_value(value, where))
    parts: list[Node] = []
    for op, arg in value.items():
        if op not in FIELD_OPERATORS:
            raise QueryError(
                f"unsupported operator {op!r} on {where!r} "
                f"(supported: {', '.join(sorted(FIELD_OPERATORS))})"
            )
        if op in ("$eq", "$ne"):
            cond = Cond(path, "eq", _check_value(arg, where))
            parts.append(cond if op == "$eq" else Not(cond))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, Sequence) or isinstance(arg, str | bytes):
                raise QueryError(f"{op} on {where!r} needs a list, got {arg!r}")
            values = tuple(_check_value(v, where) for v in arg)
            cond = Cond(path, "in", values)
            parts.append(cond if op == "$in" else Not(cond))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise QueryError(f"$exists on {where!r} needs true or false, got {arg!r}")
            cond = Cond(path, "exists", True)
            parts.append(cond if arg else Not(cond))
        else:
            checked = _check_value(arg, where)
            if not isinstance(checked, int | float | str | datetime) or isinstance(checked, bool):
                raise QueryError(f"{op} on {where!r} needs a number, string or datetime")
            parts.append(Cond(path, op[1:], checked))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


# -- evaluation ---------------------------------------------------------------


def resolve(doc: Any, path: Path) -> list[Any]:
    """The values at ``path``, stepping one level into arrays of objects."""
    current = [doc]
    for key in path:
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                if key in item:
                    found.append(item[key])
            elif isinstance(item, list):
                found.extend(e[key] for e in item if isinstance(e, dict) and key in e)
        current = found
    return current


def lookup_exact(doc: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) at ``path`` through objects only."""
    current = doc
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return False, None
        current = current[key]
    return True, current


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values where ``True`` is not ``1`` and key order does not matter."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def _scalar(value: Any) -> Any:
    return encode_datetime(value) if isinstance(value, datetime) else value


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(value, list):
            out.extend(value)
        else:
            out.append(value)
    return out


def _compare(op: str, left: Any, right: Any) -> bool:
    numbers = (int, float)
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, numbers) and isinstance(right, numbers):
        pass
    elif not (isinstance(left, str) and isinstance(right, str)):
        return False
    if op == "gt":
        return bool(left > right)
    if op == "gte":
        return bool(left >= right)
    if op == "lt":
        return bool(left < right)
    return bool(left <= right)


def _eq(candidates: list[Any], exact: tuple[bool, Any], value: Any) -> bool:
    value = _scalar(value)
    if value is None:
        return not candidates or any(v is None for v in _flatten(candidates))
    if isinstance(value, dict | list):
        found, current = exact
        return found and json_equal(current, value)
    return any(json_equal(v, value) for v in _flatten(candidates))


Resolver = Any  # Callable[[Path], tuple[list[Any], tuple[bool, Any]]]


def matches(doc: Any, node: Node, resolver: Resolver | None = None) -> bool:
    """Whether ``doc`` satisfies ``node``.

    ``resolver(path)`` may replace how paths are looked up; it returns the
    candidate values (see :func:`resolve`) and the exact-path lookup.
    """

    def look(path: Path) -> tuple[list[Any], tuple[bool, Any]]:
        if resolver is not None:
            result: tuple[list[Any], tuple[bool, Any]] = resolver(path)
            return result
        return resolve(doc, path), lookup_exact(doc, path)

    def evaluate(n: Node) -> bool:
        if isinstance(n, And):
            return all(evaluate(p) for p in n.parts)
        if isinstance(n, Or):
            return any(evaluate(p) for p in n.parts)
        if isinstance(n, Not):
            return not evaluate(n.part)
        candidates, exact = look(n.path)
        if n.op == "eq":
            return _eq(candidates, exact, n.value)
        if n.op == "in":
            return any(_eq(candidates, exact, v) for v in n.value)
        if n.op == "exists":
            return bool(candidates)
        if n.op in RANGE_OPS:
            right = _scalar(n.value)
            return any(_compare(n.op, v, right) for v in _flatten(candidates))
        raise QueryError(f"unknown condition {n.op!r}")

    return evaluate(node)


# -- updates ------------------------------------------------------------------


def apply_update(doc: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with ``$set`` and ``$unset`` applied (dotted paths create objects)."""
    if not isinstance(update, Mapping) or not update:
        raise QueryError("an update needs $set and/or $unset")
    unknown = [k for k in update if k not in ("$set", "$unset")]
    if unknown:
        raise QueryError(f"unsupported update operator(s) {unknown} (supported: $set, $unset)")
    new: dict[str, Any] = copy.deepcopy(dict(doc))
    sets = update.get("$set", {})
    unsets = update.get("$unset", {})
    if not isinstance(sets, Mapping) or not isinstance(unsets, Mapping):
        raise QueryError("$set and $unset take a mapping of field paths")
    paths = [split_path(k) for k in list(sets) + list(unsets)]
    for i, a in enumerate(paths):
        if a[0] == "_id":
            raise QueryError("the _id of a document is immutable")
        for b in paths[i + 1 :]:
            shorter = min(len(a), len(b))
            if a[:shorter] == b[:shorter]:
                raise QueryError(f"update paths {'.'.join(a)!r} and {'.'.join(b)!r} conflict")
    for key, value in sets.items():
        path = split_path(key)
        target = new
        for part in path[:-1]:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            elif not isinstance(child, dict):
                raise QueryError(f"cannot set {key!r}: {part!r} is not an object")
            target = child
        target[path[-1]] = to_json_value(value, key)
    for key in unsets:
        path = split_path(key)
        found, parent = lookup_exact(new, path[:-1])
        if found and isinstance(parent, dict):
            parent.pop(path[-1], None)
    return new


def update_description(before: Any, after: Any) -> dict[str, Any]:
    """MongoDB's ``updateDescription`` from the documents before and after an update.

    Objects present on both sides are compared key by key, so a changed leaf is
    reported by its dotted path (``healtheventstatus.nodequarantined``); a
    value whose type changed, an array that changed, or a new key is reported
    whole at its path. Keys that disappeared are in ``removedFields``.
    """
    updated: dict[str, Any] = {}
    removed: list[str] = []

    def walk(old: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
        for key, value in new.items():
            path = prefix + key
            if key not in old:
                updated[path] = value
            elif isinstance(value, dict) and isinstance(old[key], dict):
                walk(old[key], value, path + ".")
            elif not json_equal(old[key], value):
                updated[path] = value
        for key in old:
            if key not in new:
                removed.append(prefix + key)

    if isinstance(before, dict) and isinstance(after, dict):
        walk(before, after, "")
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": []}


def updated_fields_resolver(updated: Mapping[str, Any]) -> Resolver:
    """Path lookup inside ``updatedFields`` whose keys are dotted paths.

    ``a.b.c`` is found under the key ``a.b.c``, or inside the value of ``a.b``
    or ``a`` (whichever the update reported).
    """

    def look(path: Path) -> tuple[list[Any], tuple[bool, Any]]:
        for cut in range(len(path), 0, -1):
            key = ".".join(path[:cut])
            if key in updated:
                rest = path[cut:]
                value = updated[key]
                return resolve(value, rest), lookup_exact(value, rest)
        return [], (False, None)

    return look


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character in a key or a string (PostgreSQL stores none)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False
