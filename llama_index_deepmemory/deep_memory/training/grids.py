"""The grids validation searches after the epochs: query keys (remembered training queries), keyword
(BM25) weights with the far-query rule, keywords on the plain store, and the per-query gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import StoreView
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.training.selection import _evaluate, _Evaluation, _pool
from llama_index_deepmemory.deep_memory.training.splits import _Fold, _memory_ids, _Split

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.training.trainer import _Context


def _add_keys(
    store: StoreView, model: AdapterMemoryModel, split: _Split, key_weight: float, key_threshold: float
) -> AdapterMemoryModel:
    """``model`` plus the queries of ``split`` remembered as keys, each linked to its relevant
    nodes (weight scaled to at most 1 per query); nodes not yet in memory join it with their
    stored vectors."""
    memory_ids = list(model.memory_ids)
    index = {node: i for i, node in enumerate(memory_ids)}
    extra = [node for node in _memory_ids(split.relevance) if node not in index]
    vectors = [model.memory_vectors]
    if extra:
        vectors.append(np.asarray(store.get_vectors(extra), dtype=np.float32).reshape(len(extra), model.dim))
        for node in extra:
            index[node] = len(memory_ids)
            memory_ids.append(node)
    link_key, link_node, link_weight = [], [], []
    for q, pairs in enumerate(split.relevance):
        top = max((w for _, w in pairs), default=0.0)
        for node, w in pairs:
            if w > 0:
                link_key.append(q)
                link_node.append(index[node])
                link_weight.append(w / top)
    return model.replace(
        memory_ids=memory_ids,
        memory_vectors=np.concatenate(vectors),
        key_vectors=model.transform_queries(split.queries),
        link_key=np.asarray(link_key, dtype=np.int64),
        link_node=np.asarray(link_node, dtype=np.int64),
        link_weight=np.asarray(link_weight, dtype=np.float32),
        key_weight=key_weight,
        key_threshold=key_threshold,
    )


def _key_grid(
    ctx: _Context, folds: Sequence[_Fold], models: Sequence[AdapterMemoryModel], caches: Sequence[dict]
) -> Iterator[tuple[tuple[float, float], _Evaluation]]:
    """Each (key weight, key threshold) of the options' grid with the pooled validation result of
    the fold ``models`` plus their training queries as keys (``caches``: each fold's plain searches)."""
    options = ctx.options
    keyed: list[AdapterMemoryModel] = []  # each fold's model with its keys, built once: the grid sets two numbers
    for threshold in options.key_thresholds:
        for weight in options.key_weights:
            ctx.check_stop()
            if not keyed:
                keyed = [_add_keys(ctx.store, model, f.train, weight, threshold) for f, model in zip(folds, models)]
            yield (weight, threshold), _pool([
                _evaluate(ctx.store, f.val, base.replace(key_weight=weight, key_threshold=threshold), cache)
                for f, base, cache in zip(folds, keyed, caches)
            ])


def _with_gate(model: AdapterMemoryModel, queries: np.ndarray, threshold: float, weight: float) -> AdapterMemoryModel:
    """``model`` with a per-query gate: queries far from every training query in ``queries`` (cosine
    below ``threshold``, as embedded) are ranked by the adapter alone, without memory or query
    keys, with keyword weight ``weight`` (the plain store's, chosen on validation)."""
    return model.replace(
        gate_threshold=threshold, gate_keys=queries,  # the far keywords' training queries are these too
        # the fallback re-scores only where the model does (one keyword index, one keyword_plan to update)
        fallback_lexical_weight=weight if model.lexical is not None and model.lexical_weight > 0 else 0.0,
    )


@dataclass(frozen=True)
class _FarKeywords:
    """The per-query keyword weight validation judges: at least ``weight`` for queries whose
    cosine to every one of ``queries`` (the fold's training queries) is below ``cosine``."""

    queries: np.ndarray
    cosine: float
    weight: float


def _with_lexical(
    model: AdapterMemoryModel, lexical: LexicalIndex, weight: float, far: _FarKeywords | None = None
) -> AdapterMemoryModel:
    """``model`` re-scoring its top candidates with ``weight`` times their scaled BM25 scores
    (with ``far``, and memory to be far from: ``far.weight`` for far queries where it is larger)."""
    if far is None or far.weight <= weight or not len(model.memory_ids):  # one weight serves every query
        return model.replace(lexical=lexical, lexical_weight=weight, far_lexical_weight=0.0, far_cosine=0.0)
    return model.replace(lexical=lexical, lexical_weight=weight, far_lexical_weight=far.weight, far_cosine=far.cosine,
                         gate_keys=far.queries)


def _lexical_grid(
    store: StoreView,
    folds: Sequence[_Fold],
    models: Sequence[AdapterMemoryModel],
    caches: Sequence[dict],
    lexical: LexicalIndex,
    weights: Sequence[float],
    ctx: _Context,
) -> Iterator[tuple[float, _Evaluation]]:
    """Each keyword weight with the pooled validation result of the fold ``models`` re-scoring
    with it (``caches``: each fold's plain searches, shared across the weights), far queries
    weighed as the served model will weigh them (:class:`_FarKeywords`)."""
    options = ctx.options
    fars = [_FarKeywords(f.train.queries, options.far_keyword_cosine, options.far_keyword_weight) for f in folds]
    for weight in weights:
        ctx.check_stop()
        yield weight, _pool([
            _evaluate(store, f.val, _with_lexical(model, lexical, weight, far), cache)
            for f, model, cache, far in zip(folds, models, caches, fars)
        ])


def _keywords_on_plain_store(
    store: StoreView, folds: Sequence[_Fold], lexical: LexicalIndex, weights: Sequence[float], ctx: _Context
) -> tuple[_Evaluation, float]:
    """The best validation result (and its weight) of keyword re-scoring on the plain store."""
    plain = AdapterMemoryModel(dim=folds[0].val.queries.shape[1], metric=ctx.metric)
    best, best_weight = None, 0.0
    caches: list[dict] = [{} for _ in folds]
    for weight, candidate in _lexical_grid(store, folds, [plain] * len(folds), caches, lexical, weights, ctx):
        if best is None or candidate.metrics["ndcg@10"] > best.metrics["ndcg@10"]:
            best, best_weight = candidate, weight
    return best, best_weight


def _build_lexical(store: StoreView) -> LexicalIndex | None:
    """A keyword index of every stored text, or None when the store offers no texts."""
    iter_texts = getattr(store, "iter_texts", None)
    if iter_texts is None:
        return None
    text_of: dict[str, str] = {}  # by id: a node re-added between two batches is read twice, keep the last
    for batch_ids, batch_texts in iter_texts():
        text_of.update(zip(batch_ids, batch_texts))
    if not any(text.strip() for text in text_of.values()):
        return None
    return LexicalIndex(list(text_of), list(text_of.values()))
