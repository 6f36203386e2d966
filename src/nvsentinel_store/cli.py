"""``nvsentinel-store``: the operators' tool for the datastore.

Configuration comes from the environment (``DATASTORE_*``, see
:mod:`nvsentinel_store.config`). This module only parses arguments and
prints; the work is in the library. Errors become one line on stderr and an
exit code:

0 success; 1 unhealthy / migrations pending; 2 bad usage or configuration;
3 change history lost; 4 datastore unreachable; 5 the run failed: another
datastore error, or (migrate) a source that could not be read to its end;
6 (migrate) documents already stored with different content (see
:mod:`nvsentinel_store.migrate.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO
from wsgiref.simple_server import WSGIServer

import psycopg
from prometheus_client import CollectorRegistry, start_http_server

from nvsentinel_store.arguments import positive_int
from nvsentinel_store.config import Settings
from nvsentinel_store.errors import (
    ConfigError,
    HistoryLostError,
    ImportFailedError,
    MigrationError,
    QueryError,
    StoreError,
    StoreUnavailableError,
)
from nvsentinel_store.metrics import WatchMetrics
from nvsentinel_store.migrate import cli as migrate_cli
from nvsentinel_store.providers.postgresql import health, migrations
from nvsentinel_store.providers.postgresql.connection import connect
from nvsentinel_store.query import (
    MAX_NESTING_DEPTH,
    contains_nul,
    json_text_too_deep,
    value_too_deep,
)
from nvsentinel_store.store import COLLECTIONS, WatchOptions

EXIT_OK: Final = 0
EXIT_UNHEALTHY: Final = 1
EXIT_USAGE: Final = 2
EXIT_HISTORY_LOST: Final = 3
EXIT_UNAVAILABLE: Final = 4
#: The run failed: another datastore error, or (migrate) a source that failed partway.
EXIT_STORE_ERROR: Final = 5
EXIT_CONFLICT: Final = migrate_cli.EXIT_CONFLICT

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d`` as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (a number with s, m, h or d, e.g. 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


_PORT: Final = re.compile(r"[0-9]{1,5}")


def _metrics_port(text: str) -> int:
    """0 (any free port) to 65535, plain decimal digits only."""
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port; expected 1 to 65535 (or 0: any free port)"
        )
    return int(text)


def _json_object(text: str) -> dict[str, Any]:
    """A --match filter: a JSON object at most MAX_NESTING_DEPTH levels deep, without NUL."""
    too_deep = argparse.ArgumentTypeError(
        f"a $match filter may nest objects and arrays at most {MAX_NESTING_DEPTH} levels deep"
    )
    if json_text_too_deep(text):
        raise too_deep
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from err
    except RecursionError:
        raise too_deep from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a $match filter is a JSON object, got {text!r}")
    if value_too_deep(value):
        raise too_deep
    if contains_nul(value):
        raise argparse.ArgumentTypeError(
            "a $match filter cannot hold a NUL character (\\u0000): PostgreSQL cannot store "
            "or compare it"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvsentinel-store",
        description="NVSentinel datastore tool. Connection settings come from the DATASTORE_* "
        "environment variables the services use.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schema = sub.add_parser("schema", help="apply or list the PostgreSQL schema migrations")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    for name, text in (
        ("apply", "apply pending migrations (connect as the migration role)"),
        ("status", "list applied and pending migrations; exit 1 if any is pending"),
    ):
        action = schema_sub.add_parser(name, help=text)
        action.add_argument(
            "--migrations-dir",
            type=Path,
            default=None,
            help="folder of NNNN_<name>.sql files (default: $NVSENTINEL_MIGRATIONS_DIR or the "
            "chart's folder in this source tree)",
        )

    check = sub.add_parser(
        "health", help="check connectivity, TLS, schema, triggers, changelog and consumers"
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print the report as one JSON object (shape: docs/metrics-and-health.md)",
    )
    check.add_argument("--migrations-dir", type=Path, default=None, help=argparse.SUPPRESS)

    watch = sub.add_parser(
        "watch", help="print change events as NDJSON, one per line (PostgreSQL or MongoDB)"
    )
    watch.add_argument("--collection", required=True, choices=COLLECTIONS)
    watch.add_argument(
        "--client-name",
        required=True,
        help="consumer name; its position is stored after the events printed and resumed from",
    )
    watch.add_argument(
        "--from-beginning",
        action="store_true",
        help="without a stored position, start at the oldest retained change (default: now)",
    )
    watch.add_argument(
        "--reset-token",
        action="store_true",
        help="forget the consumer's stored position first (after history was lost)",
    )
    watch.add_argument(
        "--match",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='a $match filter, e.g. \'{"operationType": "update"}\' (objects and arrays '
        f"nested at most {MAX_NESTING_DEPTH} levels deep, no NUL characters)",
    )
    watch.add_argument(
        "--idle-exit",
        type=parse_duration,
        default=None,
        metavar="SECONDS",
        help="exit 0 after this long without an event",
    )
    watch.add_argument(
        "--max-events", type=positive_int, default=None, help="exit 0 after N events"
    )
    watch.add_argument("--batch-size", type=positive_int, default=WatchOptions.batch_size)
    watch.add_argument(
        "--poll-interval",
        type=parse_duration,
        default=WatchOptions.poll_interval,
        help="longest pause between polls when idle (seconds)",
    )
    watch.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics while watching "
        "(PORT 1-65535, or 0: any free port, printed on stderr)",
    )
    watch.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics server binds (default 127.0.0.1)",
    )

    migrate_cli.add_parser(sub)

    prune = sub.add_parser(
        "prune",
        help="expire consumers silent for MAX_AGE and delete older changes all live consumers "
        "have passed",
    )
    prune.add_argument(
        "--max-age", type=parse_duration, default=parse_duration("7d"), help="default 7d"
    )
    prune.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="changes deleted per collection in one transaction; streams wait for at most "
        "one batch (default 5000)",
    )
    return parser


def _settings(env: dict[str, str], command: str) -> Settings:
    settings = Settings.from_env(env)
    if settings.provider != "postgresql" and command != "watch":
        raise ConfigError(
            f"DATASTORE_PROVIDER={settings.provider!r}: this command needs "
            "DATASTORE_PROVIDER=postgresql"
        )
    return settings


def _json_default(value: Any) -> Any:
    """Datetimes as ISO 8601; other non-JSON values (BSON ObjectId, Timestamp) as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def cmd_schema(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    with connect(settings, autocommit=True) as conn:
        if args.schema_command == "apply":
            done = migrations.apply(
                conn,
                args.migrations_dir,
                on_migration=lambda m: print(f"applying {m.name}", file=err, flush=True),
            )
            state = migrations.status(conn, args.migrations_dir)
            verb = f"applied {len(done)} migration(s)" if done else "nothing to apply"
            print(f"{verb}; schema version {state.version}", file=out)
            return EXIT_OK
        state = migrations.status(conn, args.migrations_dir)
        for applied in state.applied:
            print(
                f"applied  {applied.version:04d}  {applied.name}  {applied.applied_at.isoformat()}",
                file=out,
            )
        for mismatch in state.mismatched:
            print(f"changed  {mismatch.migration.version:04d}  {mismatch.migration.name}", file=out)
        for pending in state.pending:
            print(f"pending  {pending.version:04d}  {pending.name}", file=out)
        for unknown in state.unknown:
            print(f"unknown  {unknown.version:04d}  {unknown.name}", file=out)
        return EXIT_OK if state.current else EXIT_UNHEALTHY


def cmd_health(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    try:
        conn = connect(settings, autocommit=True)
    except StoreUnavailableError as error:
        if args.json:
            print(json.dumps(health.unreachable(str(error)).as_dict()), file=out)
        raise
    with conn:
        report = health.check(conn, settings.sslmode, args.migrations_dir)
    if args.json:
        print(json.dumps(report.as_dict(), default=_json_default), file=out)
    else:
        out.write(health.render_table(report))
    return EXIT_OK if report.healthy else EXIT_UNHEALTHY


class _Stop:
    """Set by SIGTERM/SIGINT so the watch loop stores its position and exits."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def cmd_watch(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    from nvsentinel_store.providers import open_store

    pipeline = [{"$match": args.match}] if args.match else None
    metrics = WatchMetrics(CollectorRegistry()) if args.metrics_port is not None else None
    options = WatchOptions(
        poll_interval=args.poll_interval,
        batch_size=args.batch_size,
        min_poll_interval=min(WatchOptions.min_poll_interval, args.poll_interval),
        observer=metrics,
    )
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        if metrics is not None:
            server = _serve_metrics(metrics, args.metrics_address, args.metrics_port, err)
        with open_store(settings) as store:
            pool_stats = getattr(store, "pool_stats", None)
            if metrics is not None and pool_stats is not None:
                metrics.watch_pool(pool_stats)
            if args.reset_token:
                reset = getattr(store, "reset_resume_token", None)
                if reset is None:
                    raise ConfigError(f"--reset-token is not supported for {settings.provider}")
                reset(args.client_name, args.collection)
            stream = store.collection(args.collection).watch(
                pipeline,
                client_name=args.client_name,
                from_beginning=args.from_beginning,
                options=options,
            )
            with stream:
                # Register the consumer at its start position, so that a first
                # run that prints nothing still resumes from here next time.
                stream.save_token()
                return _watch_loop(stream, args, out, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()


def _serve_metrics(metrics: WatchMetrics, address: str, port: int, err: TextIO) -> WSGIServer:
    try:
        server, _ = start_http_server(port, address, registry=metrics.registry)
    except OSError as error:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {address}: {error}") from error
    host = address if ":" not in address else f"[{address}]"
    print(
        f"nvsentinel-store: metrics on http://{host}:{server.server_port}/metrics",
        file=err,
        flush=True,
    )
    return server


def _watch_loop(stream: Any, args: argparse.Namespace, out: TextIO, stop: _Stop) -> int:
    printed = 0
    unsaved = 0
    last_event = time.monotonic()
    while not stop.requested:
        wait = 0.2
        if args.idle_exit is not None:
            wait = min(wait, max(0.0, args.idle_exit - (time.monotonic() - last_event)))
        event = stream.try_next(timeout=wait)
        if event is not None:
            out.write(json.dumps(event, default=_json_default, separators=(",", ":")) + "\n")
            printed += 1
            unsaved += 1
            last_event = time.monotonic()
        batch_done = getattr(stream, "buffered", 0) == 0
        limit_hit = args.max_events is not None and printed >= args.max_events
        if unsaved and (batch_done or limit_hit):
            out.flush()
            stream.save_token()
            unsaved = 0
        if limit_hit:
            break
        idle = time.monotonic() - last_event
        if event is None and args.idle_exit is not None and idle >= args.idle_exit:
            break
    if unsaved:
        out.flush()
        stream.save_token()
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    from nvsentinel_store.providers.postgresql.provider import (
        PRUNE_BATCH_SIZE,
        PostgresStore,
        StoreOptions,
    )

    batch_size = args.batch_size or PRUNE_BATCH_SIZE
    print(
        f"pruning changes older than {args.max_age:g}s, {batch_size} per transaction ...",
        file=err,
        flush=True,
    )
    with PostgresStore.from_settings(settings, StoreOptions(max_pool_size=1)) as store:
        results = store.prune(args.max_age, batch_size)
    for result in results:
        print(
            f"{result.collection}: deleted {result.deleted_changes} change(s) in "
            f"{result.batches} transaction(s), expired {result.expired_consumers} consumer(s)",
            file=out,
        )
    return EXIT_OK


_COMMANDS: Final = {
    "schema": cmd_schema,
    "health": cmd_health,
    "watch": cmd_watch,
    "prune": cmd_prune,
    "migrate": migrate_cli.run,
}


def main(
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(dict(os.environ if env is None else env), args.command)
        code: int = _COMMANDS[args.command](args, settings, out, err)
        return code
    except (ConfigError, QueryError) as error:
        print(f"nvsentinel-store: {error}", file=err)
        return EXIT_USAGE
    except HistoryLostError as error:
        print(f"nvsentinel-store: history lost (code {error.code}): {error}", file=err)
        return EXIT_HISTORY_LOST
    except StoreUnavailableError as error:
        print(f"nvsentinel-store: {error}", file=err)
        return EXIT_UNAVAILABLE
    except MigrationError as error:
        print(f"nvsentinel-store: migration failed: {error}", file=err)
        return EXIT_STORE_ERROR
    except ImportFailedError as error:
        print(f"nvsentinel-store: import failed: {error}", file=err)
        return EXIT_STORE_ERROR
    except StoreError as error:
        print(f"nvsentinel-store: {error}", file=err)
        return EXIT_STORE_ERROR
    except psycopg.Error as error:
        reason = " ".join(str(error).split())
        print(f"nvsentinel-store: database error: {reason}", file=err)
        return EXIT_STORE_ERROR
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
