"""Scores in the store's scale, "higher is better": cosine similarity (inner product of unit
vectors) for ``metric="cosine"``, the inner product for ``"ip"``, the negative squared L2 distance
for ``"l2"``. The FAISS wrapper, the models and the rankings all score through here."""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "ip", "l2")


def plain_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Store-scale scores of ``queries`` (m, d) against ``vectors`` (n, d) -> (m, n)."""
    dots = queries @ vectors.T
    if metric == "l2":
        q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
        v_sq = np.einsum("ij,ij->i", vectors, vectors)[None, :]
        return -(q_sq - 2.0 * dots + v_sq)
    return dots
