"""``nvsentinel-store migrate`` when a run fails partway, and when its arguments are wrong.

A source that cannot be read to its end (a truncated gzip file, a parser
process that dies, a MongoDB failing mid-read) is a run-time failure:
:class:`~nvsentinel_store.errors.ImportFailedError`, exit 5, with the file or
collection and the reason. The batches imported before it stay. A bad
argument or setting stays a usage error, exit 2.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pymongo.errors import AutoReconnect, OperationFailure, PyMongoError

from devsupport.documents import documents
from devsupport.mongoexport import export_line
from devsupport.postgres import MIGRATION_USER, PostgresDatabase
from nvsentinel_store import cli, migrate
from nvsentinel_store.errors import ImportFailedError, StoreUnavailableError
from nvsentinel_store.migrate import parser
from nvsentinel_store.migrate.sources import mongo_reader
from tests.datastore.test_migrate import run, stored

pytestmark = pytest.mark.datastore


def truncated_gzip_export(directory: Path, count: int) -> Path:
    """``health_events.json.gz`` of ``count`` documents, cut off in the middle of its stream."""
    text = "".join(export_line(d) + "\n" for d in documents("health_events", count, seed=41))
    data = gzip.compress(text.encode())
    path = directory / "health_events.json.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_export_file_exits_with_the_runtime_code_and_names_the_file(
    schema_database: PostgresDatabase, tmp_path: Path
) -> None:
    path = truncated_gzip_export(tmp_path, 300)

    code, out, err = run(schema_database, "--from-files", str(path), "--batch-size", "20")

    assert code == cli.EXIT_STORE_ERROR == 5, out + err
    assert f"nvsentinel-store: import failed: {path}: cannot read the file past line" in err
    assert "Compressed file ended before the end-of-stream marker" in err
    # The batches read before the damage were committed; a second run recognises them.
    assert len(stored(schema_database, "health_events")) >= 20


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "parser-process"])
def test_a_truncated_export_file_raises_import_failed_in_either_reader(
    schema_database: PostgresDatabase, tmp_path: Path, in_child: bool
) -> None:
    path = truncated_gzip_export(tmp_path, 300)
    options = migrate.MigrateOptions(batch_size=20, subprocess_min_bytes=0 if in_child else None)

    with (
        psycopg.connect(schema_database.conninfo(user=MIGRATION_USER)) as conn,
        pytest.raises(ImportFailedError, match="cannot read the file past line") as info,
    ):
        migrate.migrate(conn, migrate.file_sources([path], ["health_events"]), options)

    assert str(info.value).startswith(f"{path}: ")


def test_a_parser_process_that_dies_is_an_import_failure_quoting_its_stderr(
    schema_database: PostgresDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "health_events.json"
    path.write_text("".join(export_line(d) + "\n" for d in documents("health_events", 5)))
    monkeypatch.setattr(
        parser, "_CHILD_CODE", "import sys; sys.stderr.write('parser killed\\n'); sys.exit(9)"
    )
    options = migrate.MigrateOptions(subprocess_min_bytes=0)

    with (
        psycopg.connect(schema_database.conninfo(user=MIGRATION_USER)) as conn,
        pytest.raises(ImportFailedError) as info,
    ):
        migrate.migrate(conn, migrate.file_sources([path], ["health_events"]), options)

    assert str(info.value) == (f"{path}: the parser process ended early (exit 9): parser killed")


class _FailingCollection:
    """A pymongo collection stand-in whose cursor fails after its first document."""

    name = "health_events"

    def __init__(self, error: PyMongoError) -> None:
        self.error = error

    def find(self, *args: Any, **kwargs: Any) -> _FailingCollection:
        return self

    def sort(self, *args: Any) -> Iterator[dict[str, Any]]:
        yield {"_id": "first", "healthevent": {"nodename": "n1"}}
        raise self.error


def test_a_mongodb_source_failing_mid_read_is_an_import_failure() -> None:
    records = mongo_reader(_FailingCollection(OperationFailure("cursor id 7 not found")), 10)
    with pytest.raises(ImportFailedError) as info:
        list(records())
    assert "the MongoDB source failed while reading health_events" in str(info.value)
    assert "cursor id 7 not found" in str(info.value)


def test_a_mongodb_source_lost_mid_read_is_unavailable() -> None:
    records = mongo_reader(_FailingCollection(AutoReconnect("connection reset")), 10)
    with pytest.raises(StoreUnavailableError, match="lost while reading health_events"):
        list(records())


def test_a_bad_argument_still_exits_with_the_usage_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["migrate", "--from-files", str(tmp_path), "--batch-size", "0"], env={})
    assert info.value.code == cli.EXIT_USAGE == 2
    assert "--batch-size: '0' is not a positive integer" in capsys.readouterr().err


def test_a_missing_export_path_still_exits_with_the_usage_code(
    schema_database: PostgresDatabase, tmp_path: Path
) -> None:
    missing = tmp_path / "health_events.json"

    code, out, err = run(schema_database, "--from-files", str(missing))

    assert code == cli.EXIT_USAGE, out + err
    assert f"nvsentinel-store: {missing} does not exist" in err
