"""``nvsentinel-store migrate``: arguments, progress line and summary of the migration.

The work is in the rest of :mod:`nvsentinel_store.migrate`; :mod:`nvsentinel_store.cli`
registers the subcommand with :func:`add_parser` and runs it with :func:`run`.

The target is the PostgreSQL of the ``DATASTORE_*`` variables. The source is
either files (``--from-files``) or a live MongoDB (``--from-mongodb``) given by
the ``--source-*`` options alone: no environment variable, so that the
target's settings (``DATASTORE_*``, and ``MONGODB_CLIENT_CERT_MOUNT_PATH``,
which the configuration also honours for PostgreSQL) can never leak into the
source's or the other way round.

Exit codes: 0 everything imported (and verified, with ``--verify``); 1 some
documents were rejected or verification found a difference; 2 bad usage or
configuration; 4 a database unreachable; 5 the run failed partway: a
database error, or a source that could not be read to its end (a truncated
file, a MongoDB failing mid-read; a second run recognises what was imported); 6 documents
whose ``_id`` the target already holds with different content (the stored
copies are kept; listed with ``_id`` and ``file:line``), unless
``--keep-existing``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from nvsentinel_store import migrate
from nvsentinel_store.arguments import port, positive_int
from nvsentinel_store.config import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    SSLMODES,
    Settings,
    TlsFile,
    mongo_client_kwargs,
)
from nvsentinel_store.errors import ConfigError, StoreUnavailableError
from nvsentinel_store.providers.postgresql.connection import connect
from nvsentinel_store.store import COLLECTIONS
from nvsentinel_store.text import table_lines

EXIT_OK: Final = 0
EXIT_ATTENTION: Final = 1
#: Documents already stored with different content (without --keep-existing).
EXIT_CONFLICT: Final = 6
#: Progress lines when stderr is not a terminal: one every this many seconds.
LOG_INTERVAL_S: Final = 10.0
#: Reject reasons printed on stderr before the rest are only counted.
SHOWN_REJECTS: Final = 20

_EPILOG = """\
file names: a file (or a file in DIR) holds the collection its name starts
with: health_events*.json / maintenance_events*.json (also .ndjson, .jsonl,
.gz; '-' reads as '_'). A FILE with another name needs exactly one
--collection.

