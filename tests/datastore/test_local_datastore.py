"""hack/local-datastore.sh: a developer's PostgreSQL that clients reach as the chart's."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from nvsentinel_store.config import Settings, postgres_conninfo
from nvsentinel_store.providers.postgresql import migrations
from tests.datastore.conftest import write_pre_release_history

pytestmark = pytest.mark.datastore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "local-datastore.sh"


def run(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["NVSENTINEL_LOCAL_DATASTORE_DIR"] = str(state)
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{SCRIPT.name} {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def parse_exports(text: str) -> dict[str, str]:
    """The variables of 'export NAME=value' lines, as a shell that evals them would set."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: the server's own (unprivileged) account must
    # be able to enter the state directory.
    parent = Path(tempfile.mkdtemp(prefix="nvsentinel-local-ds-"))
    parent.chmod(0o755)
    state = parent / "state"
    try:
        yield state
    finally:
        if state.exists():
            run("down", state=state, check=False)
        shutil.rmtree(parent, ignore_errors=True)


def test_help_names_every_command() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("up", "down", "env", "status"):
        assert f"  {command} " in result.stdout


def test_unknown_command_fails_with_usage(state_dir: Path) -> None:
    result = run("sideways", state=state_dir, check=False)
    assert result.returncode != 0
    assert "unknown command: sideways" in result.stderr


def test_up_env_connect_down(state_dir: Path) -> None:
    run("up", state=state_dir)
    env = parse_exports(run("env", state=state_dir).stdout)
    assert env["DATASTORE_SSLMODE"] == "verify-full"
    assert env["DATASTORE_HOST"] == "localhost"
    assert env["DATASTORE_USERNAME"] == "nvsentinel"

    settings = Settings.from_env(env)
    with psycopg.connect(postgres_conninfo(settings)) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), ssl FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()"
        ).fetchone()
        member = conn.execute("SELECT pg_has_role('nvsentinel_app', 'MEMBER')").fetchone()
    assert row == ("nvsentinel", "nvsentinel", True)
    assert member == (True,)

    migrator_env = parse_exports(
        run("env", "--user", "nvsentinel_migrator", state=state_dir).stdout
    )
    with psycopg.connect(postgres_conninfo(Settings.from_env(migrator_env))) as conn:
        owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
    assert owner == ("nvsentinel_migrator",)

    # A second 'up' keeps the running server (same port) and succeeds.
    run("up", state=state_dir)
    assert parse_exports(run("env", state=state_dir).stdout) == env

    plaintext = postgres_conninfo(Settings.from_env({**env, "DATASTORE_SSLMODE": "disable"}))
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(plaintext).close()

    run("down", state=state_dir)
    assert not state_dir.exists()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(postgres_conninfo(settings)).close()


def test_schema_is_applied_by_up(state_dir: Path) -> None:
    run("up", state=state_dir)
    env = parse_exports(run("env", state=state_dir).stdout)
    with psycopg.connect(postgres_conninfo(Settings.from_env(env))) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        # What NVSentinel's services wait for, and this project's own history.
        nvsentinel_version = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM nvsentinel_schema_migrations"
        ).fetchone()
        ours = conn.execute(
            "SELECT version, name FROM nvsentinel_store_migrations ORDER BY version"
        ).fetchall()
    assert {
        "nvsentinel_schema_migrations",
        "nvsentinel_store_migrations",
        "health_events",
        "maintenance_events",
        "datastore_changelog",
        "resume_tokens",
        "datastore_consumer_positions",
    } <= tables
    assert "schema_migrations" not in tables
    assert nvsentinel_version == (3,)
    assert ours == [(m.version, m.name) for m in migrations.load_migrations()]


def test_up_on_a_pre_release_database_says_how_to_start_afresh(state_dir: Path) -> None:
    run("up", state=state_dir)
    migrator_env = parse_exports(
        run("env", "--user", "nvsentinel_migrator", state=state_dir).stdout
    )
    with psycopg.connect(postgres_conninfo(Settings.from_env(migrator_env))) as conn:
        write_pre_release_history(conn)
    refused = run("up", state=state_dir, check=False)
    assert refused.returncode != 0
    assert "pre-release of the nvsentinel chart" in refused.stderr
    assert "hack/local-datastore.sh down && hack/local-datastore.sh up" in refused.stderr

    run("down", state=state_dir)
    run("up", state=state_dir)
    env = parse_exports(run("env", state=state_dir).stdout)
    with psycopg.connect(postgres_conninfo(Settings.from_env(env))) as conn:
        fresh = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    assert fresh == (None,)
