"""Start worker processes, hand them a start signal, collect their results, always clean up."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import queue
import time
from collections.abc import Callable
from typing import Any

from nvsentinel_store.store import ClosingContext


class WorkerError(RuntimeError):
    """A worker process failed or did not answer in time."""


class Workers(ClosingContext):
    """A group of ``spawn`` processes sharing ``ready``/``results`` queues and ``go``/``stop``.

    Leaving the ``with`` block terminates whatever still runs (errors, Ctrl-C).
    """

    def __init__(self) -> None:
        self._ctx: multiprocessing.context.SpawnContext = multiprocessing.get_context("spawn")
        self.ready: multiprocessing.Queue[Any] = self._ctx.Queue()
        self.results: multiprocessing.Queue[Any] = self._ctx.Queue()
        self.go = self._ctx.Event()
        self.stop = self._ctx.Event()
        self._procs: list[multiprocessing.context.SpawnProcess] = []

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        proc = self._ctx.Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        self._procs.append(proc)

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.exitcode not in (None, 0):
                raise WorkerError(f"worker {proc.name} exited with code {proc.exitcode}")

    def _get(self, source: multiprocessing.Queue[Any], count: int, timeout: float) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(source.get(timeout=0.2))
                continue
            except queue.Empty:
                pass
            self._check_alive()
            if time.monotonic() > deadline:
                raise WorkerError(f"{len(got)} of {count} workers answered within {timeout:.0f} s")
        return got

    def wait_ready(self, count: int, timeout: float = 60.0) -> None:
        self._get(self.ready, count, timeout)

    def collect(self, count: int, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        return self._get(self.results, count, timeout)

    def check(self) -> None:
        """Raise if a worker has died."""
        self._check_alive()

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for q in (self.ready, self.results):
            q.close()
            q.cancel_join_thread()
