"""Scores in the store's scale, "higher is better": cosine similarity (inner product of unit
vectors) for ``metric="cosine"``, the inner product for ``"ip"``, the negative squared L2 distance
for ``"l2"``. The FAISS wrapper, the models, the rankings and training's loss score through here."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("cosine", "ip", "l2")


def scores_from_dots(dots: Any, metric: str, vector_sq: Any = None, query_sq: Any = None) -> Any:
    """Store-scale scores from inner products ``dots`` (m, n), with plain arithmetic only, so NumPy
    arrays and torch tensors alike: ``dots`` for cosine and ip; for l2 ``-(|q|^2 - 2 q.v + |v|^2)``
    from ``vector_sq`` (1, n) and ``query_sq`` (m, 1). Without ``query_sq`` the ``|q|^2`` term is left
    out (``2 q.v - |v|^2``): constant per query, it changes no ranking and no softmax."""
    if metric != "l2":
        return dots
    if query_sq is None:
        return 2.0 * dots - vector_sq
    return -(query_sq - 2.0 * dots + vector_sq)


def plain_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Store-scale scores of ``queries`` (m, d) against ``vectors`` (n, d) -> (m, n)."""
    dots = queries @ vectors.T
    if metric != "l2":
        return dots
    q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
    v_sq = np.einsum("ij,ij->i", vectors, vectors)[None, :]
    return scores_from_dots(dots, metric, v_sq, q_sq)
