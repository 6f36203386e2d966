"""Change events shaped like MongoDB's, and their ``$match`` filters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nvsentinel_store.errors import QueryError
from nvsentinel_store.query import (
    MATCH_ALL,
    And,
    Node,
    Path,
    lookup_exact,
    matches,
    parse_filter,
    resolve,
    update_description,
    updated_fields_resolver,
)
from nvsentinel_store.store import (
    ChangeEvent,
    Pipeline,
    ResumeToken,
)


def parse_pipeline(pipeline: Pipeline | None) -> Node:
    """The filter of a pipeline of ``$match`` stages (anything else is an error)."""
    if not pipeline:
        return MATCH_ALL
    if isinstance(pipeline, Mapping | str):
        raise QueryError("a pipeline is a list of stages, e.g. [{'$match': {...}}]")
    nodes: list[Node] = []
    for stage in pipeline:
        if not isinstance(stage, Mapping) or list(stage) != ["$match"]:
            raise QueryError(f"unsupported pipeline stage {stage!r}: only $match is supported")
        nodes.append(parse_filter(stage["$match"]))
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def event_matches(event: ChangeEvent, node: Node) -> bool:
    """The Python check of a change event against a ``$match`` filter."""
    description = event.get("updateDescription")
    updated = description.get("updatedFields", {}) if isinstance(description, dict) else {}
    in_updated = updated_fields_resolver(updated)

    def look(path: Path) -> tuple[list[Any], tuple[bool, Any]]:
        if path[:2] == ("updateDescription", "updatedFields") and len(path) > 2:
            result: tuple[list[Any], tuple[bool, Any]] = in_updated(path[2:])
            return result
        return resolve(event, path), lookup_exact(event, path)

    return matches(event, node, look)


def build_event(
    database: str,
    collection: str,
    token: ResumeToken,
    operation: str,
    document_id: str,
    version: int,
    document: Any,
    before: Any,
    changed_at: datetime,
) -> ChangeEvent:
    """A change event shaped like MongoDB's (plus ``documentVersion``)."""
    event: ChangeEvent = {
        "_id": token,
        "operationType": operation,
        "clusterTime": changed_at,
        "wallTime": changed_at,
        "ns": {"db": database, "coll": collection},
        "documentKey": {"_id": document_id},
        "documentVersion": version,
    }
    if operation != "delete":
        event["fullDocument"] = document
    if operation != "insert":
        event["fullDocumentBeforeChange"] = before
    if operation == "update":
        event["updateDescription"] = update_description(before, document)
    return event
