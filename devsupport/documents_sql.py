"""The new health event of :mod:`devsupport.documents`, built by PostgreSQL.

An SQL ``format()`` template of the document, for the writers that build it
inside PostgreSQL (pgbench, bulk pre-fills), so that they store documents of
the same shape and size as the writers that send :func:`devsupport.documents.health_event`.
Also the statements NVSentinel's store-client runs on such an event.
"""

from __future__ import annotations

import json
import random
from typing import Any, Final

from devsupport.documents import (
    EPOCH,
    QUARANTINE_STATES,
    RECOMMENDED_ACTION_NAMES,
    health_event,
)

_MARKERS: Final = {
    "@ID@": "%1$s",
    "@NODE@": "%2$s",
    "@GPU@": "%3$s",
    "@SECONDS@": "%4$s",
    "@CREATED@": "%5$s",
    "@UUID@": "%6$s",
}


def _template_document() -> dict[str, Any]:
    """The document with markers for its variable parts (see :data:`_MARKERS`).

    Check-specific fields come from the check :func:`health_event` picks with
    seed 0 (the same one on every run); the variable parts (id, node, GPU,
    time, GPU UUID) become format arguments.
    """
    doc = health_event("@ID@", random.Random(0), EPOCH.timestamp())
    he = doc["healthevent"]
    doc["createdAt"] = "@CREATED@"
    he["generatedtimestamp"] = {"seconds": "@SECONDS@", "nanos": 0}
    he["nodename"] = "gpu-node-@NODE@"
    he["entitiesimpacted"][0]["entityvalue"] = "GPU-@UUID@"
    he["entitiesimpacted"][1]["entityvalue"] = "0000:@GPU@:00.0"
    he["metadata"]["idempotencyKey"] = f"gpu-node-@NODE@-@GPU@-{he['checkname']}-@ID@"
    he["metadata"]["gpuIndex"] = "@GPU@"
    return doc


def _sql_template(doc: dict[str, Any]) -> str:
    """The document as a ``format()`` template: %1$s id, %2$s node, %3$s gpu, ..."""
    text = json.dumps(doc, separators=(", ", ": ")).replace("%", "%%")
    text = text.replace('"@SECONDS@"', "@SECONDS@")
    for marker, arg in _MARKERS.items():
        text = text.replace(marker, arg)
    return text.replace("'", "''")


_TEMPLATE_DOCUMENT: Final = _template_document()
SQL_TEMPLATE: Final = _sql_template(_TEMPLATE_DOCUMENT)

#: The columns the benchmark's inserts name, as NVSentinel's store-client does
#: (``insertHealthEventRecord`` also names five status columns that are NULL for
#: a new event, as their defaults are).
NVSENTINEL_INSERT_COLUMNS: Final = (
    "node_name",
    "event_type",
    "severity",
    "recommended_action",
    "node_quarantined",
    "user_pods_eviction_status",
    "document",
)


def sql_document(id_expr: str, node_expr: str, gpu_expr: str) -> str:
    """An SQL expression of type jsonb: a new health event built from SQL expressions.

    ``id_expr``, ``node_expr`` and ``gpu_expr`` are SQL expressions (text,
    integer, integer); time and GPU UUID are taken from the server. The SQL
    has no colon before a letter, so pgbench does not read one as a variable.
    """
    return (
        f"format('{SQL_TEMPLATE}', {id_expr}, lpad(({node_expr})::text, 4, '0'), "
        f"({gpu_expr})::int, extract(epoch FROM now())::bigint, "
        "to_json(now()) #>> '{}', "
        "gen_random_uuid())::jsonb"
    )


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'::text"


def nvsentinel_insert_values(id_expr: str, node_expr: str, gpu_expr: str) -> str:
    """The values of :data:`NVSENTINEL_INSERT_COLUMNS` for the event ``sql_document`` builds.

    As NVSentinel's store-client fills them from the event: node name, check
    name (``event_type``), component class (``severity``), the recommended
    action's enum name; ``node_quarantined`` and ``user_pods_eviction_status``
    NULL, as it writes them for a new event whose status is still empty. A
    comma-separated list, for ``VALUES (...)`` or a ``SELECT``.
    """
    he = _TEMPLATE_DOCUMENT["healthevent"]
    return ", ".join(
        (
            f"'gpu-node-' || lpad(({node_expr})::text, 4, '0')",
            _sql_text(he["checkname"]),
            _sql_text(he["componentclass"]),
            _sql_text(RECOMMENDED_ACTION_NAMES[he["recommendedaction"]]),
            "NULL::text",
            "NULL::text",
            sql_document(id_expr, node_expr, gpu_expr),
        )
    )


def quarantine_update_sql(row_id_expr: str, state_index_expr: str) -> str:
    """An UPDATE that sets the quarantine status as NVSentinel's store-client does.

    NVSentinel's ``UpdateNodeQuarantineStatus`` (without its span id): the
    column ``node_quarantined`` and ``healtheventstatus.nodequarantined`` in the
    document, and ``updated_at``, of the row whose id is ``row_id_expr`` (an
    SQL uuid expression). ``state_index_expr`` (an integer 0-3) picks one of
    :data:`~devsupport.documents.QUARANTINE_STATES`. The state is a typed text
    expression, written out at each of its two uses: pgbench
    (``--protocol=prepared``) sends its variables as untyped parameters; an
    untyped parameter fails in ``to_jsonb`` (polymorphic), and one bound both to
    NVSentinel's VARCHAR column and to text fails with "inconsistent types
    deduced for parameter".
    """
    state = f"(ARRAY{list(QUARANTINE_STATES)!r}::text[])[({state_index_expr})::int + 1]"
    return (
        f"UPDATE health_events SET node_quarantined = {state}, "
        "document = jsonb_set(document, '{healtheventstatus,nodequarantined}', "
        f"to_jsonb({state})), updated_at = NOW() "
        f"WHERE id = {row_id_expr}"
    )