change events: by default the import produces none (imported history must not
wake the services' change streams); each batch then briefly disables the
table's change log trigger (<table>_changes), which needs the tables' owner:
connect as nvsentinel_migrator (DATASTORE_USERNAME=nvsentinel_migrator, the
postgresql-migration-cert client certificate). --capture-changes imports as
any role with INSERT and turns every document into an insert change.

existing documents: a document whose _id is stored with the same content
counts as already present. One stored with different content (e.g. updated
by the services since the first run) is never overwritten: it is listed as a
conflict (_id and file:line) and the exit code is 6, unless --keep-existing
says keeping the stored copies is intended (exit 0, still listed).

exit codes: 0 all imported (and verified); 1 documents rejected or
verification failed; 2 usage or configuration; 4 unreachable; 5 database
error, or a source that failed partway (the batches before stay); 6 documents
stored with different content (without --keep-existing; 1 when both apply).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``migrate`` on the subparsers object of the main parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "migrate",
        help="import MongoDB documents (mongoexport files or a live MongoDB) into PostgreSQL",
        description="Import health_events and maintenance_events from MongoDB into the "
        "PostgreSQL of the DATASTORE_* variables, keeping each document's _id (a second run "
        "adds nothing).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="mongoexport output (extended JSON, one document per line): files or directories",
    )
    source.add_argument(
        "--from-mongodb",
        action="store_true",
        help="read a live MongoDB, given by the --source-* options",
    )
    parser.add_argument(
        "--collection",
        action="append",
        choices=COLLECTIONS,
        default=None,
        help="import only this collection (repeatable; default: both)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read and check everything, write nothing"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="afterwards compare counts on both sides and a sample of documents field by field",
    )
    parser.add_argument(
        "--sample",
        type=positive_int,
        default=migrate.DEFAULT_SAMPLE_SIZE,
        metavar="N",
        help="documents per collection compared by --verify "
        f"(default {migrate.DEFAULT_SAMPLE_SIZE})",
    )
    parser.add_argument(
        "--rejects",
        type=Path,
        metavar="FILE",
        help="write rejected documents here, one JSON line each: collection, where (file:line "
        "or _id), reason and raw (the document as read)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=migrate.DEFAULT_BATCH_SIZE,
        help=f"documents per COPY batch and transaction (default {migrate.DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--keep-existing",
        action="store_true",
        help="documents whose _id is already stored with different content keep the stored "
        "copy and do not fail the run (exit 0; they are still listed)",
    )
    parser.add_argument(
        "--capture-changes",
        action="store_true",
        help="let the import produce an insert change event per document (see below)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "line", "log", "none"),
        default="auto",
        help="progress on stderr: a line updated in place (default on a terminal), a log line "
        f"every {LOG_INTERVAL_S:g}s (default otherwise), or none",
    )
    mongo = parser.add_argument_group(
        "live MongoDB source (--from-mongodb)",
        "TLS with the client certificate of the Secret mongodb-client-cert, MONGODB-X509 "
        "authentication, as the chart configures the services.",
    )
    mongo.add_argument("--source-host", metavar="HOST", help="MongoDB host (required)")
    mongo.add_argument("--source-port", type=port, default=27017, help="default 27017")
    mongo.add_argument("--source-database", default="nvsentinel", help="default nvsentinel")
    mongo.add_argument(
        "--source-cert-dir",
        type=Path,
        metavar="DIR",
        help="directory with tls.crt, tls.key (mode 0600) and ca.crt (the mongodb-client-cert "
        "Secret's keys); required unless --source-sslmode disable",
    )
    mongo.add_argument(
        "--source-sslmode",
        choices=SSLMODES,
        default="verify-full",
        help="as DATASTORE_SSLMODE (default verify-full)",
    )
    mongo.add_argument(
        "--source-auth",
        choices=("x509", "none"),
        default="x509",
        help="x509 (default): MONGODB-X509 with the client certificate; none: present the "
        "certificate but do not authenticate (servers without authentication)",
    )
    mongo.add_argument(
        "--source-replica-set",
        metavar="NAME",
        help="discover the replica set's members (e.g. rs0); default: talk to the host only",
    )
    return parser


def source_settings(args: argparse.Namespace) -> Settings:
    """The live source's connection, checked like the services' settings."""
    if not args.source_host:
        raise ConfigError("--from-mongodb needs --source-host")
    cert = key = ca = None
    if args.source_sslmode != "disable":
        if args.source_cert_dir is None:
            raise ConfigError(
                "--from-mongodb needs --source-cert-dir (tls.crt, tls.key, ca.crt of "
                "mongodb-client-cert) unless --source-sslmode disable"
            )
        where = f"--source-cert-dir={args.source_cert_dir}"
        cert = TlsFile(args.source_cert_dir / CERT_FILE, where)
        key = TlsFile(args.source_cert_dir / KEY_FILE, where)
        if args.source_sslmode != "require":
            ca = TlsFile(args.source_cert_dir / CA_FILE, where)
    elif args.source_auth == "x509":
        raise ConfigError("--source-auth x509 needs TLS: drop --source-sslmode disable")
    settings = Settings(
        provider="mongodb",
        host=args.source_host,
        port=args.source_port,
        database=args.source_database,
        username=None,
        password=None,
        sslmode=args.source_sslmode,
        sslcert=cert,
        sslkey=key,
        sslrootcert=ca,
        application_name="nvsentinel-store-migrate",
    )
    settings.check_files()
    return settings


