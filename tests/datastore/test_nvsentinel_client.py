"""NVSentinel's own Go store client against our PostgreSQL: every service operation, one test each.

``.bin/nvsentinel-client-check`` (tests/nvsentinel_client, built by
hack/build-nvsentinel-client.sh from ``make setup`` against a snapshot of
NVSentinel's Go modules) runs the operations NVSentinel's services perform:
the provider start with its schema-version wait, the platform connector's
inserts and idempotent resends, the status writes of fault-quarantine,
node-drainer and fault-remediation, their finds and the analyzer's
aggregation, the maintenance event store, and HYBRID change streams with
resume tokens. It runs once for this module, as a service would: the
``DATASTORE_*`` variables, user ``nvsentinel``, its client certificate and
``verify-full``. Each case it reports is one test here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devsupport.nvsentinel import apply_nvsentinel_migrations
from devsupport.postgres import APP_GROUP, APP_USER, PostgresDatabase, PostgresServer
from tests.datastore.conftest import apply_schema

pytestmark = pytest.mark.datastore

REPO = Path(__file__).resolve().parents[2]
BINARY = REPO / ".bin" / "nvsentinel-client-check"
MISSING_BINARY = (
    f"{BINARY.relative_to(REPO)} is missing: run `make setup` "
    "(hack/build-nvsentinel-client.sh builds it)"
)
#: The whole run: the cases take seconds, one waits for the 30 s fallback poll.
RUN_TIMEOUT_S = 300
#: The parameter used when no case names can be listed, so the failure is reported.
UNLISTED = "binary-unavailable"

#: What the application role needs on NVSentinel's own schema, which grants nothing.
APP_GRANTS = (
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_GROUP}; "
    f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_GROUP};"
)

#: Cases that fail because of NVSentinel's own client code, whatever the schema
#: (they fail the same way on NVSentinel's own schema). For these the test
#: asserts that our database behaves exactly as NVSentinel's: the same failure
#: on both, never a new one. Each reason says where NVSentinel's code goes wrong.
NVSENTINEL_BUGS: dict[str, str] = {
    "health_events_analyzer_pipeline_with_its_base_filter_matches": (
        "the analyzer's base stage filters on healthevent.processingstrategy (lower case), "
        "while the documents NVSentinel writes carry processingStrategy; no key mapping exists"
    ),
    "maintenance_event_latest_ongoing_by_node": (
        "FindLatestOngoingEventByNode passes an empty maintenance type to the lookup"
    ),
    "change_stream_restart_delivers_backlog_before_next_live_write": (
        "the HYBRID watcher does not fetch at start: a live NOTIFY moves its position past "
        "the changes written while it was stopped"
    ),
}


def list_cases() -> tuple[list[str], str | None]:
    """The binary's case names, or a placeholder and the reason there are none."""
    if not BINARY.exists():
        return [UNLISTED], MISSING_BINARY
    listed = subprocess.run(
        [str(BINARY), "list"], capture_output=True, text=True, timeout=60, check=False
    )
    names = listed.stdout.split()
    if listed.returncode != 0 or not names:
        return [UNLISTED], f"`{BINARY} list` exited {listed.returncode}: {listed.stderr.strip()}"
    return names, None


CASES, LIST_PROBLEM = list_cases()


def scratch_database(server: PostgresServer, purpose: str) -> PostgresDatabase:
    server.ensure_running()
    return PostgresDatabase(
        server=server, name=server.create_database(f"t_{purpose}_{uuid.uuid4().hex[:8]}")
    )


@pytest.fixture(scope="module")
def our_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A database set up as the chart's schema Job does: bootstrap, then our migrations."""
    database = scratch_database(postgres_server, "nvsentinel_client")
    try:
        apply_schema(database)
        yield database
    finally:
        postgres_server.ensure_running()
        postgres_server.drop_database(database.name)


@pytest.fixture(scope="module")
def nvsentinel_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """NVSentinel's own schema: its migrations 00001-00003, as NVSentinel documents it.

    Applied with psql and ``ON_ERROR_STOP`` by a DDL-capable role (the
    migration role), then the grants the application role needs.
    """
    database = scratch_database(postgres_server, "nvsentinel_own_schema")
    try:
        apply_nvsentinel_migrations(database)
        postgres_server.psql(APP_GRANTS, dbname=database.name)
        yield database
    finally:
        postgres_server.ensure_running()
        postgres_server.drop_database(database.name)


