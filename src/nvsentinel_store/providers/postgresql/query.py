"""Filters (:mod:`nvsentinel_store.query` trees) as PostgreSQL WHERE clauses.

A path is translated to, first match wins:

- ``_id``: the ``id`` column;
- a path the event table extracts into a typed column (``healthevent.nodename``
  -> ``node_name``, matched case-insensitively like the extraction trigger),
  when the value's type fits the column (str for text, bool for boolean, int
  for integer, datetime for timestamptz) -- so the indexes serve the query;
- otherwise a SQL/JSON path on the JSONB document in lax mode, whose rules
  match :func:`nvsentinel_store.query.matches` (arrays unwrapped one level,
  comparisons only within a type).

Atomic predicates stay plain (``node_name = 'n1'``) so the planner can use the
indexes; a ``NOT`` is written ``NOT coalesce(x, false)``, so a missing field
(NULL) satisfies ``$ne`` as in the Python evaluation. (Under AND/OR alone a
NULL acts as false in WHERE, which is the two-valued result for a formula
without negation.)

For change streams (:class:`Pushdown`) a condition can also be *partial*: a
necessary condition that the Python re-check completes. Partial conditions are
kept under ``AND``, and an ``OR`` or ``NOT`` over one becomes "no condition",
so the SQL never drops a change that the Python check would keep.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from psycopg import sql
from psycopg.types.json import Jsonb

from nvsentinel_store.errors import QueryError
from nvsentinel_store.query import And, Cond, Node, Not, Or, Path, encode_datetime, split_path

TRUE: Final = sql.SQL("true")
DOCUMENT: Final = sql.Identifier("document")
FALSE: Final = sql.SQL("false")


@dataclass(frozen=True)
class Column:
    """A typed column filled from a document path by the extraction trigger."""

    name: str
    type: str  # text | boolean | integer | timestamptz
    #: Whether the trigger stores '' as NULL (then '' and None must use the document).
    empty_is_null: bool = False
    #: Never NULL: sorting needs no NULLS clause, so it matches the indexes' order.
    not_null: bool = False
    #: NVSentinel's VARCHAR(n): the trigger keeps the first n characters, so a
    #: longer value is looked up in the document.
    max_length: int | None = None


HEALTH_EVENT_COLUMNS: Final[Mapping[str, Column]] = {
    # NVSentinel's columns, where they always hold the document's value.
    "healthevent.nodename": Column("node_name", "text", empty_is_null=True, max_length=255),
    "createdat": Column("created_at", "timestamptz", not_null=True),
    # Ours (0002_change_capture.sql), always extracted from the document.
    "healthevent.agent": Column("agent", "text"),
    "healthevent.componentclass": Column("component_class", "text"),
    "healthevent.checkname": Column("check_name", "text"),
    "healthevent.isfatal": Column("is_fatal", "boolean"),
    "healthevent.ishealthy": Column("is_healthy", "boolean"),
    "healthevent.recommendedaction": Column("recommended_action_code", "integer"),
    "healthevent.processingstrategy": Column("processing_strategy", "integer"),
    "healthevent.generatedtimestamp": Column("event_timestamp", "timestamptz"),
    "healtheventstatus.nodequarantined": Column("quarantine_status", "text", empty_is_null=True),
    "healtheventstatus.userpodsevictionstatus.status": Column(
        "eviction_status", "text", empty_is_null=True
    ),
    "healtheventstatus.faultremediated": Column("remediated", "boolean"),
    "healtheventstatus.lastremediationtimestamp": Column("last_remediation_at", "timestamptz"),
}

MAINTENANCE_EVENT_COLUMNS: Final[Mapping[str, Column]] = {
    # NVSentinel's columns, which its statements write from the same document
    # (its upsert and status update set both). A column-only UPDATE by hand
    # would make them differ; a query then follows the column.
    # maintenance_events has no columns of ours: NVSentinel's watchers hand out
    # its whole rows.
    "eventid": Column("event_id", "text", max_length=255),
    "csp": Column("csp", "text", empty_is_null=True, max_length=50),
    "clustername": Column("cluster_name", "text", empty_is_null=True, max_length=255),
    "nodename": Column("node_name", "text", max_length=255),
    "status": Column("status", "text", empty_is_null=True, max_length=50),
    "cspstatus": Column("csp_status", "text", max_length=50),
    "scheduledstarttime": Column("scheduled_start_time", "timestamptz"),
    "actualendtime": Column("actual_end_time", "timestamptz"),
}

TABLE_COLUMNS: Final[Mapping[str, Mapping[str, Column]]] = {
    "health_events": HEALTH_EVENT_COLUMNS,
    "maintenance_events": MAINTENANCE_EVENT_COLUMNS,
}


def column_for(columns: Mapping[str, Column], path: Path) -> Column | None:
    return columns.get(".".join(path).lower())


def _fits(column: Column, value: Any) -> bool:
    if column.type == "text":
        return (
            isinstance(value, str)
            and not (column.empty_is_null and value == "")
            and (column.max_length is None or len(value) <= column.max_length)
        )
    if column.type == "boolean":
        return isinstance(value, bool)
    if column.type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if column.type == "timestamptz":
        return isinstance(value, datetime)
    return False


def jsonpath_text(path: Path) -> str:
    """``$."a"."b"`` for a path, keys quoted."""
    quoted = (json.dumps(part) for part in path)
    return "$" + "".join("." + q for q in quoted)


def _json_scalar(value: Any) -> Any:
    return encode_datetime(value) if isinstance(value, datetime) else value


_JSONPATH_OPS: Final = {"eq": "==", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_SQL_OPS: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _exists(doc: sql.Composable, path: Path, predicate: str | None, value: Any) -> sql.Composed:
    text = jsonpath_text(path)
    if predicate is None:
        return sql.SQL("jsonb_path_exists({}, {}::jsonpath)").format(doc, sql.Literal(text))
    return sql.SQL("jsonb_path_exists({}, {}::jsonpath, {})").format(
        doc,
        sql.Literal(f"{text} ? (@ {predicate} $v)"),
        Jsonb({"v": _json_scalar(value)}),
    )


def document_condition(doc: sql.Composable, cond: Cond) -> sql.Composable:
    """An exact predicate for ``cond`` on the JSONB expression ``doc``."""
    if cond.op == "exists":
        return _exists(doc, cond.path, None, None)
    if cond.op == "in":
        if not cond.value:
            return FALSE
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(
                document_condition(doc, Cond(cond.path, "eq", v)) for v in cond.value
            )
        )
    if cond.op == "eq":
        value = _json_scalar(cond.value)
        if value is None:
            return sql.SQL("(NOT coalesce({}, false) OR {})").format(
                _exists(doc, cond.path, None, None),
                sql.SQL("jsonb_path_exists({}, {}::jsonpath)").format(
                    doc, sql.Literal(jsonpath_text(cond.path) + " ? (@ == null)")
                ),
            )
        if isinstance(value, dict | list):
            return sql.SQL("(({} #> {}) = {})").format(
                doc, sql.Literal(list(cond.path)), Jsonb(value)
            )
        return _exists(doc, cond.path, "==", value)
    if cond.op in _JSONPATH_OPS:
        return _exists(doc, cond.path, _JSONPATH_OPS[cond.op], cond.value)
    raise QueryError(f"unknown condition {cond.op!r}")


def _column_condition(column: Column, cond: Cond) -> sql.Composable | None:
    ident = sql.Identifier(column.name)
    if cond.op == "eq" and _fits(column, cond.value):
        return sql.SQL("({} = {})").format(ident, sql.Literal(cond.value))
    if (
        cond.op == "in"
        and cond.value
        and all(_fits(column, v) for v in cond.value)
        and column.type != "timestamptz"
    ):
        return sql.SQL("({} = ANY({}))").format(ident, sql.Literal(list(cond.value)))
    if (
        cond.op in _SQL_OPS
        and column.type in ("integer", "timestamptz")
        and _fits(column, cond.value)
    ):
        return sql.SQL("({} {} {})").format(
            ident, sql.SQL(_SQL_OPS[cond.op]), sql.Literal(cond.value)
        )
    return None


@dataclass(frozen=True)
class TableTarget:
    """Translation for an event table: ``id``, typed columns, then ``document``."""

    columns: Mapping[str, Column]
    document: sql.Composable = field(default_factory=lambda: DOCUMENT)

    def where(self, node: Node) -> sql.Composable:
        return self._node(node)

    def _node(self, node: Node) -> sql.Composable:
        if isinstance(node, And):
            if not node.parts:
                return TRUE
            return sql.SQL("({})").format(sql.SQL(" AND ").join(self._node(p) for p in node.parts))
        if isinstance(node, Or):
            return sql.SQL("({})").format(sql.SQL(" OR ").join(self._node(p) for p in node.parts))
        if isinstance(node, Not):
            inner = node.part
            if isinstance(inner, Cond) and inner.op == "eq" and isinstance(inner.value, bool):
                column = column_for(self.columns, inner.path)
                if column is not None and column.type == "boolean":
                    # IS NOT TRUE/FALSE: what the partial indexes are defined with.
                    return sql.SQL("({} IS NOT {})").format(
                        sql.Identifier(column.name), TRUE if inner.value else FALSE
                    )
            return sql.SQL("(NOT coalesce({}, false))").format(self._node(inner))
        return self._cond(node)

    def _cond(self, cond: Cond) -> sql.Composable:
        if cond.path == ("_id",):
            return _id_condition(cond)
        column = column_for(self.columns, cond.path)
        if column is not None:
            translated = _column_condition(column, cond)
            if translated is not None:
                return translated
        return document_condition(self.document, cond)

    def order_by(self, sort: Any) -> sql.Composable | None:
        """ORDER BY items for a pymongo-style sort (``None``: no order, as MongoDB's natural one).

        Missing values sort first ascending and last descending, as on MongoDB.
        """
        items: list[sql.Composable] = []
        for entry in sort or ():
            if not isinstance(entry, tuple | list) or len(entry) != 2:
                raise QueryError(f"sort entries are (path, 1 | -1) pairs, got {entry!r}")
            key, direction = entry
            if direction not in (1, -1) or isinstance(direction, bool):
                raise QueryError(f"sort direction for {key!r} must be 1 or -1, got {direction!r}")
            order = sql.SQL("ASC" if direction == 1 else "DESC")
            path = split_path(key)
            column = column_for(self.columns, path)
            if path == ("_id",):
                expr: sql.Composable = sql.Identifier("id")
            elif column is not None:
                expr = sql.Identifier(column.name)
            else:
                expr = sql.SQL("({} #> {})").format(self.document, sql.Literal(list(path)))
            if path == ("_id",) or (column is not None and column.not_null):
                items.append(sql.SQL("{} {}").format(expr, order))
            else:
                nulls = sql.SQL("NULLS FIRST" if direction == 1 else "NULLS LAST")
                items.append(sql.SQL("{} {} {}").format(expr, order, nulls))
        return sql.SQL(", ").join(items) if items else None


def row_id(value: Any) -> sql.Composable:
    """The ``id`` (uuid) of the row whose document has ``_id`` = ``value``.

    The same derivation as the extraction trigger's (``nvsentinel_document_uuid``:
    a UUID as itself, any other id through md5); an immutable function of a
    constant, so PostgreSQL folds it and the primary key serves the lookup.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise QueryError(f"_id values are strings, got {value!r}")
    return sql.SQL("nvsentinel_document_uuid({}::jsonb)").format(sql.Literal(json.dumps(value)))


