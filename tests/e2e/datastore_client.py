"""Reach an in-cluster datastore from the test process as a service would.

A service reads its settings from the `<release>-datastore-config` ConfigMap and
its client certificate from a Secret. The test reads the same two objects
through the API, writes the certificate files locally (key 0600), and dials the
datastore through a port-forward relay on 127.0.0.1. TLS still verifies the
server against the name the service dials: the relay's address is given to the
client under that name by `loopback_resolution`, so `verify-full` checks the
server certificate against `nvsentinel-postgresql.nvsentinel.svc`, not against
127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from nvsentinel_store.config import Settings
from nvsentinel_store.providers.mongodb import MongoStore
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from nvsentinel_store.store import ChangeEvent, ChangeStream, Store
from tests.e2e.port_forward_relay import PortForwardRelay, relay_to_service

_real_getaddrinfo = socket.getaddrinfo


@contextlib.contextmanager
def loopback_resolution(*names: str) -> Iterator[None]:
    """Resolve ``names`` to 127.0.0.1 in this process (psycopg and pymongo resolve in Python)."""
    wanted = {name.lower().rstrip(".") for name in names}

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.lower().rstrip(".") in wanted:
            host = "127.0.0.1"
        return _real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = _real_getaddrinfo


def datastore_config(api: client.ApiClient, namespace: str, release: str) -> dict[str, str]:
    """The `DATASTORE_*` settings the chart gives every service."""
    configmap = client.CoreV1Api(api).read_namespaced_config_map(
        f"{release}-datastore-config", namespace
    )
    return dict(configmap.data or {})


def write_client_certificate(
    api: client.ApiClient, namespace: str, secret: str, dest: Path
) -> Path:
    """Write the Secret's tls.crt, tls.key (0600) and ca.crt into ``dest``; returns ``dest``."""
    data = client.CoreV1Api(api).read_namespaced_secret(secret, namespace).data or {}
    missing = {"tls.crt", "tls.key", "ca.crt"} - set(data)
    assert not missing, f"secret {namespace}/{secret} lacks {sorted(missing)}"
    dest.mkdir(parents=True, exist_ok=True)
    for key in ("tls.crt", "tls.key", "ca.crt"):
        path = dest / key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64decode(data[key]))
    return dest


def client_environment(
    config: dict[str, str], *, host: str, port: int, cert_dir: Path
) -> dict[str, str]:
    """The service's environment, with the relay port and the local certificate directory."""
    env = {k: v for k, v in config.items() if k.startswith("DATASTORE_")}
    env.update(
        DATASTORE_HOST=host,
        DATASTORE_PORT=str(port),
        DATASTORE_SSLCERT=str(cert_dir / "tls.crt"),
        DATASTORE_SSLKEY=str(cert_dir / "tls.key"),
        DATASTORE_SSLROOTCERT=str(cert_dir / "ca.crt"),
    )
    return env


def next_matching(
    stream: ChangeStream, matches: Callable[[ChangeEvent], bool], timeout: float = 30.0
) -> ChangeEvent:
    """The next change event for which ``matches`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        event = stream.try_next(timeout=1.0)
        if event is None:
            continue
        if matches(event):
            return event
        seen.append(f"{event.get('operationType')} {event.get('documentKey')}")
    raise AssertionError(f"no matching change event within {timeout:.0f}s; other events: {seen}")


def health_event(event_id: str, node: str) -> dict[str, Any]:
    """A new health event as the platform connector stores it (documents.md shapes)."""
    now = time.time()
    return {
        "_id": event_id,
        "createdAt": datetime.now(UTC),
        "healthevent": {
            "version": 1,
            "agent": "gpu-health-monitor",
            "componentclass": "GPU",
            "checkname": "GpuXidError",
            "isfatal": True,
            "ishealthy": False,
            "message": "XID 79: GPU has fallen off the bus",
            "recommendedaction": 24,
            "errorcode": ["79"],
            "entitiesimpacted": [{"entitytype": "GPU", "entityvalue": "GPU-e2e"}],
            "metadata": {"idempotencyKey": event_id},
            "generatedtimestamp": {"seconds": int(now), "nanos": 0},
            "nodename": node,
            "processingstrategy": 1,
        },
        "healtheventstatus": {
            "nodequarantined": None,
            "userpodsevictionstatus": {"status": "NotStarted", "message": ""},
            "faultremediated": None,
            "lastremediationtimestamp": None,
        },
    }


def assert_change_stream_round_trip(store: Store, client_name: str) -> None:
    """Insert a health event, see it on a watch, quarantine its node, see the update.

    This is what fault-quarantine relies on: the platform connector's insert
    reaches it through the change stream, and its status update reaches the
    node drainer the same way.
    """
    events = store.collection("health_events")
    event_id = str(uuid.uuid4())
    node = f"e2e-node-{event_id[:8]}"
    with events.watch(client_name=client_name) as stream:
        assert events.insert_one(health_event(event_id, node)) == event_id
        inserted = next_matching(
            stream,
            lambda e: e["operationType"] == "insert" and e["documentKey"]["_id"] == event_id,
        )
        assert inserted["fullDocument"]["healthevent"]["nodename"] == node
        assert inserted["ns"]["coll"] == "health_events"

        result = events.update_one(
            {"_id": event_id},
            {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}},
        )
        assert (result.matched_count, result.modified_count) == (1, 1)
        updated = next_matching(
            stream,
            lambda e: e["operationType"] == "update" and e["documentKey"]["_id"] == event_id,
        )
        changed = updated["updateDescription"]["updatedFields"]
        assert changed == {"healtheventstatus.nodequarantined": "Quarantined"}, changed
        stream.save_token()
    stored = events.find_one({"_id": event_id})
    assert stored is not None
    assert stored["healtheventstatus"]["nodequarantined"] == "Quarantined"


def open_store(settings: Settings) -> Store:
    """The store client for ``settings``, of the provider the settings name."""
    if settings.provider == "postgresql":
        return PostgresStore.from_settings(settings)
    return MongoStore.from_settings(settings)


@dataclass(frozen=True)
class Connection:
    """How a test reaches an in-cluster store: the services' settings over a relay."""

    relay: PortForwardRelay
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env, application_name="nvsentinel-e2e")


@contextlib.contextmanager
def relayed_environment(
    api: client.ApiClient,
    namespace: str,
    release: str,
    *,
    store: str,
    port: int,
    certificate_secret: str,
    cert_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[PortForwardRelay, dict[str, str]]]:
    """A relay to the Service ``<release>-<store>`` and the services' environment for it.

    The environment is the datastore ConfigMap's, with the relay's port, the client
    certificate of ``certificate_secret`` written into ``cert_dir``, and ``extra_env``;
    the Service's name resolves to the relay while the block runs. On leaving, the
    relay is closed, and any error it met while forwarding fails the test.
    """
    config = datastore_config(api, namespace, release)
    write_client_certificate(api, namespace, certificate_secret, cert_dir)
    relay = relay_to_service(api, namespace, f"{release}-{store}", port)
    env = client_environment(
        config, host=config["DATASTORE_HOST"], port=relay.local_port, cert_dir=cert_dir
    )
    env.update(extra_env or {})
    try:
        with loopback_resolution(config["DATASTORE_HOST"]):
            yield relay, env
    finally:
        relay.close()
    assert not relay.errors, relay.errors
