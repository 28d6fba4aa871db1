"""Which of a model's override ids a backend can return, remembered until the backend changes.

The ranking asks ``usable_ids(override_ids, filters)`` on every Deep Memory query; a model names
the same ids query after query (hundreds of them), so backends answer from here until their next
write, keyed by the ids, the restriction and the backend's version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

import numpy as np


class UsableCache:
    """A bounded, thread-safe map ``(ids, restriction key, version) -> usable`` (read-only arrays).

    The same id tuple object (a model hands out one) is found without hashing its ids: right
    after a vector scan, touching hundreds of strings costs more than the rest of the merge."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        # (id of the tuple or hash of its ids, restriction, version) -> (the tuple, usable)
        self._entries: OrderedDict[tuple[int, Hashable, int], tuple[tuple[str, ...], np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, node_ids: tuple[str, ...], restriction: Hashable, version: int) -> np.ndarray | None:
        """The cached answer for exactly these ids, or None."""
        hit = self._entries.get((id(node_ids), restriction, version))  # one dict read: atomic
        if hit is not None and hit[0] is node_ids:
            return hit[1]
        hit = self._entries.get((hash(node_ids), restriction, version))
        return hit[1] if hit is not None and hit[0] == node_ids else None

    def put(self, node_ids: tuple[str, ...], restriction: Hashable, version: int, usable: np.ndarray) -> np.ndarray:
        """Remember ``usable`` (made read-only) and return it; the oldest entries go past the size.
        The entry keeps ``node_ids`` alive, so its ``id`` names no other tuple meanwhile."""
        usable = np.asarray(usable, dtype=bool)
        usable.flags.writeable = False
        with self._lock:
            self._entries[(id(node_ids), restriction, version)] = (node_ids, usable)
            self._entries[(hash(node_ids), restriction, version)] = (node_ids, usable)
            while len(self._entries) > 2 * self._size:
                self._entries.popitem(last=False)
        return usable

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
