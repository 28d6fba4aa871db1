"""The one Deep Memory ranking: plain hits of the transformed queries, merged with the model's
override scores, optionally re-scored with keywords, cut to the top ``k``.

It asks the store only through :class:`~llama_index_deepmemory.deep_memory.base.StoreView`
(plain ``search_vectors`` with filters, ``usable_ids``, ``texts_of``), so the same code ranks for
training's validation, for ``evaluate`` and for every wrapped backend's queries (Qdrant, ...).
The embedded FAISS store ranks its ``deep_memory=True`` queries and batches here too; for a
single keyword query it hands out its hits as keyword-index rows (``search_rows``), and one
compiled call ranks them (the same ranking, without looking up each hit's id).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import (
    DeepMemoryModel,
    KeywordPlan,
    check_query_texts,
    checked_scores,
    checked_transform,
    compiled_kernels,
)

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.base import StoreView

logger = logging.getLogger(__name__)

Searched = tuple[np.ndarray, list[list[str]], int]  # a plain search: scores (m, k'), ids, k asked
PlainCache = dict[bytes, Searched]  # transformed query -> its plain search
_last_ids: list[tuple[Sequence[str], frozenset[str]]] = []  # the override ids of the last query, as a set


def _id_set(override_ids: Sequence[str]) -> frozenset[str]:
    """``override_ids`` as a set, kept for the next query naming the same sequence object (a
    model hands out one tuple; building the set again touches every id string)."""
    last = _last_ids[0] if _last_ids else None
    if last is not None and last[0] is override_ids and isinstance(override_ids, tuple):
        return last[1]
    ids = frozenset(override_ids)
    _last_ids[:] = [(override_ids, ids)]
    return ids


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
            each query's merged top ``rerank_depth`` candidates with it, whatever ``k`` (places
            past them keep their merged order), so a top ``k`` is the first ``k`` of any longer top.
        filters: LlamaIndex ``MetadataFilters`` restricting every query (None: no restriction).
        forget: per query, override nodes scored as plain stored vectors (as if the model had
            never seen them: training's check of how it treats unseen documents).
        plain_cache: plain searches reused for identical transformed queries (training).
    """
    k = int(k)
    if model is None or k <= 0:
        scores, ids = store.search_vectors(queries, max(k, 0), filters=filters)
        return [np.asarray(row, dtype=np.float32)[: len(i)] for row, i in zip(scores, ids)], [list(i) for i in ids]
    texts = check_query_texts(texts, len(queries))
    routed = model.route(queries)
    if routed is not None and model.fallback is not None:  # the gate: some queries go to the fallback
        return _rank_routed(store, queries, model, np.asarray(routed, dtype=bool), k, texts, filters, forget, plain_cache)
    rescore = texts is not None and model.rerank_depth > 0
    head = int(model.rerank_depth) if rescore else 0  # the re-scored top: fixed, so results do not depend on k
    depth = max(k, head)
    transformed, override_ids, override_scores = _applied(model, queries)  # checks the dimension first
    plans = _query_plans(model, queries) if rescore else [None] * len(queries)
    usable = np.asarray(store.usable_ids(override_ids, filters), dtype=bool) if len(override_ids) else np.zeros(0, bool)
    kernels = compiled_kernels()
    searched = None
    if plans[0] is not None and kernels is not None and len(queries) == 1 and texts[0] and forget is None and plain_cache is None:
        ranked, searched = _rank_keywords_at_once(
            store, kernels, plans[0], transformed, override_ids, override_scores, usable, head, k, texts[0], filters)
        if ranked is not None:
            return ranked
    overridden = _id_set(override_ids)
    # the usable override scores can complete a row the overridden hits crowd (not with forget)
    reach = (override_scores, usable) if forget is None else None
    plain_scores, plain_ids = _plain_search(store, transformed, overridden, depth, filters, plain_cache, reach, searched)
    position = {node: j for j, node in enumerate(override_ids)} if forget is not None else {}
    out_scores: list[np.ndarray] = []
    out_ids: list[list[str]] = []
    for i, (row_scores, row_ids) in enumerate(zip(plain_scores, plain_ids)):
        forgotten = forget[i] if forget is not None else set()
        keep = np.array([n not in overridden or n in forgotten for n in row_ids], dtype=bool)
        over_keep = usable
        if forgotten & overridden:  # forgotten override nodes rank as their stored vectors
            over_keep = usable.copy()
            over_keep[[position[n] for n in forgotten & overridden]] = False
        row_scores = np.ascontiguousarray(np.asarray(row_scores)[: len(row_ids)], dtype=np.float32)
        picks, scores = _merged_row(kernels, row_scores, keep, override_scores[i], over_keep, depth)
        nodes = [row_ids[p] if p >= 0 else override_ids[-1 - p] for p in picks]
        if rescore and texts[i] and nodes:  # keyword re-scoring of the top `head`, the rest after it
            head_nodes, head_scores = _rescored(store, model, plans[i], texts[i], nodes[:head], scores[:head])
            nodes, scores = head_nodes + nodes[head:], np.concatenate([head_scores, scores[head:]])
        out_scores.append(scores[:k])
        out_ids.append(nodes[:k])
    return out_scores, out_ids


