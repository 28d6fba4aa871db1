"""A read-only ``StoreView`` over fixed arrays, searched exactly in place (chunked BLAS products,
:func:`~llama_index_deepmemory.exact_search.exact_top_k`: no second copy of the corpus).

Training over a wrapped engine reads the corpus once (it needs every vector for the whole-corpus
softmax anyway) and validates over this exact copy: the same :func:`deep_memory.ranking.rank`, with
plain searches that cost a matrix product instead of an engine round trip each. Benchmarks use it
to rank fixed embeddings.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

import numpy as np

from llama_index_deepmemory import bf16_search
from llama_index_deepmemory.exact_search import exact_top_k


class ArrayStoreView:
    """Ids, unit vectors (cosine) and optional texts, searched exactly."""

    metric = "cosine"
    embed_model = None

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str] | None = None) -> None:
        self.ids = list(ids)
        self.texts = list(texts) if texts is not None else None
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.position = {node: i for i, node in enumerate(self.ids)}
        self._bf16: bf16_search.Bf16Copy | None = None  # built by the first search that gains from it
        self._bf16_lock = threading.Lock()  # concurrent searches build one copy

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        return [node for node in node_ids if node not in self.position]

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        return self.vectors[[self.position[node] for node in node_ids]]

    def iter_vectors(self, batch_size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        for start in range(0, len(self.ids), batch_size):
            yield self.ids[start : start + batch_size], self.vectors[start : start + batch_size]

    def iter_texts(self, batch_size: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        if self.texts is None:  # no texts: Deep Memory builds no keyword index
            return
        for start in range(0, len(self.ids), batch_size):
            yield self.ids[start : start + batch_size], self.texts[start : start + batch_size]

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32)

    def usable_ids(self, node_ids: Sequence[str], filters: Any = None) -> np.ndarray:
        _no_filters(filters)
        return np.asarray([node in self.position for node in node_ids], dtype=bool)

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        if self.texts is None:
            return [None] * len(node_ids)
        return [self.texts[self.position[n]] if n in self.position else None for n in node_ids]

    def search_vectors(
        self, queries: np.ndarray, k: int, deep_memory: bool = False, texts: Any = None, filters: Any = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        _no_filters(filters)
        if deep_memory:
            raise ValueError("ArrayStoreView ranks plain only; rank with deep_memory.ranking.rank(view, model, ...)")
        scores, rows = self._top_k(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = self.ids
        return scores, [[ids[j] for j in row] for row in rows.tolist()]

    def _top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` (a row shorter than asked holds every node): through a bf16 prefilter
        when the search is big enough and the CPU multiplies bf16 fast (the same rows and scores;
        the bf16 copy, half the vectors' memory, is kept for later searches), else float32."""
        if queries.ndim == 2 and queries.shape[1:] == self.vectors.shape[1:] and bf16_search.worth_it(
            *self.vectors.shape, len(queries), int(k)
        ):
            if self._bf16 is None and bf16_search.fast_bf16():
                with self._bf16_lock:
                    if self._bf16 is None:
                        self._bf16 = bf16_search.Bf16Copy(self.vectors)
            if self._bf16 is not None:
                found = bf16_search.prefiltered_top_k(self.vectors, self._bf16, queries, k)
                if found is not None:
                    return found
        return exact_top_k(self.vectors, queries, k)


def _no_filters(filters: Any) -> None:
    if filters is not None:
        raise ValueError("ArrayStoreView holds no metadata to filter on")