@contextlib.contextmanager
def _mongo_database(args: argparse.Namespace) -> Iterator[Any]:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    settings = source_settings(args)
    pem_dir = Path(tempfile.mkdtemp(prefix="nvsentinel-migrate-"))
    try:
        kwargs = mongo_client_kwargs(
            settings, pem_directory=pem_dir, replica_set=args.source_replica_set
        )
        if args.source_auth == "none":
            kwargs.pop("authMechanism", None)
            kwargs.pop("authSource", None)
        client: MongoClient[dict[str, Any]] = MongoClient(**kwargs)
    finally:
        shutil.rmtree(pem_dir, ignore_errors=True)  # pymongo has read the PEM
    try:
        try:
            client.admin.command("ping")
        except PyMongoError as err:
            raise StoreUnavailableError(
                f"cannot reach the MongoDB source {settings.host}:{settings.port}: {err}"
            ) from err
        yield client[settings.database]
    finally:
        client.close()


class _Progress:
    """The progress display on stderr: a line redrawn in place, or periodic log lines."""

    def __init__(self, err: TextIO, mode: str) -> None:
        if mode == "auto":
            mode = "line" if err.isatty() else "log"
        self.err = err
        self.mode = mode
        self.last_log = time.monotonic()
        self.drawn = False

    def __call__(self, p: migrate.Progress) -> None:
        if self.mode == "none":
            return
        text = (
            f"{p.collection}: {p.read:,} read, {p.imported:,} imported, "
            f"{p.already_present:,} already present, {p.rejected:,} rejected, "
            f"{p.rate:,.0f} docs/s"
        )
        if self.mode == "line":
            self.err.write(f"\r\033[K{text}")
            self.drawn = True
            if p.done:
                self.err.write("\n")
                self.drawn = False
            self.err.flush()
            return
        now = time.monotonic()
        if p.done or now - self.last_log >= LOG_INTERVAL_S:
            self.last_log = now
            self.err.write(f"{text}{' (done)' if p.done else ''}\n")
            self.err.flush()

    def message(self, text: str) -> None:
        if self.drawn:
            self.err.write("\n")
            self.drawn = False
        self.err.write(text + "\n")
        self.err.flush()


class _Rejects:
    """Writes rejects to the rejects file and shows the first reasons on stderr."""

    def __init__(self, stream: TextIO | None, progress: _Progress) -> None:
        self.stream = stream
        self.progress = progress
        self.count = 0

    def __call__(self, reject: migrate.Reject) -> None:
        self.count += 1
        if self.stream is not None:
            migrate.write_reject(self.stream, reject)
        if self.count <= SHOWN_REJECTS:
            self.progress.message(f"rejected {reject.collection} {reject.where}: {reject.reason}")
        elif self.count == SHOWN_REJECTS + 1:
            where = f" (all in {self.stream.name})" if self.stream is not None else ""
            self.progress.message(f"further rejects are only counted{where}")