def _query_plans(model: DeepMemoryModel, queries: np.ndarray) -> list[KeywordPlan | None]:
    """``model.keyword_plans``, checked: one plan (or None: ``model.rerank``) per query."""
    plans = model.keyword_plans(queries)
    if len(plans) != len(queries) or not all(p is None or isinstance(p, KeywordPlan) for p in plans):
        raise ValueError(
            f"the Deep Memory model gave {len(plans)} keyword plans for {len(queries)} queries; "
            "keyword_plans must return one KeywordPlan (or None) per query"
        )
    return plans


def _merged_row(
    kernels: Any, plain_scores: np.ndarray, keep: np.ndarray, over_scores: np.ndarray, over_keep: np.ndarray, depth: int
) -> tuple[list[int], np.ndarray]:
    """One query's top ``depth`` of its kept plain hits (in their order) and its kept override
    scores (in the model's order), stable: (sources, scores), a source being a plain position
    ``p`` or ``-1 - j`` for override ``j``. One compiled call where numba is installed."""
    if kernels is not None:
        out_scores, out_sources = kernels.merge_row(plain_scores, keep, over_scores, over_keep, depth)
        return out_sources.tolist(), out_scores
    pool_scores = np.concatenate([plain_scores[keep], over_scores[over_keep]])
    sources = np.concatenate([np.flatnonzero(keep), -1 - np.flatnonzero(over_keep)])
    order = np.argsort(-pool_scores, kind="stable")[:depth]
    return sources[order].tolist(), pool_scores[order].astype(np.float32)


_last_flags: list[tuple[np.ndarray, np.ndarray]] = []  # the override nodes' keyword rows -> a flag per row


