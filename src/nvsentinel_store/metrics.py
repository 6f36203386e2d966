"""Prometheus metrics of change streams and the store's connection pool.

:class:`WatchMetrics` is a :class:`~nvsentinel_store.store.StreamObserver`:
pass it as ``WatchOptions(observer=...)`` and it counts what the stream does
into a :class:`prometheus_client.CollectorRegistry` of the caller's (never the
process-global default registry). This module starts no server; the
``nvsentinel-store watch --metrics-port`` command serves the registry.

Metrics (labels in braces):

- ``nvsentinel_store_changestream_events_total{collection,consumer}``: events
  handed to the consumer.
- ``nvsentinel_store_changestream_lag_seconds{collection,consumer}``: how old
  the last delivered change was when it was delivered (now minus its
  ``clusterTime``); 0 once a poll finds nothing new.
- ``nvsentinel_store_changestream_poll_seconds{collection}``: histogram of
  the time one poll of the changelog takes.
- ``nvsentinel_store_changestream_batch_size{collection}``: histogram of the
  changes read per poll that found any.
- ``nvsentinel_store_changestream_reconnects_total{collection}``: connection
  losses the stream recovered from.
- ``nvsentinel_store_pool_connections{state}`` (PostgreSQL): the store's pool,
  ``state`` = ``open`` | ``idle`` | ``waiting`` (requests waiting for a
  connection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nvsentinel_store.store import ChangeEvent

PREFIX: Final = "nvsentinel_store"
POLL_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
#: psycopg_pool's statistic -> the ``state`` label.
POOL_STATES: Final = {"pool_size": "open", "pool_available": "idle", "requests_waiting": "waiting"}


class WatchMetrics:
    """Change-stream metrics in ``registry``; one instance may observe many streams."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._events = Counter(
            f"{PREFIX}_changestream_events",
            "Change events handed to the consumer.",
            ["collection", "consumer"],
            registry=registry,
        )
        self._lag = Gauge(
            f"{PREFIX}_changestream_lag_seconds",
            "Age of the last delivered change when it was delivered; 0 when caught up.",
            ["collection", "consumer"],
            registry=registry,
        )
        self._poll = Histogram(
            f"{PREFIX}_changestream_poll_seconds",
            "Time one poll of the changelog takes.",
            ["collection"],
            buckets=POLL_BUCKETS,
            registry=registry,
        )
        self._batch = Histogram(
            f"{PREFIX}_changestream_batch_size",
            "Changes read by one poll that found any.",
            ["collection"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._reconnects = Counter(
            f"{PREFIX}_changestream_reconnects",
            "Connection losses the change stream recovered from.",
            ["collection"],
            registry=registry,
        )

    # -- StreamObserver ---------------------------------------------------------
    def on_poll(self, collection: str, consumer: str, seconds: float, rows: int) -> None:
        self._poll.labels(collection).observe(seconds)
        if rows:
            self._batch.labels(collection).observe(rows)
        else:
            self._lag.labels(collection, consumer).set(0)

    def on_event(self, collection: str, consumer: str, event: ChangeEvent) -> None:
        self._events.labels(collection, consumer).inc()
        changed = event.get("clusterTime")
        if isinstance(changed, datetime):
            lag = (datetime.now(UTC) - changed).total_seconds()
            self._lag.labels(collection, consumer).set(max(0.0, lag))

    def on_reconnect(self, collection: str, consumer: str) -> None:
        self._reconnects.labels(collection).inc()

    # -- pool -------------------------------------------------------------------
    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        """Export ``stats()`` (e.g. ``PostgresStore.pool_stats``) at every scrape."""
        self.registry.register(_PoolCollector(stats))


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_pool_connections",
            "Connections of the store's pool by state (open, idle) and requests waiting.",
            labels=["state"],
        )
        values = self._stats()
        for key, state in POOL_STATES.items():
            family.add_metric([state], values.get(key, 0))
        yield family
