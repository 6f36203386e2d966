"""The chart's long-running helper containers stop when the kubelet asks them to.

A container's main process is PID 1 of its PID namespace, and the kernel drops
any signal PID 1 has no handler for: a shell loop that does not trap SIGTERM
keeps running until the kubelet kills it at the end of the grace period (60 s
for PostgreSQL), so every restart, upgrade and drain waits that long. Each
helper runs here as PID 1 of a new PID namespace (`unshare --pid --fork`) with
the environment its container gets, is sent SIGTERM, and must exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devsupport.ca import CertDir
from devsupport.postgres import PostgresServer
from tests.fixtures import chart

pytestmark = pytest.mark.datastore

CHARTS = Path(__file__).resolve().parents[2] / "charts" / "nvsentinel" / "charts"
#: Long enough for a script to start and to handle the signal on a busy machine;
#: the failure this guards against never exits at all.
EXIT_WITHIN_S = 20.0


def unshare_prefix() -> list[str]:
    prefix = ["unshare", "--pid", "--fork", "--kill-child"]
    return prefix if os.geteuid() == 0 else [*prefix[:1], "--user", "--map-root-user", *prefix[1:]]


def namespace_init(unshare: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """The host pid of the process unshare forked: PID 1 of the new namespace."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError(f"unshare (pid {unshare.pid}) started no child in {timeout:.0f}s")


@pytest.fixture
def as_pid1(tmp_path: Path) -> Iterator[Any]:
    """Start argv as PID 1 of a new PID namespace; returns (unshare process, init pid)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
        log = (tmp_path / "output.log").open("wb")
        process = subprocess.Popen(
            [*unshare_prefix(), *argv], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process, namespace_init(process)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def assert_stops_on_sigterm(start: Any, argv: list[str], env: dict[str, str], tmp: Path) -> None:
    process, init = start(argv, env)
    time.sleep(1.5)  # into its loop: past start-up, sleeping between two checks
    assert process.poll() is None, (tmp / "output.log").read_text()
    os.kill(init, signal.SIGTERM)
    try:
        code = process.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{argv[0]} as PID 1 ignored SIGTERM for {EXIT_WITHIN_S:.0f}s; output:\n"
            + (tmp / "output.log").read_text()
        ) from None
    assert code == 0, (tmp / "output.log").read_text()


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def test_postgresql_reloader_stops_on_sigterm(
    as_pid1: Any, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    env = {
        **base_env(),
        "PATH": f"{postgres_server.bindir}:{base_env()['PATH']}",
        "TLS_DIR": str(postgres_server.server_tls.path),
        "INTERVAL": "5",
        "PGHOST": str(postgres_server.socket_dir),
        "PGPORT": str(postgres_server.port),
        "PGUSER": postgres_server.superuser,
        "PGDATABASE": "postgres",
    }
    reloader = CHARTS / "postgresql" / "files" / "reloader.sh"
    assert_stops_on_sigterm(as_pid1, ["bash", str(reloader)], env, tmp_path)


def test_mongodb_pem_rotator_stops_on_sigterm(
    as_pid1: Any, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # Any certificate files do: the loop only fingerprints and joins them; mongosh
    # is absent here, so each rotation fails, is logged and retried, as while mongod starts.
    tls: CertDir = postgres_server.server_tls
    env = {
        **base_env(),
        "TLS_DIR": str(tls.path),
        "PEM_DIR": str(tmp_path / "pem"),
        "INTERVAL": "5",
        "NVS_SCRIPTS_DIR": str(tmp_path / "no-scripts"),
    }
    rotator = CHARTS / "mongodb" / "files" / "tls-pem.sh"
    assert_stops_on_sigterm(as_pid1, ["bash", str(rotator), "--watch"], env, tmp_path)


def rendered_container(kind: str, name: str, container: str, init: bool) -> dict[str, Any]:
    objects = chart.render(["values-postgresql.yaml"], ["storeTools.enabled=true"])
    spec = chart.find(objects, kind, name)["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["initContainers" if init else "containers"]
    found = [c for c in containers if c["name"] == container]
    assert found, f"{kind}/{name} has no container {container}"
    return found[0]


def test_client_cert_refresher_stops_on_sigterm(
    as_pid1: Any, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    refresher = rendered_container("Deployment", "fault-quarantine", "client-cert-refresher", True)
    target = tmp_path / "datastore-tls"
    target.mkdir()
    env = {**base_env(), **{e["name"]: e["value"] for e in refresher["env"]}}
    env.update(
        CERT_SOURCE_DIR=str(postgres_server.server_tls.path),
        CERT_TARGET_DIR=str(target),
        INTERVAL_SECONDS="5",
    )
    argv = [*refresher["command"], *refresher["args"]]
    assert_stops_on_sigterm(as_pid1, argv, env, tmp_path)


def test_store_tools_container_stops_on_sigterm(as_pid1: Any, tmp_path: Path) -> None:
    tools = rendered_container("Deployment", "nvsentinel-store-tools", "store-tools", False)
    assert_stops_on_sigterm(as_pid1, tools["command"], base_env(), tmp_path)
