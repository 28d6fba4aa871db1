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
    """Top ``k`` scores and node ids per prepared query, plain or ranked with ``model``
    (or, per query, with ``model.fallback`` where ``model.route`` says so).

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
    routed = model.route(queries)
    if routed is not None and model.fallback is not None:  # the gate: some queries go to the fallback
        return _rank_routed(store, queries, model, np.asarray(routed, dtype=bool), k, texts, filters, forget, plain_cache)
    depth = max(k, model.rerank_depth) if texts is not None and model.rerank_depth else k
    transformed, override_ids, override_scores = _applied(model, queries)
    usable = np.asarray(store.usable_ids(override_ids, filters), dtype=bool) if len(override_ids) else None
    overridden = set(override_ids)
    # the override scores each query can use: they can complete a row the overridden hits crowd
    reach = np.where(usable, override_scores, -np.inf) if usable is not None and forget is None else None
    plain_scores, plain_ids = _plain_search(store, transformed, overridden, depth, filters, plain_cache, n_nodes,
                                            reach)
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


def _rank_routed(
    store: "StoreView",
    queries: np.ndarray,
    model: DeepMemoryModel,
    routed: np.ndarray,
    k: int,
    texts: Sequence[str | None] | None,
    filters: Any,
    forget: Sequence[set[str]] | None,
    plain_cache: PlainCache | None,
) -> tuple[list[np.ndarray], list[list[str]]]:
    """:func:`rank` with the ``routed`` queries ranked by ``model.fallback`` and the rest by ``model``."""
    out_scores: list[np.ndarray] = [np.zeros(0, np.float32)] * len(queries)
    out_ids: list[list[str]] = [[] for _ in range(len(queries))]
    for rows, ranker in ((np.flatnonzero(~routed), model), (np.flatnonzero(routed), model.fallback)):
        if not len(rows):
            continue
        part_scores, part_ids = rank(
            store, queries[rows], ranker, k,
            texts=None if texts is None else [texts[i] for i in rows], filters=filters,
            forget=None if forget is None else [forget[i] for i in rows],
            plain_cache=plain_cache,
        )  # the model's own rows route nowhere now (route() is None), the fallback has no gate
        for i, row_scores, row_ids in zip(rows, part_scores, part_ids):
            out_scores[i], out_ids[i] = row_scores, row_ids
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
    n_nodes: int,
    reach: np.ndarray | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Plain search deep enough for an exact merged top ``k`` per row (or every node the filters
    allow); ``n_nodes`` is ``len(store)`` (a round trip for some engines).

    A row is complete when its hits outside ``overridden``, plus the override nodes scoring at
    least its last fetched plain score (``reach``: (m, n_override) usable override scores, -inf
    where not usable), number ``k``: every unfetched node scores at most that last score. The
    first search asks for a margin over ``k`` (asking for ``k`` alone re-searched 10 of 60
    queries of ``bench_wrapped``'s keyword case: a second scan costs more than 16 more ids)."""
    margin = min(len(overridden), max(16, k // 4))

    def complete(scores: np.ndarray, ids: list[list[str]], k_search: int | None) -> bool:
        for i, row in enumerate(ids):
            if k_search is not None and len(row) < k_search:  # every allowed node was fetched
                continue
            kept = sum(1 for n in row if n not in overridden)
            if kept < k and (reach is None or not row or kept + int((reach[i] >= scores[i][len(row) - 1]).sum()) < k):
                return False
        return True

    key = hashlib.sha1(transformed.tobytes()).digest() if cache is not None and filters is None else None
    if key is not None and key in cache:
        scores, ids = cache[key]
        if len(ids[0]) >= n_nodes or complete(scores, ids, None):
            return scores, ids
    k_search = min(n_nodes, k + margin)
    while True:
        scores, ids = store.search_vectors(transformed, k_search, filters=filters)
        if k_search >= n_nodes or complete(scores, ids, k_search):
            break
        k_search = min(n_nodes, k_search * 2)
    if key is not None:
        cache[key] = (scores, ids)
    return scores, ids
