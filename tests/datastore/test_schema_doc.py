"""hack/gen-schema-doc.sh: docs/postgresql-schema.sql is what the migrations produce."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.datastore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "gen-schema-doc.sh"
SCHEMA_DOC = REPO / "docs" / "postgresql-schema.sql"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_schema_doc_is_generated_identically_from_the_migrations(tmp_path: Path) -> None:
    generated = tmp_path / "schema.sql"
    result = run("--output", str(generated))
    assert result.returncode == 0, result.stderr
    text = generated.read_text()
    assert text == SCHEMA_DOC.read_text()
    # NVSentinel's schema version 3 ...
    for name in (
        "health_events",
        "maintenance_events",
        "datastore_changelog",
        "resume_tokens",
        "nvsentinel_schema_migrations",
        # ... and this project's tables on top.
        "datastore_changelog_pruned",
        "datastore_consumer_positions",
        "datastore_epoch",
        "nvsentinel_store_migrations",
    ):
        assert f"CREATE TABLE public.{name} (" in text
    for table in ("health_events", "maintenance_events"):
        assert f"CREATE TRIGGER {table}_changes AFTER INSERT OR DELETE OR UPDATE" in text
        assert f"CREATE TRIGGER {table}_extract BEFORE INSERT OR UPDATE" in text
    assert "CREATE TRIGGER datastore_changelog_position BEFORE INSERT" in text
    # The services' role writes change rows through the triggers, and sets
    # NVSentinel's processed flag; it cannot change or delete them.
    assert "GRANT SELECT,INSERT ON TABLE public.datastore_changelog TO nvsentinel_app;" in text
    assert "GRANT UPDATE(processed) ON TABLE public.datastore_changelog TO nvsentinel_app;" in text
    assert "GRANT SELECT ON TABLE public.nvsentinel_schema_migrations TO nvsentinel_app;" in text


def test_schema_doc_check_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "schema.sql"
    stale.write_text(SCHEMA_DOC.read_text().replace("resume_tokens", "resume_tokenz", 1))
    result = run("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "is not current" in result.stderr
    assert "+" in result.stderr and "resume_tokens" in result.stderr
