"""The one top k: scores best first with equal scores in input order (``np.argsort(-s, kind="stable")``),
and the per-row top k of a score matrix with its ids. NumPy only."""

from __future__ import annotations

import numpy as np


def stable_order(scores: np.ndarray, depth: int | None = None) -> np.ndarray:
    """Positions of ``scores`` (1-D, or each row of a 2-D array) best first, equal scores in input
    order; only the first ``depth`` when given."""
    order = np.argsort(-np.asarray(scores), axis=-1, kind="stable")
    return order if depth is None else order[..., :depth]


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row top ``k`` of (m, n) ``scores`` with their ``ids`` (m, n), best first: the k best are
    picked with ``argpartition`` (which of several scores tied at the k-th place is kept is
    unspecified), then put in :func:`stable_order`."""
    n = scores.shape[1]
    if n > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(scores), 0), int)
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = stable_order(scores)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
