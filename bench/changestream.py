"""Change stream benchmarks: ``python -m bench.changestream [--quick] [--write FILE]``.

Starts its own PostgreSQL (the datastore tests' server: 127.0.0.1, TLS only,
client certificates), measures

1. write throughput at 1 and 8 clients on NVSentinel's own schema, on ours,
   and on ours with notifications off,
2. events/s drained by one consumer from a pre-filled changelog,
3. commit-to-delivery latency p50/p99 at 10, 100 and 1,000 events/s,
4. lost changes of a naive ``id > last`` poller versus the change stream under
   8 writers holding their transactions open,

prints progress on stderr and a Markdown report on stdout, optionally writes
the report to a file, and stops the server at the end (also on errors and
Ctrl-C). A full run takes about 5 minutes on 2 cores; ``--quick`` under a
minute (a smoke run: numbers not comparable).
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

from bench.measure import (
    FULL,
    QUICK,
    Progress,
    measure_drain,
    measure_latency,
    measure_loss,
    measure_writes,
)
from bench.report import Report, describe_machine, load_average, render, summary_rows
from bench.server import running_server


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
        help="short smoke run (< 1 minute); its numbers are not comparable",
    )
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(quick: bool, command: str, log: Progress) -> Report:
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
        latencies = measure_latency(bs, plan, log)
        loss = measure_loss(bs, plan, log)
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
        latencies=latencies,
        loss=loss,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.changestream", *shown])
    signal.signal(signal.SIGTERM, _raise_interrupt)
    log = Progress()
    try:
        report = run(args.quick, command, log)
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
