"""A deterministic bag-of-words embedding for tests (no model needed)."""

from __future__ import annotations

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding


class HashEmbedding(BaseEmbedding):
    """Deterministic 16-dim bag-of-words vectors (no model needed)."""

    def _vector(self, text: str) -> list[float]:
        v = np.zeros(16)
        for word in text.lower().split():
            v[sum(map(ord, word)) % 16] += 1.0
        return (v + 1e-3).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)