def _override_rows(plan: KeywordPlan, override_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The keyword index's rows of the override nodes and a flag per index row marking them
    (kept for the same rows), or None when an override node is not indexed: a plain hit then
    cannot be told an override node by its row."""
    over_rows = plan.index.rows_of(override_ids)  # the index keeps them per tuple
    last = _last_flags[0] if _last_flags else None
    if last is not None and last[0] is over_rows:
        return last
    if len(over_rows) and over_rows.min() < 0:
        return None
    flags = np.zeros(len(plan.index), dtype=bool)
    flags[over_rows] = True
    _last_flags[:] = [(over_rows, flags)]
    return over_rows, flags


def _rank_keywords_at_once(
    store: "StoreView", kernels: Any, plan: KeywordPlan, transformed: np.ndarray, override_ids: Sequence[str],
    override_scores: np.ndarray, usable: np.ndarray, head: int, k: int, text: str, filters: Any,
) -> tuple[tuple[list[np.ndarray], list[list[str]]] | None, Searched | None]:
    """One query's keyword ranking in one compiled call (merge, BM25 fusion of the top ``head``,
    top ``k``) over a
    store that hands out its hits' keyword-index rows (``search_rows``: the embedded store keeps
    a row per slot), so no hit's id is looked up but the ``k`` returned: (ranking, None). Where
    the steps of :func:`rank` must run instead (no such store, an override node or a top
    candidate not indexed, a row that needs a deeper search): (None, the plain search made, if
    one was, for those steps to start from)."""
    search_rows = getattr(store, "search_rows", None)
    marked = _override_rows(plan, override_ids) if search_rows is not None else None
    if marked is None:
        return None, None
    depth = max(k, head)
    asked = depth + _margin(len(override_ids), depth)
    hits = search_rows(transformed, asked, filters, plan.index)
    if hits is None:
        return None, None
    plain_scores, plain_rows, id_at = hits
    over_rows, flags = marked
    index = plan.index
    status, scores, sources = kernels.merge_keyword_top(
        plain_scores, plain_rows, flags, override_scores[0], usable, over_rows, *index.postings,
        index.query_term_ids(text), float(plan.weight), head, k, asked)
    if status != 0:
        return None, (plain_scores[None, : len(plain_rows)], [[id_at(p) for p in range(len(plain_rows))]], asked)
    return ([scores], [[id_at(p) if p >= 0 else override_ids[-1 - p] for p in sources.tolist()]]), None


def _margin(n_overrides: int, k: int) -> int:
    """Hits asked beyond ``k`` so the override nodes among them rarely force a second search
    (asking for ``k`` alone re-searched 10 of 60 queries of ``bench_wrapped``'s keyword case:
    a second scan costs more than 16 more ids)."""
    return min(n_overrides, max(16, k // 4))


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


def _rescored(
    store: "StoreView", model: DeepMemoryModel, plan: Any, text: str, nodes: list[str], scores: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """One query's candidates re-scored with its ``text`` and re-ordered: through the model's
    keyword ``plan`` (texts are read only for candidates its index lacks), else ``model.rerank``."""
    if plan is None:
        fused = np.asarray(model.rerank(text, nodes, scores, store.texts_of(nodes)), dtype=np.float32)
        if fused.shape != scores.shape:
            raise ValueError(f"the Deep Memory model re-scored {len(scores)} candidates into shape {fused.shape}")
        order = np.argsort(-fused, kind="stable")
        return [nodes[j] for j in order], fused[order]
    rows = plan.index.rows_of(nodes)
    order, fused = plan.ranked(text, rows, scores, lambda at: store.texts_of([nodes[j] for j in at]))
    return [nodes[j] for j in order.tolist()], fused


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
    return np.ascontiguousarray(transformed, dtype=np.float32), ids, np.ascontiguousarray(scores, dtype=np.float32)


def _reaching(reach: tuple[np.ndarray, np.ndarray], i: int, last: float) -> int:
    """How many usable override scores of query ``i`` reach ``last``."""
    override_scores, usable = reach
    return int((override_scores[i][usable] >= last).sum())


def _plain_search(
    store: "StoreView",
    transformed: np.ndarray,
    overridden: set[str],
    k: int,
    filters: Any,
    cache: PlainCache | None,
    reach: tuple[np.ndarray, np.ndarray] | None = None,
    searched: Searched | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Plain search deep enough for an exact merged top ``k`` per row (or every node the filters
    allow: a row shorter than asked holds them all, so the store is never counted, a round trip
    for some engines and a listing of every node for others).

    A row is complete when its hits outside ``overridden``, plus the override nodes scoring at
    least its last fetched plain score (``reach``: the (m, n_override) override scores and which
    overrides are usable), number ``k``: every unfetched node scores at most that last score. The
    first search asks for :func:`_margin` more than ``k``; a search already ``searched`` is
    used when it is complete."""
    margin = _margin(len(overridden), k)

    def complete(scores: np.ndarray, ids: list[list[str]], k_search: int) -> bool:
        for i, row in enumerate(ids):
            if len(row) < k_search:  # every allowed node was fetched
                continue
            kept = len(row) - len(overridden.intersection(row))
            if kept < k and (reach is None or not row or kept + _reaching(reach, i, scores[i][len(row) - 1]) < k):
                return False
        return True

    key = hashlib.sha1(transformed.tobytes()).digest() if cache is not None and filters is None else None
    if key is not None and key in cache:
        searched = cache[key]
    k_search = k + margin
    if searched is not None:
        scores, ids, k_searched = searched
        if complete(scores, ids, k_searched):
            return scores, ids
        k_search = max(k_search, 2 * k_searched)  # as deep again: the same depth would miss again
    while True:
        scores, ids = store.search_vectors(transformed, k_search, filters=filters)
        if complete(scores, ids, k_search):
            break
        k_search *= 2
    if key is not None:
        cache[key] = (scores, ids, k_search)
    return scores, ids
