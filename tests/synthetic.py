"""Seeded synthetic retrieval tasks shared by the Deep Memory tests."""

from __future__ import annotations

import numpy as np
from llama_index.core.schema import TextNode

from llama_index_deepmemory.store import DeepMemoryVectorStore


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class RotationTask:
    """Seeded documents; each query is a rotated, noisy copy of its one relevant document (weight 1)."""

    def __init__(self, n_docs: int = 150, dim: int = 16, n_queries: int = 120, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.docs = normalise(rng.normal(size=(n_docs, dim)))
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        targets = rng.integers(0, n_docs, size=n_queries)
        noise = 0.3 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim)
        self.queries = normalise(self.docs[targets] @ rotation.T + noise)
        self.ids = [f"node_{i}" for i in range(n_docs)]
        self.relevance = [[(self.ids[t], 1.0)] for t in targets]
        self.texts = [f"question {i}" for i in range(n_queries)]

    def store(self) -> DeepMemoryVectorStore:
        store = DeepMemoryVectorStore()
        store.add([TextNode(id_=i, text=f"document {i}", embedding=v.tolist()) for i, v in zip(self.ids, self.docs)])
        return store
