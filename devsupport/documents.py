"""Realistic NVSentinel documents, one definition for the tests and the benchmarks.

Documents follow the shapes in the shared documents description: health
events as the platform connector stores them, maintenance events as the CSP
health monitor stores them. Each is built once, with the BSON types MongoDB
holds (ObjectId or UUID-string ``_id``, dates, 64-bit integers), and
:func:`as_stored_json` turns it into what the PostgreSQL store holds.

- :func:`new_health_event`: an event as the platform connector inserts it
  (status not set yet, both overrides present and off); :func:`health_event`
  is the same in JSON types, for the benchmarks' writers that go through
  psycopg or the store client.
- :func:`exported_health_event`, :func:`maintenance_event`, :func:`documents`:
  what an export of a running system holds, events at every lifecycle stage
  and optional fields left out, for the migration tests and ``bench/migrate.py``.

The same new event as an SQL expression, for writers that build it inside
PostgreSQL, is in :mod:`devsupport.documents_sql`; the files ``mongoexport``
writes, in :mod:`devsupport.mongoexport`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bson.int64 import Int64
from bson.objectid import ObjectId


@dataclass(frozen=True)
class Check:
    """One health check a monitor reports, with what NVSentinel's event says of it."""

    agent: str
    component_class: str
    name: str
    fatal: bool
    recommended_action: int
    error_code: str
    message: str


CHECKS: Final = (
    Check(
        "gpu-health-monitor",
        "GPU",
        "GpuXidError",
        True,
        24,
        "79",
        "XID 79: GPU has fallen off the bus",
    ),
    Check("gpu-health-monitor", "GPU", "GpuMemWatch", False, 2, "48", "DBE: double bit ECC error"),
    Check("gpu-health-monitor", "NVSwitch", "NvSwitchFatalWatch", True, 5, "12028", "SXid 12028"),
    Check(
        "syslog-health-monitor",
        "Node",
        "SysLogsXIDError",
        False,
        0,
        "13",
        "XID 13: graphics engine",
    ),
    Check("csp-health-monitor", "Node", "CSPMaintenance", False, 15, "", "scheduled maintenance"),
)
#: NVSentinel's RecommendedAction names of the numbers in :data:`CHECKS`.
RECOMMENDED_ACTION_NAMES: Final = {
    0: "NONE",
    2: "COMPONENT_RESET",
    5: "CONTACT_SUPPORT",
    15: "RESTART_VM",
    24: "RESTART_BM",
}
QUARANTINE_STATES: Final = ("Quarantined", "AlreadyQuarantined", "UnQuarantined", "Cancelled")
EVICTION_STATES: Final = ("NotStarted", "InProgress", "Succeeded", "Failed")
MAINTENANCE_STATUSES: Final = (
    "DETECTED",
    "QUARANTINE_TRIGGERED",
    "MAINTENANCE_ONGOING",
    "MAINTENANCE_COMPLETE",
)
CSP_STATUSES: Final = ("PENDING", "ONGOING", "ACTIVE", "COMPLETED")
NODES: Final = 2000
GPUS_PER_NODE: Final = 8
#: When the exported history starts.
EPOCH: Final = datetime(2026, 3, 1, tzinfo=UTC)


