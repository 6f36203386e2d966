"""The PostgreSQL subchart's pod scripts, laid out and run as its pods run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from devsupport.postgres import APP_USER, BOOTSTRAP_SQL, MIGRATION_USER, PostgresServer
from tests.fixtures import chart

MONITOR_USER = "nvsentinel_monitor"
BACKUP_USER = "nvsentinel_backup"


def scripts(objects: list[dict[str, Any]], to: Path, release: str = "nvsentinel") -> Path:
    """The subchart's scripts ConfigMap laid out as its volume (mode 0555)."""
    to.mkdir(parents=True)
    data = chart.find(objects, "ConfigMap", f"{release}-postgresql-scripts")["data"]
    for key, text in data.items():
        (to / key).write_text(text)
        (to / key).chmod(0o555)
    return to


def run_initdb_script(server: PostgresServer, dbname: str, script_dir: Path) -> None:
    """What the postgres image runs on an empty volume: initdb.sh over the local socket
    (bootstrap.sql, then the monitor and backup roles; idempotent)."""
    env = {
        "PATH": f"{server.bindir}:{os.environ['PATH']}",
        "PGHOST": str(server.socket_dir),
        "PGPORT": str(server.port),
        "POSTGRES_USER": server.superuser,
        "POSTGRES_DB": dbname,
        "NVS_BOOTSTRAP_SQL": str(BOOTSTRAP_SQL),
        "NVS_MIGRATION_USER": MIGRATION_USER,
        "NVS_APP_USER": APP_USER,
        "NVS_MONITOR_USER": MONITOR_USER,
        "NVS_BACKUP_USER": BACKUP_USER,
    }
    done = subprocess.run(
        [str(script_dir / "initdb.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
