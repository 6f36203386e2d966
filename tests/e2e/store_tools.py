"""The chart's store tools pod (`storeTools.enabled`), driven as an operator drives it.

Every command runs through `kubectl exec deploy/<release>-store-tools`, so it
connects from inside the cluster with what the chart wired into the pod: the
datastore ConfigMap, the client certificate laid out by `fix-cert-permissions`
and kept current by `client-cert-refresher`, `verify-full` against the
Service name.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.diagnostics import kubectl

CONTAINER = "store-tools"


@dataclass(frozen=True)
class StoreTools:
    """`kubectl exec` into the store tools Deployment of one release."""

    kubeconfig: Path
    namespace: str
    release: str

    @property
    def deployment(self) -> str:
        return f"{self.release}-store-tools"

    def argv(self, *command: str) -> list[str]:
        binary = kubectl()
        assert binary is not None, "kubectl not found (.bin/kubectl or PATH)"
        return [
            binary,
            "--kubeconfig",
            str(self.kubeconfig),
            "exec",
            "-n",
            self.namespace,
            f"deploy/{self.deployment}",
            "-c",
            CONTAINER,
            "--",
            *command,
        ]

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command in the pod; the result is returned whatever its exit code."""
        return subprocess.run(
            self.argv(*command), capture_output=True, text=True, check=False, timeout=timeout
        )

    def health(self) -> dict[str, Any]:
        """`nvsentinel-store health --json` in the pod, parsed (exit 1 = unhealthy, still JSON)."""
        result = self.run("nvsentinel-store", "health", "--json")
        assert result.returncode in (0, 1), (result.returncode, result.stdout, result.stderr)
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def read_file(self, path: str) -> str:
        result = self.run("cat", path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def watch(self, collection: str, client_name: str) -> Watch:
        """A `nvsentinel-store watch` running in the pod until closed."""
        argv = self.argv(
            "nvsentinel-store", "watch", "--collection", collection, "--client-name", client_name
        )
        return Watch(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))


@dataclass
class Watch:
    """A running `watch`: its NDJSON lines arrive on a queue read by a thread."""

    process: subprocess.Popen[bytes]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(
            target=self._pump, args=(self.process.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(target=self._collect_stderr, daemon=True).start()

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str]) -> None:
        for raw in stream:
            into.put(raw.decode())

    def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.stderr.append(raw.decode())

    def next_event(self, matches: Any, timeout: float = 60) -> dict[str, Any]:
        """The next printed event for which ``matches(event)`` holds."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"watch exited {self.process.returncode}: {''.join(self.stderr)}"
            )
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            event: dict[str, Any] = json.loads(line)
            if matches(event):
                return event
            seen.append(f"{event.get('operationType')} {event.get('documentKey')}")
        raise AssertionError(
            f"the watch printed no matching event within {timeout:.0f}s; "
            f"other events: {seen}; stderr: {''.join(self.stderr)}"
        )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