def _id_condition(cond: Cond) -> sql.Composable:
    ident = sql.Identifier("id")
    if cond.op == "eq":
        return sql.SQL("({} = {})").format(ident, row_id(cond.value))
    if cond.op == "in":
        if not cond.value:
            return FALSE
        return sql.SQL("({} IN ({}))").format(
            ident, sql.SQL(", ").join(row_id(v) for v in cond.value)
        )
    if cond.op == "exists":
        return TRUE
    if cond.op in _SQL_OPS:
        return sql.SQL("({} {} {})").format(ident, sql.SQL(_SQL_OPS[cond.op]), row_id(cond.value))
    raise QueryError(f"unknown condition {cond.op!r}")


# -- change stream pushdown ---------------------------------------------------

EXACT: Final = "exact"
PARTIAL: Final = "partial"


@dataclass(frozen=True)
class Pushed:
    expr: sql.Composable
    kind: str  # EXACT or PARTIAL


EventFieldTranslator = Callable[[Cond], Pushed | None]


def changelog_translator(cond: Cond) -> Pushed | None:
    """Push a condition on a change event's field into the changelog query, if possible."""
    head, rest = cond.path[0], cond.path[1:]
    if cond.path == ("operationType",):
        return _column_pushdown("operation", cond)
    if cond.path == ("documentKey", "_id"):
        return _column_pushdown("document_id", cond)
    if head == "fullDocument" and rest:
        return Pushed(
            document_condition(sql.Identifier("document"), Cond(rest, cond.op, cond.value)), EXACT
        )
    if cond.path[:2] == ("updateDescription", "updatedFields") and len(cond.path) > 2:
        path = cond.path[2:]
        if (cond.op == "eq" and cond.value is None) or (
            cond.op == "in" and any(v is None for v in cond.value)
        ):
            return None  # null-or-missing also matches changes that did not touch the path
        changed = sql.SQL(
            "(operation IN ('update', 'replace')"
            " AND (document -> {}) IS DISTINCT FROM (document_before -> {}))"
        ).format(sql.Literal(path[0]), sql.Literal(path[0]))
        value = document_condition(sql.Identifier("document"), Cond(path, cond.op, cond.value))
        return Pushed(sql.SQL("({} AND {})").format(changed, value), PARTIAL)
    return None


