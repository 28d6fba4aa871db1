"""Training inputs checked and split: query vectors and relevance validated against the store,
seeded folds (cross-validation) or one held-out split, and the nodes memory learns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llama_index_deepmemory.deep_memory.base import StoreView
from llama_index_deepmemory.deep_memory.training.options import TrainOptions
from llama_index_deepmemory.relevance import Relevance, validate_relevance


@dataclass
class _Split:
    queries: np.ndarray
    relevance: Relevance
    texts: list[str] | None = None  # query strings, when known (keyword re-scoring needs them)


def _memory_ids(relevance: Relevance) -> list[str]:
    """Relevant ids in first-seen order (deterministic)."""
    seen: dict[str, None] = {}
    for pairs in relevance:
        for node, w in pairs:
            if w > 0:
                seen.setdefault(node, None)
    return list(seen)


SMALL_SET_QUERIES = 200  # below this many queries the default is 5 folds
SINGLE_SPLIT_QUERIES = 500  # from this many on, one validation_fraction split (>= 50 queries at 0.1)


def _fold_count(n_queries: int, options: TrainOptions) -> int:
    """Folds to cross-validate over: ``validation_folds`` or the default, at most one per query.

    The default cross-validates small sets, where one split holds too few queries for the gate
    to ever fire; on SciFact (809 queries) 3 or 5 folds scored no better than one split and
    took 3-5x longer, so large sets keep the single split.
    """
    folds = options.validation_folds
    if folds is None and options.validation_fraction == 0:
        folds = 1  # the caller asked for no held-out queries
    if folds is None:
        folds = 5 if n_queries < SMALL_SET_QUERIES else 3 if n_queries < SINGLE_SPLIT_QUERIES else 1
    return max(1, min(folds, n_queries))


@dataclass
class _Fold:
    """Training and validation queries of one fold (``held_out`` False: validation is training)."""

    train: _Split
    val: _Split
    held_out: bool


def _split_queries(
    query_vectors: np.ndarray, relevance: Relevance, options: TrainOptions, texts: list[str] | None = None
) -> list[_Fold]:
    """Seeded folds. One fold: the old (train, validation_fraction) split, validation falling back
    to the training queries when none is held out. K folds: every query validates exactly once."""
    m = len(relevance)
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(m)

    def take(idx: np.ndarray) -> _Split:
        return _Split(query_vectors[idx], [relevance[i] for i in idx], None if texts is None else [texts[i] for i in idx])

    n_folds = _fold_count(m, options)
    if n_folds > 1:
        folds = []
        for k in range(n_folds):
            val_idx = np.sort(order[k::n_folds])
            train_idx = np.sort(np.setdiff1d(order, val_idx))
            folds.append(_Fold(take(train_idx), take(val_idx), True))
        return folds
    n_val = int(round(options.validation_fraction * m))
    if options.validation_fraction > 0:
        n_val = min(max(n_val, 1), m - 1)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train = take(train_idx)
    return [_Fold(train, take(val_idx), True) if n_val else _Fold(train, train, False)]


def _check_inputs(store: StoreView, query_vectors: np.ndarray, relevance: Relevance) -> tuple[np.ndarray, Relevance]:
    """The query vectors as float32 and the relevance validated against the store."""
    if len(store) == 0:
        raise ValueError("the store is empty: add nodes before training Deep Memory")
    queries = np.asarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"query_vectors must be a 2-D array (queries, dim), got shape {queries.shape}")
    if len(queries) != len(relevance):
        raise ValueError(f"got {len(queries)} query vectors but {len(relevance)} relevance lists; pass one per query")
    if len(queries) < 2:
        raise ValueError(f"Deep Memory training needs at least 2 queries, got {len(queries)}")
    if store.dim is not None and queries.shape[1] != store.dim:
        raise ValueError(f"query vectors have dim {queries.shape[1]} but the store holds dim {store.dim}")
    if not np.isfinite(queries).all():
        raise ValueError("query_vectors contain NaN or infinite values")
    _, relevance = validate_relevance(None, relevance, known_ids=store.missing_ids, n_queries=len(queries))
    return queries, relevance
