"""``--verify``: counts on both sides, and a sample of documents compared field by field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from psycopg import sql

from nvsentinel_store.migrate.importer import ID_TEXT, IDS_MATCH, Conn, count_rows
from nvsentinel_store.migrate.results import CollectionSummary, Mismatch, VerifyResult
from nvsentinel_store.migrate.sampler import Sampler
from nvsentinel_store.query import json_equal

#: Ids looked up in one query.
_ID_CHUNK: Final = 10_000
#: Missing ids listed in a result.
_MISSING_SHOWN: Final = 20


def differences(source: Any, target: Any, path: str = "") -> list[str]:
    """The paths where two JSON documents differ (``True`` is not ``1``; key order ignored)."""
    here = path or "(document)"
    if isinstance(source, dict) and isinstance(target, dict):
        out: list[str] = []
        for key in sorted(source.keys() | target.keys()):
            sub = f"{path}.{key}" if path else key
            if key not in target:
                out.append(f"{sub}: missing in PostgreSQL")
            elif key not in source:
                out.append(f"{sub}: only in PostgreSQL")
            else:
                out.extend(differences(source[key], target[key], sub))
        return out
    if isinstance(source, list) and isinstance(target, list) and len(source) == len(target):
        out = []
        for i, (a, b) in enumerate(zip(source, target, strict=True)):
            out.extend(differences(a, b, f"{path}[{i}]"))
        return out
    if json_equal(source, target):
        return []
    return [f"{here}: source {_short(source)} != PostgreSQL {_short(target)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def verify(
    conn: Conn,
    summary: CollectionSummary,
    ids: set[str],
    sampler: Sampler,
    source_counter: Callable[[], int] | None,
) -> VerifyResult:
    """Compare one collection's target with what was read: ``ids`` and ``sampler``'s sample.

    ``source_counter`` counts the source now (a live MongoDB); without it the
    documents read are the source's count.
    """
    collection = summary.collection
    table = sql.Identifier(collection)
    found = 0
    missing: list[str] = []
    id_list = sorted(ids)
    for start in range(0, len(id_list), _ID_CHUNK):
        chunk = id_list[start : start + _ID_CHUNK]
        rows = conn.execute(
            sql.SQL("SELECT " + ID_TEXT + " FROM {} WHERE " + IDS_MATCH).format(table), (chunk,)
        ).fetchall()
        held = {str(r[0]) for r in rows}
        found += len(held)
        if len(missing) < _MISSING_SHOWN:
            missing.extend(i for i in chunk if i not in held)
    stored: dict[str, Any] = {}
    sample_ids = [doc_id for doc_id, _ in sampler.items]
    if sample_ids:
        rows = conn.execute(
            sql.SQL("SELECT " + ID_TEXT + ", document FROM {} WHERE " + IDS_MATCH).format(table),
            (sample_ids,),
        ).fetchall()
        stored = {str(r[0]): r[1] for r in rows}
    target_count = count_rows(conn, collection)
    mismatches = []
    for doc_id, text in sampler.items:
        if doc_id not in stored:
            continue  # counted as missing above
        diff = differences(json.loads(text), stored[doc_id])
        if diff:
            mismatches.append(Mismatch(doc_id, tuple(diff)))
    source_count = summary.read if source_counter is None else source_counter()
    return VerifyResult(
        collection=collection,
        source_count=source_count,
        read=summary.read,
        rejected=summary.rejected,
        expected=len(ids),
        found=found,
        target_count=target_count,
        sampled=len(sampler.items),
        missing_ids=missing[:_MISSING_SHOWN],
        mismatches=mismatches,
    )
