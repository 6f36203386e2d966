"""What wakes a waiting change stream: NVSentinel's notifications and the process's own writes."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Final


class Doorbell:
    """A wake-up a stream can wait for with ``select``, next to its connection's socket."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def ring(self) -> None:
        # A full buffer already means "wake up".
        with contextlib.suppress(BlockingIOError, OSError):
            self._writer.send(b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._reader.recv(4096):
                pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class Wakeup:
    """Wakes the streams of one process when that process writes a collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bells: dict[str, set[Doorbell]] = {}

    def notify(self, collection: str) -> None:
        with self._lock:
            bells = list(self._bells.get(collection, ()))
        for bell in bells:
            bell.ring()

    def subscribe(self, collection: str, bell: Doorbell) -> None:
        with self._lock:
            self._bells.setdefault(collection, set()).add(bell)

    def unsubscribe(self, collection: str, bell: Doorbell) -> None:
        with self._lock:
            self._bells.get(collection, set()).discard(bell)


#: NVSentinel's change notification channel (``log_table_changes``, migration 0001).
NOTIFY_CHANNEL: Final = "nvsentinel_changes"


def notifies_collection(payload: str, collection: str) -> bool:
    """Whether a ``nvsentinel_changes`` payload is a change of ``collection``."""
    try:
        note = json.loads(payload)
    except ValueError:
        return False
    return isinstance(note, dict) and note.get("table") == collection
