"""``nvsentinel-store`` as an operator runs it: watch, health, prune, errors and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest

from devsupport.postgres import MIGRATION_USER, PostgresDatabase
from nvsentinel_store import cli
from nvsentinel_store.providers.postgresql.migrations import load_migrations
from nvsentinel_store.providers.postgresql.provider import PRUNER_ROLE, PostgresStore
from tests.datastore.test_prune_limits import backdate, ensure_pruner

pytestmark = pytest.mark.datastore

#: The schema version the chart's migration files bring a database to.
LATEST = load_migrations()[-1].version

BATCH = 25


def cli_env(database: PostgresDatabase, user: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATASTORE_"))}
    env.update(database.datastore_env(**({"user": user} if user else {})))
    return env


def watch_process(database: PostgresDatabase, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nvsentinel_store.cli", "watch", *args],
        env=cli_env(database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    database: PostgresDatabase, *args: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli_with_env(cli_env(database, user), *args)


def run_cli_with_env(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvsentinel_store.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def health_table(stdout: str) -> dict[str, tuple[str, str]]:
    """The check table of ``health``: name -> (status, detail), columns split on 2+ spaces."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"], stdout
    detail_at = lines[0].index("DETAIL")
    status_at = lines[0].index("STATUS")
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        rows[line[:status_at].strip()] = (line[status_at:detail_at].strip(), line[detail_at:])
    return rows


def ids_of(lines: list[str]) -> list[str]:
    return [json.loads(line)["documentKey"]["_id"] for line in lines if line.strip()]


