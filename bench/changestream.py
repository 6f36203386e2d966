"""Change stream benchmarks: ``python -m bench.changestream [--quick] [--write FILE]``.

Starts its own PostgreSQL (the datastore tests' server: 127.0.0.1, TLS only,
client certificates), measures

1. write throughput at 1 and 8 clients, layer by layer: NVSentinel's own
   schema, the same with notifications off, ours, ours with notifications off,
2. events/s drained by one consumer from a pre-filled changelog,
3. side by side on the same out-of-order writers at 10, 100 and 1,000
   transactions/s: NVSentinel's own watcher (its Go store-client), our
   stream and a naive ``id > last`` poller; lost, duplicates and p50/p99/max
   commit-to-delivery for each,
4. what an idle reader costs (statements/s), notifications on and off,
5. how long a stream waits while 1,000,000 changes are pruned, in one
   transaction and in batches,

prints progress on stderr and a Markdown report on stdout, optionally writes
the report to a file, and stops the server at the end (also on errors and
Ctrl-C). A full run takes about 10 minutes on 2 cores; ``--quick`` about 2
(a smoke run: numbers not comparable). NVSentinel's watcher runs as
``.bin/nvsentinel-client-check`` (built by ``make setup``); its stderr goes
to a log file per run under ``--logs``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.measure import FULL, QUICK, Progress, measure_drain, measure_writes
from bench.prune import measure_prune
from bench.report import Report, describe_machine, load_average, render, summary_rows
from bench.server import running_server
from bench.side_by_side import measure_idle, measure_side_by_side


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.changestream",
        description=(
            "Benchmark the PostgreSQL change stream against the issue's targets on a "
            "PostgreSQL started for the run (loopback, TLS, client certificates). Needs "
            "Debian's PostgreSQL server binaries (make setup) and runs as root or as a "
            "user that may run initdb."
        ),
        epilog="Progress goes to stderr, the Markdown report to stdout.",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help="also write the report to FILE (Markdown)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run (about 2 minutes); its numbers are not comparable",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        default=Path("test-reports/bench"),
        help="where the NVSentinel watcher's logs go (default: %(default)s)",
    )
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(quick: bool, command: str, log: Progress, log_dir: Path) -> Report:
    plan = QUICK if quick else FULL
    load_start = load_average()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    log(f"starting PostgreSQL (load average {load_start})")
    with running_server() as bs:
        machine = describe_machine(bs.version)
        log(f"PostgreSQL {machine.postgresql} on 127.0.0.1:{bs.server.port}")
        meter = bs.cpu_meter()
        writes = measure_writes(bs, plan, log)
        drains = measure_drain(bs, plan, log)
        log_dir.mkdir(parents=True, exist_ok=True)
        side_by_side, alone = measure_side_by_side(bs, plan, log, log_dir)
        idle = measure_idle(bs, plan, log, log_dir)
        prunes = measure_prune(bs, plan, log)
        other_cpu = meter.others_cores()
        log(f"other work used {other_cpu:.2f} cores on average during the run")
        log("stopping PostgreSQL")
    return Report(
        command=command,
        date=date,
        quick=quick,
        plan=plan,
        machine=machine,
        load_start=load_start,
        load_end=load_average(),
        other_cpu=other_cpu,
        duration_s=log.elapsed,
        writes=writes,
        drains=drains,
        side_by_side=side_by_side,
        alone=alone,
        idle=idle,
        prunes=prunes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.changestream", *shown])
    signal.signal(signal.SIGTERM, _raise_interrupt)
    log = Progress()
    try:
        report = run(args.quick, command, log, args.logs)
    except KeyboardInterrupt:
        log("interrupted; the server was stopped")
        return 130
    text = render(report)
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        log(f"wrote {args.write}")
    for measurement, result, target, met in summary_rows(report):
        if met:
            verdict = "met" if met == "yes" else "NOT met"
            log(f"{measurement}: {result} (target {target}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
