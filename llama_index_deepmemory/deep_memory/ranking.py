"""The one Deep Memory ranking: plain hits of the transformed queries, merged with the model's
override scores, optionally re-scored with keywords, cut to the top ``k``.

It asks the store only through :class:`~llama_index_deepmemory.deep_memory.base.StoreView`
(plain ``search_vectors`` with filters, ``usable_ids``, ``texts_of``), so the same code ranks for
training's validation, for ``evaluate`` and for every wrapped backend's queries (Qdrant, ...).
The embedded FAISS store serves single queries through compiled kernels that compute the same
ranking; ``tests/test_ranking.py`` checks that ``store.query`` equals :func:`rank`.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import (
    DeepMemoryModel,
    check_query_texts,
    checked_scores,
    checked_transform,
)

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.base import StoreView

logger = logging.getLogger(__name__)

PlainCache = dict[bytes, tuple[np.ndarray, list[list[str]]]]


def rank(
    store: "StoreView",
    queries: np.ndarray,
    model: DeepMemoryModel | None,
    k: int,
    *,
    texts: Sequence[str | None] | None = None,
    filters: Any = None,
    forget: Sequence[set[str]] | None = None,
    plain_cache: PlainCache | None = None,
) -> tuple[list[np.ndarray], list[list[str]]]:
    """Top ``k`` scores and node ids per prepared query, plain or ranked with ``model``.

    Every node outside the model's override set scores ``q_t . v`` (the store's plain search of
    the transformed query); override nodes score what the model says. So the plain top hits
    outside the override set plus the usable override nodes hold the true top ``k``.

    Args:
        store: the store view searched (plain search, with ``filters``).
        queries: prepared query vectors (m, d), as ``store.prepare_queries`` returns them.
        model: the Deep Memory model, or None for the plain ranking.
        texts: one query string (or None) per query; a model with ``rerank_depth`` re-scores
            each query's top ``max(k, rerank_depth)`` candidates with it.
        filters: LlamaIndex ``MetadataFilters`` restricting every query (None: no restriction).
        forget: per query, override nodes scored as plain stored vectors (as if the model had
            never seen them: training's check of how it treats unseen documents).
        plain_cache: plain searches reused for identical transformed queries (training).
    """
    k = int(k)
    n_nodes = len(store)
    if model is None or k <= 0 or n_nodes == 0:
        scores, ids = store.search_vectors(queries, min(k, n_nodes), filters=filters)
        return [np.asarray(row, dtype=np.float32)[: len(i)] for row, i in zip(scores, ids)], [list(i) for i in ids]
    texts = check_query_texts(texts, len(queries))
    depth = max(k, model.rerank_depth) if texts is not None and model.rerank_depth else k
    transformed, override_ids, override_scores = _applied(model, queries)
    usable = np.asarray(store.usable_ids(override_ids, filters), dtype=bool) if len(override_ids) else None
    overridden = set(override_ids)
    plain_scores, plain_ids = _plain_search(store, transformed, overridden, depth, filters, plain_cache)
    out_scores: list[np.ndarray] = []
    out_ids: list[list[str]] = []
    for i, (row_scores, row_ids) in enumerate(zip(plain_scores, plain_ids)):
        forgotten = forget[i] if forget is not None else set()
        pairs = [(float(s), node) for s, node in zip(row_scores, row_ids) if node not in overridden or node in forgotten]
        if usable is not None and usable.any():
            over_row = np.where(usable, override_scores[i], -np.inf)
            top = np.argsort(-over_row, kind="stable")[: depth + len(forgotten)]
            pairs += [
                (float(over_row[j]), override_ids[j])
                for j in top
                if usable[j] and override_ids[j] not in forgotten
            ][:depth]
        pairs.sort(key=lambda p: -p[0])
        pairs = pairs[:depth]
        nodes = [node for _, node in pairs]
        scores = np.asarray([score for score, _ in pairs], dtype=np.float32)
        if depth > k and texts[i] and nodes:  # keyword re-scoring of the top `depth`
            fused = np.asarray(model.rerank(texts[i], nodes, scores, store.texts_of(nodes)), dtype=np.float32)
            order = np.argsort(-fused, kind="stable")
            nodes, scores = [nodes[j] for j in order], fused[order]
        out_scores.append(scores[:k])
        out_ids.append(nodes[:k])
    return out_scores, out_ids


def _applied(model: DeepMemoryModel, queries: np.ndarray) -> tuple[np.ndarray, Sequence[str], np.ndarray]:
    """``model.apply`` with its results checked (a subclass's own ``apply`` included)."""
    if model.dim != queries.shape[1]:
        raise ValueError(
            f"the Deep Memory model was trained for {model.dim}-dimensional vectors but the queries are "
            f"{queries.shape[1]}-dimensional; train a new model on this store"
        )
    transformed, ids, scores = model.apply(queries)
    if not getattr(model.apply, "checks_own_output", False):
        transformed, scores = checked_transform(queries, transformed), checked_scores(queries, ids, scores)
    return np.ascontiguousarray(transformed, dtype=np.float32), ids, scores


def _plain_search(
    store: "StoreView",
    transformed: np.ndarray,
    overridden: set[str],
    k: int,
    filters: Any,
    cache: PlainCache | None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Plain search deep enough that every row keeps ``k`` nodes outside ``overridden`` (or holds
    every node the filters allow)."""
    n_nodes = len(store)
    key = hashlib.sha1(transformed.tobytes()).digest() if cache is not None and filters is None else None
    if key is not None and key in cache:
        scores, ids = cache[key]
        if len(ids[0]) >= n_nodes or all(sum(1 for n in row if n not in overridden) >= k for row in ids):
            return scores, ids
    k_search = min(n_nodes, k + min(len(overridden), max(16, k // 4)))  # most hits are not overridden
    while True:
        scores, ids = store.search_vectors(transformed, k_search, filters=filters)
        exhausted = k_search >= n_nodes or all(len(row) < k_search for row in ids)
        if exhausted or all(sum(1 for n in row if n not in overridden) >= k for row in ids):
            break
        k_search = min(n_nodes, k_search * 2)
    if key is not None:
        cache[key] = (scores, ids)
    return scores, ids
