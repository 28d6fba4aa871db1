"""What the embedded store (:class:`~.faiss_store.FaissStore`) hands the Deep Memory ranking of a
query it is answering (a lock-free view of itself and the query's restriction as slots), and what
it hands training over an approximate index (a view searching exactly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.vector_stores.types import MetadataFilters

    from llama_index_deepmemory.engine.faiss_store import FaissStore


class HeldView:
    """The store's ``StoreView`` reads without taking its lock, for the ranking of a query that
    already holds it (right after a vector scan, each lock round trip costs tens of µs)."""

    __slots__ = ("_store",)

    def __init__(self, store: "FaissStore") -> None:
        self._store = store

    def __len__(self) -> int:
        return len(self._store._table)

    def search_vectors(
        self, queries: np.ndarray, k: int, filters: "MetadataFilters | Slots | None" = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        return self._store._search_ids(queries, k, filters)

    def usable_ids(self, node_ids: Sequence[str], filters: "MetadataFilters | Slots | None" = None) -> np.ndarray:
        return self._store._usable_ids(node_ids, filters)

    def search_rows(
        self, queries: np.ndarray, k: int, filters: "MetadataFilters | Slots | None", index: Any
    ) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]] | None:
        return self._store._search_rows(queries, k, filters, index)

    def search_slots(
        self, queries: np.ndarray, k: int, filters: "MetadataFilters | Slots | None", override_ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]]:
        return self._store._search_slots(queries, k, filters, override_ids)

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        return self._store._texts_of(node_ids)


class ExactView:
    """The store as training reads it over an approximate index: every plain search exact (its
    flat storage scanned, no copy), everything else the store's own."""

    def __init__(self, store: "FaissStore") -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __len__(self) -> int:
        return len(self._store)

    def search_vectors(
        self, queries: np.ndarray, k: int, deep_memory: bool = False, texts: Any = None,
        filters: "MetadataFilters | None" = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Exact plain top ``k`` of prepared queries (``deep_memory`` must be False: training
        ranks with ``deep_memory.ranking.rank`` over this view)."""
        if deep_memory:
            raise ValueError("ExactView searches plain only; rank with deep_memory.ranking.rank(view, model, ...)")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with self._store._lock.read():
            return self._store._search_ids(q, k, filters, exact=True)


@dataclass(frozen=True, eq=False)
class Slots:
    """A query's restriction (node ids, document ids, filters) resolved to the slots it allows:
    what :meth:`FaissStore.query` hands the ranking as ``filters``."""

    slots: np.ndarray
