"""Validation and selection: candidates evaluated through the ranking that serves queries, pooled
across folds, the admissible best kept, and the significance gate on the final gain."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.training.splits import _Split
from llama_index_deepmemory.metrics import ndcg_at_k, recall_at_k
from llama_index_deepmemory.relevance import Relevance


METRIC_NAMES = ("recall@1", "recall@10", "ndcg@10")


def ranking_metrics(ranked: list[list[str]], relevance: Relevance) -> dict[str, float]:
    """Mean recall@1, recall@10 and nDCG@10 (definitions in :mod:`llama_index_deepmemory.metrics`)."""
    return {
        "recall@1": float(recall_at_k(ranked, relevance, 1)),
        "recall@10": float(recall_at_k(ranked, relevance, 10)),
        "ndcg@10": float(ndcg_at_k(ranked, relevance, 10)),
    }


def significant_gain(before: np.ndarray, after: np.ndarray, min_improvement: float, gate_z: float) -> bool:
    """True when the mean per-query gain beats ``min_improvement`` and ``gate_z`` standard errors.

    The standard-error margin guards against a validation "gain" made of one or two lucky queries
    (early stopping picks the best of many epochs on the same split, which inflates it).
    """
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = float(diff.mean())
    stderr = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return mean > min_improvement and mean > gate_z * stderr


def _not_clearly_better(chosen: _Evaluation, simple: _Evaluation, floor: float) -> bool:
    """One-standard-error rule: the simpler candidate wins unless ``chosen`` beats it by more than
    one standard error of the per-query differences (with few queries, picking the best of many
    trained variants on validation overrates it) and the simpler one is admissible."""
    if float(simple.per_query_unseen.mean()) < floor - 1e-9:
        return False
    diff = chosen.per_query - simple.per_query
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) <= se


@dataclass
class _Evaluation:
    """Validation metrics, per-query nDCG@10, and per-query nDCG@10 with each query's own
    relevant nodes forgotten by the model (how it treats queries about nodes it never saw)."""

    metrics: dict[str, float]
    per_query: np.ndarray
    per_query_unseen: np.ndarray


def _evaluate(
    store: StoreView, split: _Split, model: DeepMemoryModel | None, cache: dict | None = None
) -> _Evaluation:
    """``model`` (None: the plain store) on ``split`` through :func:`ranking.rank`, the ranking that
    serves queries (``cache``: plain searches shared by candidates with the same adapter)."""
    cache = {} if cache is None else cache
    ranked = rank(store, split.queries, model, 10, texts=split.texts, plain_cache=cache)[1]
    per_query = np.asarray(ndcg_at_k(ranked, split.relevance, 10, per_query=True))
    per_query_unseen = per_query
    if model is not None:
        forget = [{node for node, _ in pairs} for pairs in split.relevance]
        ranked_unseen = rank(store, split.queries, model, 10, texts=split.texts, forget=forget, plain_cache=cache)[1]
        per_query_unseen = np.asarray(ndcg_at_k(ranked_unseen, split.relevance, 10, per_query=True))
    return _Evaluation(ranking_metrics(ranked, split.relevance), per_query, per_query_unseen)


class _Selection:
    """Best validation result so far.

    A candidate wins on overall nDCG@10, but only if it stays at least as good as no model
    (minus ``tolerance``) when every validation query's own relevant nodes are forgotten by the
    model: memory must not crowd out nodes it has never seen, and the adapter must not hurt.
    """

    def __init__(self, before: _Evaluation, tolerance: float) -> None:
        self.floor = float(before.per_query.mean()) - tolerance
        self.best = before
        self.score = before.metrics["ndcg@10"]

    def offer(self, candidate: _Evaluation) -> bool:
        """Keep the candidate when it is the best admissible one so far."""
        if float(candidate.per_query_unseen.mean()) < self.floor - 1e-9:
            return False
        if candidate.metrics["ndcg@10"] <= self.score:
            return False
        self.best, self.score = candidate, candidate.metrics["ndcg@10"]
        return True


def _pool(evaluations: Sequence[_Evaluation]) -> _Evaluation:
    """One evaluation over the union of the folds' validation queries (means weighted by size)."""
    if len(evaluations) == 1:
        return evaluations[0]
    sizes = np.asarray([len(e.per_query) for e in evaluations], dtype=np.float64)
    metrics = {
        name: float(np.dot([e.metrics[name] for e in evaluations], sizes) / sizes.sum())
        for name in evaluations[0].metrics
    }
    return _Evaluation(
        metrics,
        np.concatenate([e.per_query for e in evaluations]),
        np.concatenate([e.per_query_unseen for e in evaluations]),
    )