@dataclass
class ClientRun:
    """The reported results by case, and why results may be missing."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None


def service_env(database: PostgresDatabase) -> dict[str, str]:
    """The environment of an NVSentinel service: DATASTORE_* as the chart's ConfigMap sets them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATASTORE_", "MONGODB_", "POSTGRESQL_"))
    }
    env.update(database.datastore_env(user=APP_USER))
    cert = database.server.client_cert(APP_USER)
    env.update(
        DATASTORE_SSLCERT=str(cert.cert),
        DATASTORE_SSLKEY=str(cert.key),
        DATASTORE_SSLROOTCERT=str(cert.ca),
    )
    return env


def run_client(database: PostgresDatabase, cases: list[str]) -> ClientRun:
    try:
        proc = subprocess.run(
            [str(BINARY), "run", "--cases", ",".join(cases)],
            env=service_env(database),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        return ClientRun(problem=f"`{BINARY} run` did not finish in {RUN_TIMEOUT_S}s: {err}")
    run = ClientRun()
    stray: list[str] = []
    for line in proc.stdout.splitlines():
        try:
            result = json.loads(line)
            run.results[result["case"]] = result
        except (ValueError, KeyError, TypeError):
            stray.append(line)
    if proc.returncode != 0 or stray:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        run.problem = (
            f"`{BINARY} run` exited {proc.returncode} without reporting this case; "
            f"stdout lines that are not results: {stray[:5]}; stderr:\n{tail}"
        )
    return run


def selected_cases(request: pytest.FixtureRequest) -> list[str]:
    """The cases of this module's tests that pytest will run (all of them unless -k narrows it)."""
    return [
        str(item.callspec.params["case"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is request.module
        and hasattr(item, "callspec")
    ]


@pytest.fixture(scope="module")
def client_run(request: pytest.FixtureRequest) -> ClientRun:
    """One run of the selected cases on our schema (made only when there is a binary to run)."""
    if LIST_PROBLEM is not None:
        return ClientRun(problem=LIST_PROBLEM)
    database: PostgresDatabase = request.getfixturevalue("our_database")
    return run_client(database, selected_cases(request))


@pytest.fixture(scope="module")
def nvsentinel_schema_run(request: pytest.FixtureRequest) -> ClientRun:
    """The NVSentinel-bug cases once more, on NVSentinel's own schema, for comparison."""
    if LIST_PROBLEM is not None:
        return ClientRun(problem=LIST_PROBLEM)
    database: PostgresDatabase = request.getfixturevalue("nvsentinel_database")
    cases = [c for c in selected_cases(request) if c in NVSENTINEL_BUGS]
    return run_client(database, cases) if cases else ClientRun()


def reported(run: ClientRun, case: str) -> dict[str, Any]:
    result = run.results.get(case)
    if result is None:
        pytest.fail(run.problem or f"{case}: the run reported no result", pytrace=False)
    return result


def without_ids(detail: str) -> str:
    """A failure text with the run's ids, names and counters masked, to compare two runs."""
    return re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\bnvs-check-[0-9a-f]{8}|\d+", "#", detail)


@pytest.mark.parametrize("case", CASES)
def test_nvsentinel_go_client_operation_succeeds(case: str, request: pytest.FixtureRequest) -> None:
    result = reported(request.getfixturevalue("client_run"), case)
    if case in NVSENTINEL_BUGS:
        theirs = reported(request.getfixturevalue("nvsentinel_schema_run"), case)
        assert not theirs["ok"], (
            f"{case} passes on NVSentinel's schema: drop it from NVSENTINEL_BUGS"
        )
        assert (result["ok"], without_ids(result["detail"])) == (
            False,
            without_ids(theirs["detail"]),
        ), (
            f"{case}: NVSentinel's code fails here ({NVSENTINEL_BUGS[case]}); "
            "on our schema it must fail the same way, not differently"
        )
        return
    if not result["ok"]:
        pytest.fail(f"{case} ({result['seconds']}s): {result['detail']}", pytrace=False)
