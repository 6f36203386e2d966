"""Write throughput with pgbench: one statement per transaction, documents built by the server.

pgbench (PostgreSQL's C benchmark client, from the server's own binaries)
drives the writes so that the client costs almost nothing and the number is
the database's: 8 Python client processes on 2 cores would take a good part
of the CPU the server needs. It connects like the services: TCP to
127.0.0.1, TLS ``verify-full``, the application's client certificate.

The statements are NVSentinel's store-client's, so that they run unchanged on
NVSentinel's own schema and on ours. Two workloads (see :func:`scripts`):

- ``insert``: every transaction inserts one new health event, naming
  NVSentinel's columns (:data:`devsupport.documents_sql.NVSENTINEL_INSERT_COLUMNS`) as
  the platform connector's store-client does;
- ``mix``: half the transactions insert, half set the quarantine status of a
  random pre-filled event as ``UpdateNodeQuarantineStatus`` does
  (:func:`devsupport.documents_sql.quarantine_update_sql`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.server import BenchServer
from devsupport.documents_sql import (
    NVSENTINEL_INSERT_COLUMNS,
    nvsentinel_insert_values,
    quarantine_update_sql,
    sql_document,
)

WORKLOADS = ("insert", "mix")
_COLUMNS = ", ".join(NVSENTINEL_INSERT_COLUMNS)


@dataclass(frozen=True)
class PgbenchResult:
    transactions: int
    failed: int
    tps: float
    latency_ms: float


def prefilled_id(number_expr: str) -> str:
    """The row id of pre-filled event ``number_expr`` (an SQL expression): a UUID.

    The same on both schemas: :func:`prefill_events` gives the row this id
    explicitly and puts its text in the document's ``_id``, from which our
    extraction trigger takes the row id.
    """
    return f"md5('pre-' || ({number_expr})::text)::uuid"


def scripts(directory: Path, prefilled: int) -> dict[str, list[tuple[Path, int]]]:
    """pgbench script files (with weights) per workload, written to ``directory``.

    Every use of a variable has an explicit cast: pgbench runs
    ``--protocol=prepared`` and sends each use of a variable as an untyped
    parameter.
    """
    insert = directory / "insert.sql"
    insert.write_text(
        "\\set node random(0, 1999)\n"
        "\\set gpu random(0, 7)\n"
        f"INSERT INTO health_events ({_COLUMNS}) VALUES ("
        + nvsentinel_insert_values("gen_random_uuid()::text", ":node", ":gpu")
        + ");\n"
    )
    update = directory / "update_quarantine.sql"
    update.write_text(
        f"\\set k random(1, {prefilled})\n"
        "\\set s random(0, 3)\n" + quarantine_update_sql(prefilled_id(":k"), ":s") + ";\n"
    )
    return {"insert": [(insert, 1)], "mix": [(insert, 1), (update, 1)]}


def prefill_events(conninfo: str, count: int, batch: int = 1000) -> None:
    """``count`` events for the update workload, written as NVSentinel writes them.

    Event ``n`` (1 ... ``count``) has the row id :func:`prefilled_id` and the
    same UUID as its document's ``_id``; ``batch`` per transaction.
    """
    row_id = prefilled_id("g")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for low in range(1, count + 1, batch):
            high = min(low + batch - 1, count)
            conn.execute(
                f"INSERT INTO health_events (id, {_COLUMNS}) SELECT {row_id}, "
                + nvsentinel_insert_values(f"{row_id}::text", "g % 2000", "g % 8")
                + f" FROM generate_series({low:d}, {high:d}) AS g"
            )


def prefill(conninfo: str, count: int, batch: int = 1000) -> None:
    """``count`` events ``pre-1`` ... written as documents only, ``batch`` per transaction.

    For our schema only: our extraction trigger derives each row id from the
    ``_id`` (``nvsentinel_document_uuid``) and fills every column from the
    document.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for low in range(1, count + 1, batch):
            high = min(low + batch - 1, count)
            conn.execute(
                "INSERT INTO health_events (document) SELECT "
                + sql_document("'pre-' || g", "g % 2000", "g % 8")
                + f" FROM generate_series({low:d}, {high:d}) AS g"
            )


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


def pgbench(
    server: BenchServer,
    dbname: str,
    files: list[tuple[Path, int]],
    clients: int,
    seconds: float,
) -> PgbenchResult:
    """Run pgbench for ``seconds`` with ``clients`` connections; parse its summary."""
    threads = max(1, min(clients, os.cpu_count() or 1))
    command = [
        str(server.server.bindir / "pgbench"),
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        f"--jobs={threads}",
        f"--time={max(1, round(seconds))}",
    ]
    command += [f"--file={path}@{weight}" for path, weight in files]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(server.libpq_env(dbname))
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=seconds + 120
    )
    out = result.stdout
    tps, done = _TPS.search(out), _DONE.search(out)
    if result.returncode != 0 or tps is None or done is None:
        raise RuntimeError(f"pgbench exited {result.returncode}:\n{out}\n{result.stderr}".rstrip())
    failed = _FAILED.search(out)
    latency = _LATENCY.search(out)
    return PgbenchResult(
        transactions=int(done.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        tps=float(tps.group(1)),
        latency_ms=float(latency.group(1)) if latency else float("nan"),
    )
