"""Retrieval metrics over ranked id lists and weighted relevance (numpy only).

``ranked_ids[i]`` is the list of node ids retrieved for query ``i``, best first.
``relevance[i]`` is ``[(node_id, weight), ...]``: the relevant nodes of query ``i`` with a
non-negative weight (graded relevance; use 1.0 everywhere for binary relevance). An id that
appears twice in ``relevance[i]`` keeps its largest weight; an id retrieved twice counts once,
at its best rank. A relevance weight of 0 means "listed but not relevant".

Definitions (``w(d)`` the weight of node ``d``, ``R`` the relevant set, ``w > 0``):

- ``recall@k``   = sum of ``w`` over the top-k / sum of ``w`` over ``R`` (plain recall when all
  weights are equal, as in Activeloop's Deep Memory evaluation).
- ``hit_rate@k`` = 1 when any node of ``R`` is in the top-k, else 0.
- ``mrr@k``      = 1 / rank of the first node of ``R`` within the top-k, else 0.
- ``ndcg@k``     = DCG / ideal DCG with linear gain ``w`` and discount ``log2(rank + 1)``
  (the trec_eval / BEIR convention).

Every function returns the mean over queries, or one value per query with ``per_query=True``.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

from llama_index_deepmemory.relevance import check_pair

logger = logging.getLogger(__name__)

RankedIds = Sequence[Sequence[str]]
Relevance = Sequence[Sequence[tuple[str, float]]]

METRIC_NAMES = ("recall", "hit_rate", "mrr", "ndcg")


def relevance_weights(relevance_row: Iterable[tuple[str, float]], query_index: int = 0) -> dict[str, float]:
    """``{id: weight}`` of one query's relevance list, each entry checked by
    :func:`llama_index_deepmemory.relevance.check_pair` (the one relevance rule: weights finite and >= 0)."""
    weights: dict[str, float] = {}
    for j, item in enumerate(relevance_row):
        node_id, weight = check_pair(item, f"relevance[{query_index}][{j}]")
        weights[node_id] = max(weight, weights.get(node_id, 0.0))
    return weights


def gain_matrix(ranked_ids: RankedIds, relevance: Relevance, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Gains ``(m, min(k, longest list))``: the weight of the node at each rank (0 past the end of
    a short list; ranks past every list hold no gain, so a huge ``k`` allocates nothing more), and
    per query the relevance weights sorted best first (for totals and ideal DCG)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if len(ranked_ids) != len(relevance):
        raise ValueError(
            f"got {len(ranked_ids)} ranked id lists but {len(relevance)} relevance lists; pass one of each "
            "per query"
        )
    if len(relevance) == 0:
        raise ValueError("no queries to score: ranked_ids and relevance are empty")
    k = int(k)
    longest = max((len(ranked) for ranked in ranked_ids if not isinstance(ranked, str)), default=0)
    gains = np.zeros((len(relevance), max(1, min(k, longest))), dtype=np.float64)
    ideal: list[np.ndarray] = []
    for i, (ranked, row) in enumerate(zip(ranked_ids, relevance)):
        if isinstance(ranked, str):
            raise TypeError(f"ranked_ids[{i}] is the string {ranked!r}; pass a list of node ids per query")
        weights = relevance_weights(row, i)
        positive = np.array(sorted((w for w in weights.values() if w > 0), reverse=True), dtype=np.float64)
        if positive.size == 0:
            raise ValueError(
                f"query {i} has no relevant node with a positive weight (relevance[{i}]={list(row)!r}); "
                "drop the query or give its relevant nodes a weight > 0"
            )
        ideal.append(positive)
        seen: set[str] = set()
        for rank, node_id in enumerate(ranked[:k]):
            node_id = str(node_id)
            if node_id in seen:
                continue
            seen.add(node_id)
            gains[i, rank] = weights.get(node_id, 0.0)
    return gains, ideal


def _mean_or_rows(values: np.ndarray, per_query: bool) -> float | np.ndarray:
    return values if per_query else float(values.mean())


def recall_at_k(
    ranked_ids: RankedIds, relevance: Relevance, k: int, *, per_query: bool = False
) -> float | np.ndarray:
    """Weighted recall@k: share of the relevance weight found in the top-k."""
    gains, ideal = gain_matrix(ranked_ids, relevance, k)
    totals = np.array([row.sum() for row in ideal], dtype=np.float64)
    return _mean_or_rows(gains.sum(axis=1) / totals, per_query)


def hit_rate_at_k(
    ranked_ids: RankedIds, relevance: Relevance, k: int, *, per_query: bool = False
) -> float | np.ndarray:
    """1 for a query when any relevant node is in its top-k."""
    gains, _ = gain_matrix(ranked_ids, relevance, k)
    return _mean_or_rows((gains > 0).any(axis=1).astype(np.float64), per_query)


def mrr_at_k(
    ranked_ids: RankedIds, relevance: Relevance, k: int, *, per_query: bool = False
) -> float | np.ndarray:
    """Reciprocal rank of the first relevant node within the top-k (0 when none)."""
    gains, _ = gain_matrix(ranked_ids, relevance, k)
    hit = gains > 0
    first = hit.argmax(axis=1)
    values = np.where(hit.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _mean_or_rows(values, per_query)


def ndcg_at_k(
    ranked_ids: RankedIds, relevance: Relevance, k: int, *, per_query: bool = False
) -> float | np.ndarray:
    """nDCG@k with linear gain (the weight) and ``log2(rank + 1)`` discount."""
    gains, ideal = gain_matrix(ranked_ids, relevance, k)
    depth = max(gains.shape[1], *(min(row.size, k) for row in ideal))
    discounts = 1.0 / np.log2(np.arange(2, depth + 2, dtype=np.float64))
    dcg = gains @ discounts[: gains.shape[1]]
    idcg = np.array([row[:k] @ discounts[: min(row.size, k)] for row in ideal])
    return _mean_or_rows(dcg / idcg, per_query)


_METRIC_FUNCTIONS = {"recall": recall_at_k, "hit_rate": hit_rate_at_k, "mrr": mrr_at_k, "ndcg": ndcg_at_k}


def retrieval_metrics(
    ranked_ids: RankedIds,
    relevance: Relevance,
    ks: Sequence[int] = (1, 3, 5, 10),
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[str, float]:
    """Mean metrics as ``{"recall@1": ..., "ndcg@10": ...}`` for every metric and k."""
    unknown = [name for name in metrics if name not in _METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    return {
        f"{name}@{int(k)}": float(_METRIC_FUNCTIONS[name](ranked_ids, relevance, k))
        for name in metrics
        for k in ks
    }
