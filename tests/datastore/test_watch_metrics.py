"""``nvsentinel-store watch --metrics-port``: Prometheus metrics scraped over loopback
while the command watches the real TLS server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.providers.postgresql.provider import PostgresStore

pytestmark = pytest.mark.datastore

URL = re.compile(r"metrics on (http://127\.0\.0\.1:(\d+)/metrics)")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(url: str, ready: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + 20
    samples = scrape(url)
    while not ready(samples):
        assert time.monotonic() < deadline, f"{what} never happened; last scrape: {samples}"
        time.sleep(0.1)
        samples = scrape(url)
    return samples


@pytest.fixture
def watching(schema_database: PostgresDatabase) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATASTORE_"))}
    env.update(schema_database.datastore_env())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nvsentinel_store.cli",
            "watch",
            "--collection=health_events",
            "--client-name=fault-quarantine",
            "--metrics-port=0",
            "--batch-size=4",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = URL.search(line)
        assert match, f"no metrics address on stderr: {line!r}"
        yield proc, match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_watch_metrics_count_events_polls_batches_and_reconnects_over_loopback(
    schema_database: PostgresDatabase,
    store: PostgresStore,
    watching: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = watching
    stream = {"collection": "health_events", "consumer": "fault-quarantine"}
    polls = "nvsentinel_store_changestream_poll_seconds_count"
    idle = wait_for(url, lambda s: value(s, polls, collection="health_events") > 0, "a poll")
    assert value(idle, "nvsentinel_store_changestream_events_total", **stream) == 0
    assert value(idle, "nvsentinel_store_pool_connections", state="open") >= 1

    events = store.collection("health_events")
    for n in range(10):
        events.insert_one({"healthevent": {"nodename": f"n{n}"}})
    busy = wait_for(
        url,
        lambda s: value(s, "nvsentinel_store_changestream_events_total", **stream) == 10,
        "10 events delivered",
    )
    assert value(busy, polls, collection="health_events") > value(
        idle, polls, collection="health_events"
    )
    # Ten changes read in batches of at most 4 (all in the bucket le=5): three polls or more.
    batches = "nvsentinel_store_changestream_batch_size"
    assert value(busy, f"{batches}_sum", collection="health_events") == 10
    assert value(busy, f"{batches}_count", collection="health_events") >= 3
    assert value(busy, f"{batches}_bucket", collection="health_events", le="5.0") == value(
        busy, f"{batches}_count", collection="health_events"
    )
    # Caught up again: the lag returns to 0.
    wait_for(
        url,
        lambda s: value(s, "nvsentinel_store_changestream_lag_seconds", **stream) == 0,
        "lag back to 0",
    )

    # Kill the stream's connection: the stream reconnects, counts it and keeps delivering.
    with psycopg.connect(schema_database.superuser_conninfo(), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename = 'nvsentinel' "
            "AND query LIKE %s",
            ("%datastore_changelog%",),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    events.insert_one({"healthevent": {"nodename": "after-reconnect"}})
    after = wait_for(
        url,
        lambda s: value(s, "nvsentinel_store_changestream_events_total", **stream) == 11,
        "the event after the reconnect",
    )
    assert (
        value(after, "nvsentinel_store_changestream_reconnects_total", collection="health_events")
        >= 1
    )
    assert proc.poll() is None
