"""The documents ``--verify`` compares: a uniform sample of those imported."""

from __future__ import annotations

import math
import random


class Sampler:
    """A uniform sample of up to ``size`` documents (reservoir sampling, Li's algorithm L).

    Draws a random number only when an item is taken, not for every item seen.
    ``items`` holds ``(id, JSON text)`` pairs.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seen = 0
        self.items: list[tuple[str, str]] = []
        self._rng = random.Random(seed)
        self._w = 1.0
        self._next = size

    def _skip(self) -> None:
        self._w *= math.exp(math.log(self._rng.random() or 1e-300) / self.size)
        gap = math.log(self._rng.random() or 1e-300) / math.log1p(-self._w)
        self._next += int(gap) + 1

    def offer(self, doc_id: str, document: str) -> None:
        index = self.seen
        self.seen += 1
        if index < self.size:
            self.items.append((doc_id, document))
            if self.seen == self.size:
                self._skip()
            return
        if index == self._next:
            self.items[self._rng.randrange(self.size)] = (doc_id, document)
            self._skip()