def _ms(value: datetime) -> datetime:
    """BSON dates hold milliseconds."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _node_name(rng: random.Random) -> str:
    return f"gpu-node-{rng.randrange(NODES):04d}"


def _new_status() -> dict[str, Any]:
    """The status the platform connector writes: empty, nothing done yet."""
    return {
        "nodequarantined": "",
        "userpodsevictionstatus": {"status": "", "message": ""},
        "faultremediated": None,
        "lastremediationtimestamp": None,
    }


def new_health_event(doc_id: Any, rng: random.Random, created: datetime) -> dict[str, Any]:
    """A new health event as MongoDB holds it (BSON types), as the platform connector inserts it.

    ``doc_id`` is the ``_id`` (a string or an ObjectId), ``created`` the
    ``createdAt``; the monitor saw the event (``generatedtimestamp``) a little
    earlier. The status is not set yet.
    """
    check = rng.choice(CHECKS)
    node = _node_name(rng)
    gpu = rng.randrange(GPUS_PER_NODE)
    generated = created - timedelta(milliseconds=rng.randrange(50, 5000))
    return {
        "_id": doc_id,
        "createdAt": created,
        "healthevent": {
            "version": 1,
            "agent": check.agent,
            "componentclass": check.component_class,
            "checkname": check.name,
            "isfatal": check.fatal,
            "ishealthy": False,
            "message": check.message,
            "recommendedaction": check.recommended_action,
            "errorcode": [check.error_code] if check.error_code else [],
            "entitiesimpacted": [
                {"entitytype": "GPU", "entityvalue": f"GPU-{uuid.UUID(int=rng.getrandbits(128))}"},
                {"entitytype": "PCI", "entityvalue": f"0000:{0x18 + gpu * 0x10:02x}:00.0"},
            ],
            "metadata": {
                # Unique per event, as the platform connector's keys are: NVSentinel's
                # schema refuses a second event with the same key.
                "idempotencyKey": f"{node}-{gpu}-{check.name}-{doc_id}",
                "driverVersion": "550.54.15",
                "gpuIndex": str(gpu),
            },
            "generatedtimestamp": {
                "seconds": Int64(int(generated.timestamp())),
                "nanos": generated.microsecond * 1000,
            },
            "nodename": node,
            "quarantineoverrides": {"force": False, "skip": False},
            "drainoverrides": {"force": False, "skip": False},
            "processingstrategy": 1,
        },
        "healtheventstatus": _new_status(),
    }


def health_event(doc_id: str, rng: random.Random, now: float | None = None) -> dict[str, Any]:
    """:func:`new_health_event` in JSON types (as PostgreSQL stores it), created ``now``."""
    created = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    document: dict[str, Any] = as_stored_json(new_health_event(doc_id, rng, created))
    return document


def _leave_out_or_set_overrides(event: dict[str, Any], rng: random.Random) -> None:
    """The overrides are optional: some events skip quarantine, many carry none."""
    draw = rng.random()
    if draw < 0.1:
        event["quarantineoverrides"] = {"force": False, "skip": True}
    elif draw < 0.55:
        del event["quarantineoverrides"], event["drainoverrides"]


def _status_at_stage(rng: random.Random, stage: int, created: datetime) -> dict[str, Any]:
    """The status after ``stage`` of quarantine (1), drain (2) and remediation (3).

    Stage 0 holds null, not the empty string, for the quarantine: older writers
    stored it so.
    """
    status = _new_status()
    status["nodequarantined"] = rng.choice(QUARANTINE_STATES) if stage >= 1 else None
    if stage >= 2:
        status["userpodsevictionstatus"] = {"status": rng.choice(EVICTION_STATES), "message": ""}
    if stage >= 3:
        status["faultremediated"] = rng.random() < 0.8
        status["lastremediationtimestamp"] = _ms(created + timedelta(minutes=rng.randrange(1, 90)))
    return status


def exported_health_event(rng: random.Random, index: int) -> dict[str, Any]:
    """The ``index``-th health event of an export (BSON types), at some stage of its lifecycle."""
    created = _ms(EPOCH + timedelta(seconds=index * 7 + rng.random()))
    # Older events carry ObjectIds, newer ones the UUID strings the services write.
    doc_id: Any = ObjectId() if index % 3 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
    document = new_health_event(doc_id, rng, created)
    _leave_out_or_set_overrides(document["healthevent"], rng)
    document["healtheventstatus"] = _status_at_stage(rng, rng.randrange(4), created)
    return document


def maintenance_event(rng: random.Random, index: int) -> dict[str, Any]:
    """A CSP maintenance event as MongoDB holds it (camelCase fields, explicit tags)."""
    received = _ms(EPOCH + timedelta(minutes=index * 3 + rng.random()))
    start = received + timedelta(hours=rng.randrange(1, 48))
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "eventId": f"maint-{index:07d}-{rng.getrandbits(32):08x}",
        "csp": rng.choice(("gcp", "aws", "oci")),
        "clusterName": rng.choice(("train-a", "train-b", "infer-1")),
        "resourceType": "compute#instance",
        "resourceId": f"projects/p/zones/z/instances/i-{rng.getrandbits(40):010x}",
        "maintenanceType": rng.choice(("SCHEDULED", "UNSCHEDULED")),
        "status": rng.choice(MAINTENANCE_STATUSES),
        "cspStatus": rng.choice(CSP_STATUSES),
        "scheduledStartTime": start,
        "scheduledEndTime": start + timedelta(hours=2),
        "eventReceivedTimestamp": received,
        "lastUpdatedTimestamp": received + timedelta(minutes=5),
        "recommendedAction": "RESTART_VM",
        "metadata": {"source": "cloud-maintenance-api"},
        "nodeName": _node_name(rng),
    }
    if document["status"] == "MAINTENANCE_COMPLETE":
        document["actualStartTime"] = start + timedelta(minutes=3)
        document["actualEndTime"] = start + timedelta(minutes=95)
    return document


def documents(collection: str, count: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``count`` documents of ``collection`` as an export holds them; the same for a ``seed``.

    Only the ObjectIds differ between runs.
    """
    rng = random.Random(seed)
    make = exported_health_event if collection == "health_events" else maintenance_event
    for index in range(count):
        yield make(rng, index)


def as_stored_json(value: Any) -> Any:
    """The JSON the PostgreSQL store holds for a BSON value of these documents.

    Written here independently of the importer, so that the migration tests
    check it: ObjectId as hex, dates as RFC 3339 UTC with microseconds, 64-bit
    integers as JSON integers.
    """
    if isinstance(value, dict):
        return {k: as_stored_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_stored_json(v) for v in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, Int64):
        return int(value)
    return value
