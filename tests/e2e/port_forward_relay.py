"""A local TCP relay in front of a Kubernetes port-forward.

The kubernetes client's `portforward` gives an in-process socket (one end of a
socketpair), which psycopg and pymongo cannot use: they dial host and port
themselves. The relay listens on 127.0.0.1:<free port>, and for every accepted
connection opens a new port-forward stream to the pod and pumps bytes both
ways until either side closes (the opener is a parameter, so the relay can
stand in front of any TCP server too). Like `kubectl port-forward svc/NAME`, a Service
is resolved to one ready pod behind it and the Service port to the pod port.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.stream import portforward

_CHUNK = 65536

#: Opens one stream to the far end (a socket-like object with recv, sendall, fileno).
Opener = Callable[[], Any]


@dataclass(frozen=True)
class PodPort:
    """The pod and container port a Service port leads to."""

    pod: str
    port: int


def resolve_service_port(
    core: client.CoreV1Api, namespace: str, service: str, service_port: int
) -> PodPort:
    """The ready pod behind ``service`` and the pod port ``service_port`` targets."""
    svc = core.read_namespaced_service(service, namespace)
    ports = [p for p in svc.spec.ports or [] if p.port == service_port]
    if not ports:
        raise LookupError(f"service {namespace}/{service} has no port {service_port}")
    target: Any = ports[0].target_port if ports[0].target_port is not None else service_port
    selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
    if not selector:
        raise LookupError(f"service {namespace}/{service} has no selector to find its pods")
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        if pod.status.phase != "Running" or conditions.get("Ready") != "True":
            continue
        if isinstance(target, int) or str(target).isdigit():
            return PodPort(pod.metadata.name, int(target))
        for container in pod.spec.containers:
            for cport in container.ports or []:
                if cport.name == target:
                    return PodPort(pod.metadata.name, cport.container_port)
        raise LookupError(f"pod {pod.metadata.name} has no container port named {target}")
    raise LookupError(f"no ready pod behind service {namespace}/{service} ({selector})")


def _pump(local: socket.socket, remote: Any, stop: threading.Event) -> None:
    """Copy bytes between the two sockets until one closes or the relay stops."""
    try:
        while not stop.is_set():
            readable, _, _ = select.select([local, remote], [], [], 0.5)
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                (remote if sock is local else local).sendall(data)
    except OSError:
        return
    finally:
        for sock in (local, remote):
            with contextlib.suppress(OSError):
                sock.close()


def pod_port_opener(api: client.ApiClient, namespace: str, pod: str, port: int) -> Opener:
    """Opens a new port-forward stream to ``pod``:``port`` each time it is called."""

    def open_stream() -> Any:
        core = client.CoreV1Api(api)
        forward = portforward(
            core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
        )
        remote = forward.socket(port)
        remote.setblocking(True)
        return remote

    return open_stream


@dataclass
class PortForwardRelay:
    """Listen on 127.0.0.1 and pump each accepted connection into a stream ``open_stream`` opens.

    ``target`` names the far end in error messages.
    """

    open_stream: Opener
    target: str
    _listener: socket.socket | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    errors: list[str] = field(default_factory=list, init=False)

    @property
    def local_port(self) -> int:
        if self._listener is None:
            raise RuntimeError("relay not started")
        return int(self._listener.getsockname()[1])

    def start(self) -> PortForwardRelay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.5)
        self._listener = listener
        accept = threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                local, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            local.setblocking(True)
            try:
                remote = self.open_stream()
            except Exception as exc:  # reported to the test through `errors`
                self.errors.append(f"stream to {self.target}: {exc}")
                local.close()
                continue
            pump = threading.Thread(
                target=_pump, args=(local, remote, self._stop), name="relay-pump", daemon=True
            )
            pump.start()
            self._threads.append(pump)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> PortForwardRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def relay_to_service(
    api: client.ApiClient, namespace: str, service: str, service_port: int
) -> PortForwardRelay:
    """A started relay to the ready pod behind ``service``:``service_port``."""
    target = resolve_service_port(client.CoreV1Api(api), namespace, service, service_port)
    opener = pod_port_opener(api, namespace, target.pod, target.port)
    return PortForwardRelay(opener, f"pod {namespace}/{target.pod}:{target.port}").start()
