"""How much CPU other work took while a measurement ran.

The machine is shared (other helpers run test suites), and the load average
cannot tell their work from the benchmark's own 8 writers. This meter reads
the machine's busy time from ``/proc/stat`` and subtracts what the benchmark's
own processes used: this process and its reaped children (workers, pgbench)
and the PostgreSQL server it started (the postmaster, its reaped children and
its live backends). What is left, per second of wall time, is the CPU other
work took, in cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:9]]
    return sum(values) - values[3] - values[4]


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the rest follows the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _server_ticks(postmaster: int) -> int:
    """Postmaster (with its reaped children) plus its live children."""
    total = 0
    own = _proc_stat(postmaster)
    if own is not None:
        # After ')': state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state.
        total += sum(int(v) for v in own[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and int(stat[1]) == postmaster:
            total += int(stat[11]) + int(stat[12])
    return total


def _own_ticks() -> int:
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * _TICKS)


@dataclass
class CpuMeter:
    """Start with :meth:`start`, read with :meth:`others_cores`."""

    postmaster_pid: int
    _wall: float = 0.0
    _busy: int = 0
    _mine: int = 0

    def _mine_now(self) -> int:
        return _own_ticks() + _server_ticks(self.postmaster_pid)

    def start(self) -> CpuMeter:
        self._wall = time.monotonic()
        self._busy = _machine_busy_ticks()
        self._mine = self._mine_now()
        return self

    def others_cores(self) -> float:
        """Average cores used by processes other than the benchmark's since :meth:`start`."""
        wall = time.monotonic() - self._wall
        busy = _machine_busy_ticks() - self._busy
        mine = self._mine_now() - self._mine
        return max(0.0, (busy - mine) / _TICKS / wall) if wall > 0 else 0.0


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
