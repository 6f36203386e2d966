"""Realistic health event documents (see the shapes in the shared documents description).

Two forms of the same document: a Python ``dict`` for the writers that go
through psycopg or the store client, and an SQL ``format()`` template for the
writers that build the document inside PostgreSQL (pgbench, bulk pre-fills),
so that every path stores documents of the same shape and size.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

#: (agent, component class, check name, is fatal, recommended action, error code, message)
CHECKS: Final = (
    ("gpu-health-monitor", "GPU", "GpuXidError", True, 24, "79", "XID 79: fallen off the bus"),
    ("gpu-health-monitor", "GPU", "GpuMemWatch", False, 2, "48", "DBE: double bit ECC error"),
    ("gpu-health-monitor", "NVSwitch", "NvSwitchFatalWatch", True, 5, "12028", "SXid 12028"),
    ("syslog-health-monitor", "Node", "SysLogsXIDError", False, 0, "13", "XID 13: graphics engine"),
)
QUARANTINE_STATES: Final = ("Quarantined", "AlreadyQuarantined", "UnQuarantined", "Cancelled")
NODES: Final = 2000
GPUS_PER_NODE: Final = 8


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def health_event(doc_id: str, rng: random.Random, now: float | None = None) -> dict[str, Any]:
    """A new health event as the platform connector stores it (status not set yet)."""
    now = time.time() if now is None else now
    agent, component, check, fatal, action, code, message = rng.choice(CHECKS)
    node = rng.randrange(NODES)
    gpu = rng.randrange(GPUS_PER_NODE)
    return {
        "_id": doc_id,
        "createdAt": _rfc3339(now),
        "healthevent": {
            "version": 1,
            "agent": agent,
            "componentclass": component,
            "checkname": check,
            "isfatal": fatal,
            "ishealthy": False,
            "message": message,
            "recommendedaction": action,
            "errorcode": [code],
            "entitiesimpacted": [
                {"entitytype": "GPU", "entityvalue": f"GPU-{uuid.UUID(int=rng.getrandbits(128))}"},
                {"entitytype": "PCI", "entityvalue": f"0000:{0x18 + gpu * 0x10:02x}:00.0"},
            ],
            "metadata": {
                "idempotencyKey": f"{node}-{gpu}-{check}-{int(now * 1000)}",
                "driverVersion": "550.54.15",
                "gpuIndex": str(gpu),
            },
            "generatedtimestamp": {"seconds": int(now), "nanos": int(now % 1 * 1e9)},
            "nodename": f"gpu-node-{node:04d}",
            "quarantineoverrides": {"force": False, "skip": False},
            "drainoverrides": {"force": False, "skip": False},
            "processingstrategy": 1,
        },
        "healtheventstatus": {
            "nodequarantined": "",
            "userpodsevictionstatus": {"status": "", "message": ""},
            "faultremediated": None,
            "lastremediationtimestamp": None,
        },
    }


# -- the same document built by PostgreSQL ------------------------------------------

_MARKERS: Final = {
    "@ID@": "%1$s",
    "@NODE@": "%2$s",
    "@GPU@": "%3$s",
    "@SECONDS@": "%4$s",
    "@CREATED@": "%5$s",
    "@UUID@": "%6$s",
}


def _sql_template() -> str:
    """The document as a ``format()`` template: %1$s id, %2$s node, %3$s gpu, ...

    Check-specific fields come from :data:`CHECKS` (the first one); the
    variable parts (id, node, GPU, time, GPU UUID) are format arguments.
    """
    doc = health_event("@ID@", random.Random(0), 0.0)
    he = doc["healthevent"]
    doc["createdAt"] = "@CREATED@"
    he["generatedtimestamp"] = {"seconds": "@SECONDS@", "nanos": 0}
    he["nodename"] = "gpu-node-@NODE@"
    he["entitiesimpacted"][0]["entityvalue"] = "GPU-@UUID@"
    he["entitiesimpacted"][1]["entityvalue"] = "0000:@GPU@:00.0"
    he["metadata"]["idempotencyKey"] = "@NODE@-@GPU@-@SECONDS@"
    he["metadata"]["gpuIndex"] = "@GPU@"
    text = json.dumps(doc, separators=(", ", ": ")).replace("%", "%%")
    text = text.replace('"@SECONDS@"', "@SECONDS@")
    for marker, arg in _MARKERS.items():
        text = text.replace(marker, arg)
    return text.replace("'", "''")


SQL_TEMPLATE: Final = _sql_template()


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


def quarantine_update_sql(id_expr: str, state_expr: str) -> str:
    """An UPDATE that sets ``healtheventstatus.nodequarantined`` as fault-quarantine does."""
    return (
        "UPDATE health_events SET document = jsonb_set(document, "
        "'{healtheventstatus,nodequarantined}', "
        f"to_jsonb((ARRAY{list(QUARANTINE_STATES)!r})[({state_expr})::int + 1])) "
        f"WHERE id = {id_expr}"
    )