def _column_pushdown(column: str, cond: Cond) -> Pushed | None:
    ident = sql.Identifier(column)
    if cond.op == "eq" and isinstance(cond.value, str):
        return Pushed(sql.SQL("({} = {})").format(ident, sql.Literal(cond.value)), EXACT)
    if cond.op == "in" and all(isinstance(v, str) for v in cond.value):
        return Pushed(sql.SQL("({} = ANY({}))").format(ident, sql.Literal(list(cond.value))), EXACT)
    return None


def pushdown(node: Node, translate: EventFieldTranslator = changelog_translator) -> sql.Composable:
    """A WHERE condition that keeps every change ``node`` may match (``true`` at worst)."""
    pushed = _push(node, translate)
    return pushed.expr if pushed is not None else TRUE


def _push(node: Node, translate: EventFieldTranslator) -> Pushed | None:
    if isinstance(node, Cond):
        return translate(node)
    if isinstance(node, And):
        parts = [p for p in (_push(child, translate) for child in node.parts) if p is not None]
        if not parts:
            return None
        exact = len(parts) == len(node.parts) and all(p.kind == EXACT for p in parts)
        expr = sql.SQL("({})").format(sql.SQL(" AND ").join(p.expr for p in parts))
        return Pushed(expr, EXACT if exact else PARTIAL)
    if isinstance(node, Or):
        pushed = [_push(child, translate) for child in node.parts]
        if any(p is None for p in pushed):
            return None
        kinds = {p.kind for p in pushed if p is not None}
        expr = sql.SQL("({})").format(sql.SQL(" OR ").join(p.expr for p in pushed if p is not None))
        return Pushed(expr, EXACT if kinds == {EXACT} else PARTIAL)
    inner = _push(node.part, translate)
    if inner is None or inner.kind != EXACT:
        return None
    return Pushed(sql.SQL("(NOT coalesce({}, false))").format(inner.expr), EXACT)
