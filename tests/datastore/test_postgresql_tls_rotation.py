"""The PostgreSQL subchart's certificate rotation, run against a real server: the
chart's reloader (charts/nvsentinel/charts/postgresql/files/reloader.sh) notices
renewed TLS files and makes the running server serve them to new connections,
with the key mounted as the kubelet mounts a Secret with fsGroup (root-owned, 0440)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devsupport.ca import CertDir, issue_server_cert
from devsupport.postgres import APP_USER, PostgresDatabase, PostgresServer

pytestmark = pytest.mark.datastore

RELOADER = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "nvsentinel"
    / "charts"
    / "postgresql"
    / "files"
    / "reloader.sh"
)
RENEWED_HOST = "renewed.test"
WAIT_S = 30.0


def reloader_env(server: PostgresServer, interval: int = 1) -> dict[str, str]:
    """What the chart gives the reloader sidecar: the TLS directory and the local socket."""
    return {
        "PATH": f"{server.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "TLS_DIR": str(server.server_tls.path),
        "INTERVAL": str(interval),
        "PGHOST": str(server.socket_dir),
        "PGPORT": str(server.port),
        "PGUSER": server.superuser,
        "PGDATABASE": "postgres",
    }


def install_like_the_kubelet(server: PostgresServer, source: CertDir) -> None:
    """Install certificate files; as root, make the key root-owned, group of the server, 0440."""
    server.install_server_cert(source)
    key = server.server_tls.path / "tls.key"
    if os.geteuid() == 0 and server.account is not None:
        os.chown(key, 0, server.account[1])
        key.chmod(0o440)


def postmaster_started(server: PostgresServer) -> object:
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def connects(conninfo: str) -> bool:
    try:
        psycopg.connect(conninfo, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture
def renewed(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[CertDir]:
    """A renewed server certificate that also names renewed.test; the original is put back."""
    original = postgres_server.pki.server
    yield issue_server_cert(postgres_server.pki.ca, tmp_path / "renewed", [RENEWED_HOST])
    postgres_server.install_server_cert(original)
    postgres_server.reload()


def test_reloader_once_makes_new_connections_get_the_renewed_certificate(
    postgres_server: PostgresServer, postgres_database: PostgresDatabase, renewed: CertDir
) -> None:
    conninfo = postgres_database.conninfo(APP_USER, host=RENEWED_HOST)
    started = postmaster_started(postgres_server)
    install_like_the_kubelet(postgres_server, renewed)
    assert not connects(conninfo), "the server served the new certificate before any reload"
    result = subprocess.run(
        [str(RELOADER), "--once"],
        env=reloader_env(postgres_server),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + WAIT_S
    while not connects(conninfo):
        assert time.monotonic() < deadline, postgres_server.log_tail()
        time.sleep(0.1)
    assert postmaster_started(postgres_server) == started


def test_reloader_sidecar_loop_picks_up_a_renewal_while_sessions_stay_open(
    postgres_server: PostgresServer, postgres_database: PostgresDatabase, renewed: CertDir
) -> None:
    renewed_conninfo = postgres_database.conninfo(APP_USER, host=RENEWED_HOST)
    started = postmaster_started(postgres_server)
    sidecar = subprocess.Popen(
        [str(RELOADER)],
        env=reloader_env(postgres_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with psycopg.connect(postgres_database.conninfo(APP_USER)) as held:
            install_like_the_kubelet(postgres_server, renewed)
            deadline = time.monotonic() + WAIT_S
            while not connects(renewed_conninfo):
                assert sidecar.poll() is None, "the reloader exited"
                assert time.monotonic() < deadline, postgres_server.log_tail()
                time.sleep(0.2)
            # The session opened before the renewal is still served.
            assert held.execute("SELECT current_user").fetchone() == (APP_USER,)
        assert postmaster_started(postgres_server) == started
    finally:
        sidecar.terminate()
        output, _ = sidecar.communicate(timeout=10)
    assert "configuration reloaded" in output


def role_password_hash(server: PostgresServer, role: str) -> str | None:
    with psycopg.connect(server.superuser_conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
        ).fetchone()
    assert row is not None, f"role {role} is missing"
    value: str | None = row[0]
    return value


def test_reloader_applies_the_secret_password_and_a_changed_one_without_restart(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    role = "nvs_reloader_password_test"
    with psycopg.connect(postgres_server.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    password_file = tmp_path / "password"
    password_file.write_text("first-password")
    sidecar = subprocess.Popen(
        [str(RELOADER)],
        env={
            **reloader_env(postgres_server),
            "PASSWORD_FILE": str(password_file),
            "PASSWORD_ROLES": role,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        hashes: list[str] = []
        for password in ("first-password", "second-password"):
            password_file.write_text(password)
            deadline = time.monotonic() + WAIT_S
            while (current := role_password_hash(postgres_server, role)) in (None, *hashes):
                assert sidecar.poll() is None, "the reloader exited"
                assert time.monotonic() < deadline, f"{password} was not applied"
                time.sleep(0.2)
            assert current is not None and current.startswith("SCRAM-SHA-256$")
            hashes.append(current)
    finally:
        sidecar.terminate()
        sidecar.communicate(timeout=10)
        with psycopg.connect(postgres_server.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