class _Conflicts:
    """Shows the first documents stored with different content on stderr as they are found."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress
        self.count = 0

    def __call__(self, conflict: migrate.Conflict) -> None:
        self.count += 1
        if self.count <= SHOWN_REJECTS:
            self.progress.message(
                f"conflict {conflict.collection} {conflict.where}: _id {conflict.id} is "
                "already stored with different content (the stored copy is kept)"
            )
        elif self.count == SHOWN_REJECTS + 1:
            self.progress.message("further conflicts are listed in the summary")


def run(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    """Run ``migrate``; prints the summary on ``out`` and progress and rejects on ``err``."""
    collections = tuple(args.collection or COLLECTIONS)
    options = migrate.MigrateOptions(
        batch_size=args.batch_size,
        dry_run=args.dry_run,
        capture_changes=args.capture_changes,
        verify=args.verify,
        sample_size=args.sample,
        keep_existing=args.keep_existing,
    )
    progress = _Progress(err, args.progress)
    with contextlib.ExitStack() as stack:
        if args.from_files:
            sources = migrate.file_sources(args.from_files, collections)
        else:
            database = stack.enter_context(_mongo_database(args))
            sources = migrate.mongodb_sources(database, collections, args.batch_size)
        rejects_stream = None
        if args.rejects is not None:
            rejects_stream = stack.enter_context(args.rejects.open("w", encoding="utf-8"))
        rejects = _Rejects(rejects_stream, progress)
        conn = stack.enter_context(connect(settings, autocommit=False))
        report = migrate.migrate(
            conn,
            sources,
            options,
            on_progress=progress,
            on_reject=rejects,
            on_conflict=_Conflicts(progress),
        )
    print_report(report, out, args.rejects, keep_existing=args.keep_existing)
    if report.rejected or report.verified is False:
        return EXIT_ATTENTION
    if report.conflicts and not args.keep_existing:
        return EXIT_CONFLICT
    return EXIT_OK


def print_report(
    report: migrate.MigrationReport,
    out: TextIO,
    rejects: Path | None,
    *,
    keep_existing: bool = False,
) -> None:
    """The per-collection summary (and verification) as an aligned table, then conflicts."""
    imported = "would import" if report.dry_run else "imported"
    header = ("collection", "read", imported, "already present", "rejected", "in PostgreSQL")
    rows = [
        (
            s.collection,
            f"{s.read:,}",
            f"{s.imported:,}",
            f"{s.already_present:,}",
            f"{s.rejected:,}",
            "-" if s.target_count is None else f"{s.target_count:,}",
        )
        for s in report.summaries.values()
    ]
    _print_table(out, header, rows)
    rate = report.read / report.elapsed if report.elapsed > 0 else 0.0
    mode = (
        "dry run, nothing written"
        if report.dry_run
        else ("with change events" if report.capture_changes else "without change events")
    )
    print(
        f"{report.read:,} documents in {report.elapsed:.1f}s ({rate:,.0f} docs/s), {mode}", file=out
    )
    if report.rejected:
        where = f"; see {rejects}" if rejects is not None else " (use --rejects FILE to keep them)"
        print(f"{report.rejected:,} document(s) rejected{where}", file=out)
    conflicts = report.conflicts
    if conflicts:
        outcome = (
            "kept the stored copies (--keep-existing)"
            if keep_existing
            else "the stored copies are kept; pass --keep-existing if that is intended"
        )
        print(
            f"{len(conflicts):,} document(s) already stored with different content; {outcome}:",
            file=out,
        )
        for conflict in conflicts:
            print(f"  {conflict.collection} _id {conflict.id} at {conflict.where}", file=out)
    if report.verify is None:
        return
    print("", file=out)
    vheader = ("verify", "in source", "expected", "found", "in PostgreSQL", "sampled", "differ", "")
    vrows = [
        (
            v.collection,
            f"{v.source_count:,}",
            f"{v.expected:,}",
            f"{v.found:,}",
            f"{v.target_count:,}",
            f"{v.sampled:,}",
            f"{len(v.mismatches):,}",
            "ok" if v.ok else "FAIL",
        )
        for v in report.verify.values()
    ]
    _print_table(out, vheader, vrows)
    for v in report.verify.values():
        if v.source_count != v.read:
            print(
                f"{v.collection}: the source holds {v.source_count:,} documents now, "
                f"{v.read:,} were read (written or deleted meanwhile?)",
                file=out,
            )
        if v.missing_ids:
            print(f"{v.collection}: missing in PostgreSQL: {', '.join(v.missing_ids)}", file=out)
        for m in v.mismatches[:10]:
            print(f"{v.collection} _id {m.id} differs: {'; '.join(m.differences[:5])}", file=out)
    print("verified" if report.verified else "VERIFY FAILED", file=out)


def _print_table(out: TextIO, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Counts under their names: the first column left-aligned, the numbers right-aligned."""
    for line in table_lines(header, rows, right_align=True):
        print(line, file=out)