def test_watch_resumes_after_kill_without_loss(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    events = store.collection("health_events")
    written = [events.insert_one({"healthevent": {"nodename": f"n{n}"}}) for n in range(300)]
    watcher = watch_process(
        schema_database,
        "--collection=health_events",
        "--client-name=kill-test",
        "--from-beginning",
        f"--batch-size={BATCH}",
        "--idle-exit=30",
    )
    assert watcher.stdout is not None

    def keep_writing() -> None:
        for n in range(200):
            written.append(events.insert_one({"healthevent": {"nodename": f"m{n}"}}))

    writer = threading.Thread(target=keep_writing)
    writer.start()
    first_run = [watcher.stdout.readline() for _ in range(120)]
    watcher.send_signal(signal.SIGKILL)
    watcher.wait(timeout=30)
    first_run += watcher.stdout.readlines()  # whatever reached the pipe before the kill
    writer.join(timeout=120)
    assert watcher.returncode == -signal.SIGKILL

    second = run_cli(
        schema_database,
        "watch",
        "--collection=health_events",
        "--client-name=kill-test",
        f"--batch-size={BATCH}",
        "--idle-exit=1.5",
    )
    assert second.returncode == 0, second.stderr
    first_ids, second_ids = ids_of(first_run), ids_of(second.stdout.splitlines())
    assert len(first_ids) >= 120 and second_ids  # killed mid-stream
    assert Counter(first_ids + second_ids).keys() == set(written)  # nothing lost
    assert len(set(first_ids)) == len(first_ids) and len(set(second_ids)) == len(second_ids)
    again = set(first_ids) & set(second_ids)
    assert len(again) <= BATCH  # at most the batch printed but not yet recorded


def test_watch_without_token_starts_now_and_registers_the_consumer(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    events = store.collection("health_events")
    events.insert_one({"healthevent": {"nodename": "old"}})
    first = run_cli(
        schema_database, "watch", "--collection=health_events", "--client-name=c", "--idle-exit=0.5"
    )
    assert (first.returncode, first.stdout) == (0, "")
    new = events.insert_one({"healthevent": {"nodename": "new"}})
    second = run_cli(
        schema_database,
        "watch",
        "--collection=health_events",
        "--client-name=c",
        "--idle-exit=1",
        "--max-events=5",
    )
    assert second.returncode == 0, second.stderr
    assert ids_of(second.stdout.splitlines()) == [new]


def test_watch_max_events_and_match_filter(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    events = store.collection("health_events")
    for n in range(6):
        events.insert_one({"healthevent": {"nodename": f"n{n}", "isfatal": n % 2 == 0}})
    result = run_cli(
        schema_database,
        "watch",
        "--collection=health_events",
        "--client-name=f",
        "--from-beginning",
        "--match",
        '{"fullDocument.healthevent.isfatal": true}',
        "--max-events=2",
        "--idle-exit=5",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["fullDocument"]["healthevent"]["nodename"] for e in lines] == ["n0", "n2"]


def test_watch_of_an_expired_consumer_exits_with_history_lost(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    events = store.collection("health_events")
    stream = events.watch(client_name="gone")
    stream.save_token()
    stream.close()
    events.insert_one({"healthevent": {"nodename": "n"}})
    backdate(schema_database, consumers="gone")  # two hours pass
    ensure_pruner(schema_database)
    prune = run_cli(schema_database, "prune", "--max-age=1h", user=PRUNER_ROLE)
    assert prune.returncode == 0, prune.stderr
    assert (
        "health_events: deleted 1 change(s) in 1 transaction(s), expired 1 consumer(s)"
        in prune.stdout
    )

    lost = run_cli(
        schema_database,
        "watch",
        "--collection=health_events",
        "--client-name=gone",
        "--idle-exit=1",
    )
    assert lost.returncode == cli.EXIT_HISTORY_LOST
    assert "history lost (code 286)" in lost.stderr
    assert len(lost.stderr.strip().splitlines()) == 1

    reset = run_cli(
        schema_database,
        "watch",
        "--collection=health_events",
        "--client-name=gone",
        "--reset-token",
        "--idle-exit=0.5",
    )
    assert reset.returncode == 0, reset.stderr


def test_health_reports_a_healthy_datastore(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    stream = store.collection("health_events").watch(client_name="fault-quarantine")
    stream.save_token()
    store.collection("health_events").insert_one({"healthevent": {"nodename": "n"}})
    result = run_cli(schema_database, "health", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["healthy"] is True
    assert checks["tls"]["ok"] and checks["tls"]["detail"].startswith("TLSv1.")
    assert checks["schema"]["detail"].startswith(f"version {LATEST}")
    assert checks["nvsentinel-schema"]["ok"]
    assert checks["nvsentinel-schema"]["detail"].startswith("version 3 ")
    assert checks["triggers"]["detail"] == "6 present and enabled"
    assert report["changelog_rows"] == 1
    assert [(c["client_name"], c["pending_changes"]) for c in report["consumers"]] == [
        ("fault-quarantine", 1)
    ]
    assert report["consumers"][0]["lag_seconds"] >= 0


def test_health_prints_an_aligned_table_for_people(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    stream = store.collection("health_events").watch(client_name="fault-quarantine")
    stream.save_token()
    store.collection("health_events").insert_one({"healthevent": {"nodename": "n"}})
    result = run_cli(schema_database, "health")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = health_table(result.stdout)
    assert list(checks) == [
        "connection",
        "tls",
        "schema",
        "nvsentinel-schema",
        "triggers",
        "epoch",
        "changelog",
        "delivery",
    ]
    assert all(status == "ok" for status, _ in checks.values())
    assert checks["triggers"][1] == "6 present and enabled"
    blocks = result.stdout.split("\n\n")
    consumers = blocks[1].splitlines()
    assert consumers[0].split() == [
        "CONSUMER",
        "OWNER",
        "COLLECTION",
        "PENDING",
        "LAG",
        "STATE",
        "LAST",
        "STORED",
    ]
    assert consumers[1].split()[:4] == ["fault-quarantine", "nvsentinel", "health_events", "1"]
    # Aligned: every row of a table starts its columns at the header's offsets.
    pending_at = consumers[0].index("PENDING")
    assert consumers[1][pending_at:].startswith("1 ")
    assert result.stdout.rstrip().endswith("healthy")


def test_health_fails_when_a_trigger_is_missing(
    schema_database: PostgresDatabase,
) -> None:
    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        conn.execute("DROP TRIGGER health_events_changes ON health_events")
    result = run_cli(schema_database, "health")
    assert result.returncode == cli.EXIT_UNHEALTHY
    checks = health_table(result.stdout)
    assert checks["triggers"] == ("FAIL", "missing: health_events.health_events_changes")
    assert result.stdout.rstrip().endswith("UNHEALTHY")


def test_health_fails_before_the_schema_is_applied(postgres_database: PostgresDatabase) -> None:
    result = run_cli(postgres_database, "health")
    assert result.returncode == cli.EXIT_UNHEALTHY
    assert health_table(result.stdout)["schema"][0] == "FAIL"
    as_json = run_cli(postgres_database, "health", "--json")
    assert as_json.returncode == cli.EXIT_UNHEALTHY
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False
    assert {c["name"]: c["ok"] for c in report["checks"]}["schema"] is False


def test_unreachable_datastore_is_one_line_and_exit_4(postgres_database: PostgresDatabase) -> None:
    env = cli_env(postgres_database)
    env["DATASTORE_PORT"] = "1"
    result = run_cli_with_env(env, "health", timeout=60)
    assert result.returncode == cli.EXIT_UNAVAILABLE
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot connect to localhost:1" in result.stderr
    as_json = run_cli_with_env(env, "health", "--json", timeout=60)
    assert as_json.returncode == cli.EXIT_UNAVAILABLE
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False
    assert report["checks"][0]["name"] == "connection" and not report["checks"][0]["ok"]
    assert report["consumers"] == []


def test_bad_configuration_is_one_line_and_exit_2(postgres_database: PostgresDatabase) -> None:
    env = cli_env(postgres_database)
    env["DATASTORE_SSLMODE"] = "prefer"
    result = run_cli_with_env(env, "health", timeout=60)
    assert result.returncode == cli.EXIT_USAGE
    assert "DATASTORE_SSLMODE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_health_without_migration_files_reports_the_recorded_version(
    schema_database: PostgresDatabase, tmp_path: Any
) -> None:
    """An installed client (no chart files next to it) still checks the schema it finds."""
    env = cli_env(schema_database)
    env["NVSENTINEL_MIGRATIONS_DIR"] = str(tmp_path / "absent")
    result = run_cli_with_env(env, "health", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    status, detail = health_table(result.stdout)["schema"]
    assert status == "ok"
    assert detail.startswith(f"version {LATEST} (not compared with files")


# -- usage errors of watch: refused while parsing, before any connection -------------


def watch_usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``watch ARGS`` in-process: must exit 2 (usage) while parsing; returns stderr."""
    with pytest.raises(SystemExit) as info:
        cli.main(["watch", "--collection=health_events", "--client-name=c", *args], env={})
    assert info.value.code == cli.EXIT_USAGE
    return capsys.readouterr().err


def nested(depth: int) -> str:
    """A $match filter whose objects and arrays nest ``depth`` levels ($and inside $and)."""
    assert depth % 2 == 1
    levels = (depth - 1) // 2
    return '{"$and":[' * levels + '{"a":1}' + "]}" * levels


@pytest.mark.parametrize("depth", [101, 100_001])
def test_watch_match_nested_deeper_than_the_limit_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    err = watch_usage_error(capsys, "--match", nested(depth))
    assert "at most 100 levels deep" in err
    assert "Traceback" not in err and "RecursionError" not in err


def test_watch_match_at_the_nesting_limit_is_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for match in (nested(99), '{"a":' * 100 + "1" + "}" * 100):
        args = cli.build_parser().parse_args(
            ["watch", "--collection=health_events", "--client-name=c", "--match", match]
        )
        assert args.match == json.loads(match)
    err = watch_usage_error(capsys, "--match", '{"a":' * 101 + "1" + "}" * 101)
    assert "at most 100 levels deep" in err
    brackets_in_strings = '{"a": "' + "[{" * 500 + '"}'
    args = cli.build_parser().parse_args(
        ["watch", "--collection=health_events", "--client-name=c", "--match", brackets_in_strings]
    )
    assert args.match == {"a": "[{" * 500}


@pytest.mark.parametrize(
    "match",
    [
        '{"fullDocument.healthevent.nodename": "n\\u00001"}',
        '{"fullDocument.healthevent.nodename": {"$in": ["n1", "\\u0000"]}}',
        '{"fullDocument.healthevent.node\\u0000name": "n1"}',
    ],
)
def test_watch_match_with_a_nul_character_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], match: str
) -> None:
    err = watch_usage_error(capsys, "--match", match)
    assert "NUL character" in err


@pytest.mark.parametrize("port", ["65536", "99999", "-1", "abc", "9_090", "+9090", " 9090"])
def test_watch_metrics_port_out_of_range_or_not_digits_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], port: str
) -> None:
    err = watch_usage_error(capsys, f"--metrics-port={port}")
    assert f"{port!r} is not a port; expected 1 to 65535" in err


@pytest.mark.parametrize("port", ["0", "1", "9090", "65535"])
def test_watch_metrics_port_in_range_is_accepted(port: str) -> None:
    args = cli.build_parser().parse_args(
        ["watch", "--collection=health_events", "--client-name=c", f"--metrics-port={port}"]
    )
    assert args.metrics_port == int(port)
