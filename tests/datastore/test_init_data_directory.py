"""The PostgreSQL subchart's init container, ``init-data-directory.sh`` from the
rendered scripts ConfigMap, run with this machine's PostgreSQL binaries as the
pod runs it: an empty data directory becomes a cluster with the NVSentinel
database and roles; a second run leaves it alone; a failed run leaves nothing
that the next pod start would take for a finished cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devsupport.postgres import (
    APP_USER,
    BOOTSTRAP_SQL,
    MIGRATION_USER,
    _server_account,
    find_bindir,
)
from tests.chart.subcharts import render_subchart
from tests.datastore.subchart_scripts import BACKUP_USER, MONITOR_USER, scripts

pytestmark = pytest.mark.datastore


@dataclass
class Pod:
    """A data volume, the scripts volume and the password file, as the pod mounts them."""

    base: Path
    bindir: Path
    account: tuple[int, int] | None

    @property
    def pgdata(self) -> Path:
        return self.base / "data" / "pgdata"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bindir}:{os.environ['PATH']}",
            "PGDATA": str(self.pgdata),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "nvsentinel",
            "POSTGRES_PASSWORD_FILE": str(self.base / "auth" / "postgres-password"),
            "POSTGRES_INITDB_ARGS": "--data-checksums",
            "NVS_BOOTSTRAP_SQL": str(self.base / "initdb" / "bootstrap.sql"),
            "NVS_MIGRATION_USER": MIGRATION_USER,
            "NVS_APP_USER": APP_USER,
            "NVS_MONITOR_USER": MONITOR_USER,
            "NVS_BACKUP_USER": BACKUP_USER,
        }
        env.update(overrides)
        return env

    def run(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        uid, gid = self.account if self.account is not None else (None, None)
        return subprocess.run(
            [str(self.base / "scripts" / "init-data-directory.sh")],
            env=self.env(**overrides),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )

    def query(self, sql: str) -> str:
        """Start the initialised cluster on a private socket, run SQL, stop it."""
        uid, gid = self.account if self.account is not None else (None, None)
        socket = self.base / "socket"
        socket.mkdir(exist_ok=True)
        if uid is not None:
            os.chown(socket, uid, gid or -1)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
            )

        options = f"-c listen_addresses='' -c unix_socket_directories='{socket}'"
        # With a log file: a server writing to our pipe would keep run() waiting.
        log = str(self.base / "socket" / "server.log")
        run("pg_ctl", "-D", str(self.pgdata), "-l", log, "-w", "-o", options, "start")
        try:
            done = run(
                "psql", "-XAt", "-h", str(socket), "-U", "postgres", "-d", "nvsentinel", "-c", sql
            )
            return done.stdout.strip()
        finally:
            run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


@pytest.fixture
def pod() -> Iterator[Pod]:
    account = _server_account()
    base = Path(tempfile.mkdtemp(prefix="nvs-init-data-directory-"))
    try:
        base.chmod(0o755)
        scripts(render_subchart("postgresql", ()), base / "scripts", release="x")
        (base / "auth").mkdir()
        (base / "auth" / "postgres-password").write_text("a-superuser-password\n")
        (base / "initdb").mkdir()
        shutil.copy(BOOTSTRAP_SQL, base / "initdb" / "bootstrap.sql")
        (base / "data").mkdir()
        if account is not None:
            for path in [base / "data", base / "auth", base / "auth" / "postgres-password"]:
                os.chown(path, *account)
        yield Pod(base, find_bindir(), account)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_empty_volume_becomes_a_cluster_with_the_database_and_roles(pod: Pod) -> None:
    done = pod.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert (pod.pgdata / "PG_VERSION").is_file()
    assert not (pod.base / "data" / "pgdata.initialising").exists()
    roles = pod.query(
        "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN "
        f"('{MIGRATION_USER}', '{APP_USER}', 'nvsentinel_app', '{MONITOR_USER}', '{BACKUP_USER}')"
    )
    expected = sorted([MIGRATION_USER, APP_USER, "nvsentinel_app", MONITOR_USER, BACKUP_USER])
    assert roles.split(",") == expected
    assert pod.query("SHOW data_checksums") == "on"
    owner = pod.query("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'public'")
    assert owner == MIGRATION_USER


def test_second_run_leaves_an_initialised_cluster_alone(pod: Pod) -> None:
    assert pod.run().returncode == 0
    assert pod.query("CREATE TABLE kept (x int)") == "CREATE TABLE"
    again = pod.run()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout
    assert pod.query("SELECT count(*) FROM kept") == "0"


def test_failed_bootstrap_leaves_no_cluster_and_the_next_start_succeeds(pod: Pod) -> None:
    failed = pod.run(NVS_BOOTSTRAP_SQL=str(pod.base / "initdb" / "missing.sql"))
    assert failed.returncode != 0
    # Nothing the next start would mistake for a finished cluster.
    assert not (pod.pgdata / "PG_VERSION").exists()
    done = pod.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (pod.base / "data" / "pgdata.initialising").exists()
    assert pod.query(f"SELECT count(*) FROM pg_roles WHERE rolname = '{APP_USER}'") == "1"


EXPORTER_OS_USER = "nobody"


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another OS user needs root")
def test_exporter_os_user_reaches_only_the_monitor_role_by_peer_authentication(pod: Pod) -> None:
    """The rendered pg_hba.conf and pg_ident.conf on a real server: a client running as
    the exporter's OS user (`metrics.osUser`, uid `metrics.securityContext.runAsUser`)
    logs in over the socket as the monitor role to the NVSentinel database, and as
    nothing else: not `postgres`, not the application role, not another database."""
    assert pod.run().returncode == 0
    objects = render_subchart("postgresql", ("metrics.enabled=true",))
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    exporter = next(
        c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "metrics"
    )
    exporter_uid = exporter["securityContext"]["runAsUser"]
    entry = pwd.getpwnam(EXPORTER_OS_USER)
    assert entry.pw_uid == exporter_uid, "the chart's default exporter uid is nobody here too"
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "x-postgresql-config"
    )["data"]
    assert EXPORTER_OS_USER in config["pg_ident.conf"]
    config_dir = pod.base / "config"
    config_dir.mkdir()
    for name in ("pg_hba.conf", "pg_ident.conf"):
        (config_dir / name).write_text(config[name])
        (config_dir / name).chmod(0o644)

    uid, gid = pod.account if pod.account is not None else (None, None)
    socket = pod.base / "socket"
    socket.mkdir(exist_ok=True)
    socket.chmod(0o755)
    if uid is not None:
        os.chown(socket, uid, gid or -1)
    log = str(socket / "server.log")
    options = (
        f"-c listen_addresses='' -c unix_socket_directories='{socket}'"
        f" -c hba_file='{config_dir}/pg_hba.conf' -c ident_file='{config_dir}/pg_ident.conf'"
    )

    def as_server(*args: str) -> None:
        subprocess.run(
            [str(pod.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )

    def as_exporter(role: str, database: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(pod.bindir / "psql"),
                "-XAt",
                "-h",
                str(socket),
                "-U",
                role,
                "-d",
                database,
                "-c",
                "SELECT current_user",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            env={"PATH": os.environ["PATH"], "HOME": "/tmp"},
        )

    as_server("pg_ctl", "-D", str(pod.pgdata), "-l", log, "-w", "-o", options, "start")
    try:
        allowed = as_exporter(MONITOR_USER, "nvsentinel")
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == MONITOR_USER
        for role, database, refusal in (
            ("postgres", "nvsentinel", "Peer authentication failed"),
            ("postgres", "postgres", "Peer authentication failed"),
            (APP_USER, "nvsentinel", "no pg_hba.conf entry"),
            (MONITOR_USER, "postgres", "no pg_hba.conf entry"),
        ):
            refused = as_exporter(role, database)
            assert refused.returncode != 0, (role, database)
            assert refusal in refused.stderr, (role, database, refused.stderr)
    finally:
        as_server("pg_ctl", "-D", str(pod.pgdata), "-m", "fast", "-w", "stop")
