"""The one Deep Memory ranking: plain hits of the transformed queries, merged with the model's
override scores, optionally re-scored with keywords, cut to the top ``k``.

The plain search is batched; each query row is then ranked by one compiled kernel,
:func:`~llama_index_deepmemory.deep_memory.kernels.rank_row` (merge, the "searched deep enough"
test, BM25 fusion of the fixed re-scored head, top k), whatever asked: ``store.query``, batched
search, ``evaluate``, training's validation, every backend. It asks the store only through
:class:`~llama_index_deepmemory.deep_memory.base.StoreView` (``search_vectors`` with filters,
``usable_ids``, ``texts_of``). A store that offers ``search_rows`` (the embedded one) hands out a
single keyword query's hits as keyword-index rows, and ``search_slots`` a single dense query's hits
flagged as override nodes or not, so no hit's id is looked up but the ``k`` returned; the same
kernel ranks them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import (
    DeepMemoryModel,
    KeywordPlan,
    check_query_texts,
    checked_scores,
    checked_transform,
)
from llama_index_deepmemory.topk import stable_order

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.base import StoreView

logger = logging.getLogger(__name__)

Hits = tuple[np.ndarray, list[str], int]  # one row's plain search: scores, ids, hits asked
PlainCache = dict[bytes, list[Hits]]  # transformed queries -> their plain searches (training)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_TERMS = np.zeros(0, dtype=np.int32)
_NO_SCORES = np.zeros(0, dtype=np.float32)
_NO_POSTINGS = (np.zeros((1, 2), dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


_loaded: list[Any] = []  # the kernels module, once imported


def _kernels() -> Any:
    """The ranking kernels (imported on first use: plain queries never load numba)."""
    if not _loaded:
        from llama_index_deepmemory.deep_memory import kernels

        _loaded.append(kernels)
    return _loaded[0]


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
    keyword_depth: int | None = None,
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
        keyword_depth: at most this many top candidates are re-scored (None: the model's
            ``rerank_depth``); a smaller head needs a shallower plain search, which is what an
            engine that walks as wide as the hits asked pays for (see ``WrappedStore``).
    """
    k = int(k)
    keyword_depth = check_keyword_depth(keyword_depth)
    if model is None or k <= 0:
        scores, ids = store.search_vectors(queries, max(k, 0), filters=filters)
        return [np.asarray(row, dtype=np.float32)[: len(i)] for row, i in zip(scores, ids)], [list(i) for i in ids]
    texts = check_query_texts(texts, len(queries))
    routed = model.route(queries)
    if routed is not None and model.fallback is not None:  # the gate: some queries go to the fallback
        return _rank_routed(store, queries, model, np.asarray(routed, dtype=bool), k, texts, filters, forget, plain_cache,
                            keyword_depth)
    rescore = texts is not None and model.rerank_depth > 0
    head = int(model.rerank_depth) if rescore else 0  # the re-scored top: fixed, so results do not depend on k
    if keyword_depth is not None:
        head = min(head, keyword_depth)
    depth = max(k, head)
    transformed, override_ids, override_scores = _applied(model, queries)  # checks the dimension first
    plans = _query_plans(model, queries) if rescore else [None] * len(queries)
    usable = np.asarray(store.usable_ids(override_ids, filters), dtype=bool) if len(override_ids) else np.zeros(0, bool)
    row = _Row(store, model, override_ids, override_scores, usable, head, depth, k, filters)
    if len(queries) == 1 and plans[0] is not None and texts[0] and forget is None and plain_cache is None:
        ranked = row.by_keyword_rows(transformed, plans[0], texts[0])  # the embedded store's hits as rows
        if ranked is not None:
            return [ranked[0]], [ranked[1]]
    elif len(queries) == 1 and not head and forget is None and plain_cache is None:
        ranked = row.by_slots(transformed)  # a dense query: the embedded store's hits flagged by slot
        if ranked is not None:
            return [ranked[0]], [ranked[1]]
    searched = _plain_searches(store, transformed, _deeper(depth, _store_margin(store, len(override_ids), depth)),
                               filters, plain_cache)
    out: list[tuple[np.ndarray, list[str]] | None] = [None] * len(queries)
    while True:
        deeper = []
        for i, hits in enumerate(searched):
            if out[i] is None:
                out[i] = row.by_ids(i, hits, plans[i], texts[i] if texts is not None else None,
                                    forget[i] if forget is not None else None)
                if out[i] is None:
                    deeper.append(i)
        if not deeper:
            break
        # as deep again where a row may miss a merged top candidate (the same depth would miss again)
        for i, hits in zip(deeper, _search_rows_of(store, transformed, deeper, [_deeper(searched[i][2], searched[i][2]) for i in deeper], filters)):
            searched[i] = hits
    if plain_cache is not None and filters is None:
        plain_cache[_key(transformed)] = searched
    return [scores for scores, _ in out], [ids for _, ids in out]  # type: ignore[misc]


class _Row:
    """One ranking's shared inputs, and each query row ranked by ``kernels.rank_row``."""

    def __init__(self, store: "StoreView", model: DeepMemoryModel, override_ids: Sequence[str],
                 override_scores: np.ndarray, usable: np.ndarray, head: int, depth: int, k: int, filters: Any) -> None:
        self.store, self.model, self.filters = store, model, filters
        self.override_ids, self.override_scores, self.usable = override_ids, override_scores, usable
        self.head, self.depth, self.k = head, depth, k
        self.kernels = _kernels()
        self.rank_row = self.kernels.rank_row
        self._overridden: frozenset[str] | None = None

    @property
    def overridden(self) -> frozenset[str]:
        """The override ids as a set (built only by the rows that need it; a ``_Row`` serves one
        ranking call, so no lock: ``functools.cached_property`` takes one on every read in 3.11)."""
        if self._overridden is None:
            self._overridden = self.model.override_set(self.override_ids)
        return self._overridden

    def by_keyword_rows(self, transformed: np.ndarray, plan: KeywordPlan, text: str) -> tuple[np.ndarray, list[str]] | None:
        """One keyword query over a store that hands out its hits' keyword-index rows
        (``search_rows``), searched deeper until complete; None where the store cannot now."""
        search_rows = getattr(self.store, "search_rows", None)
        if search_rows is None:
            return None
        index = plan.index
        over_rows, flags, unindexed = plan.override_rows(self.override_ids)
        asked = _deeper(self.depth, _margin(len(self.override_ids), self.depth))
        terms = index.query_term_ids(text)
        while True:
            hits = search_rows(transformed, asked, self.filters, index)
            if hits is None:
                return None
            scores, rows, id_at = hits
            ranked = None
            if not len(unindexed):  # the usual case: one call, unless a hit is unindexed
                ranked = self.kernels.rank_indexed_row(
                    scores, rows, flags, self.override_scores[0], self.usable, over_rows, *index.postings, terms,
                    float(plan.weight), self.head, self.depth, self.k, asked)
            if ranked is None or not ranked[3]:
                keep, unindexed_hit = self.kernels.kept_rows(rows, flags)
                if len(unindexed):  # an override node unindexed: tell it by id
                    for p in np.flatnonzero(rows < 0).tolist():
                        keep[p] = id_at(p) not in self.overridden
                given = (self._text_scores(plan, text, rows, keep, self.usable, unindexed, id_at)
                         if unindexed_hit or len(unindexed) else _NO_SCORES)
                ranked = self.rank_row(
                    scores, keep, rows, self.override_scores[0], self.usable, over_rows, given, *index.postings,
                    terms, float(plan.weight), self.head, self.depth, self.k, asked)
            out_scores, sources, complete = ranked[:3]
            if complete:
                return out_scores, [id_at(p) if p >= 0 else self.override_ids[-1 - p] for p in sources.tolist()]
            asked = _deeper(asked, asked)

    def by_slots(self, transformed: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
        """One dense query over a store that flags its hits that are override nodes itself
        (``search_slots``), searched deeper until complete; None where the store cannot."""
        search_slots = getattr(self.store, "search_slots", None)
        if search_slots is None:
            return None
        asked = _deeper(self.depth, _margin(len(self.override_ids), self.depth))
        while True:
            scores, keep, id_at = search_slots(transformed, asked, self.filters, self.override_ids)
            out_scores, sources, complete = self.rank_row(
                scores, keep, _NO_ROWS, self.override_scores[0], self.usable, _NO_ROWS, _NO_SCORES, *_NO_POSTINGS,
                _NO_TERMS, 0.0, 0, self.depth, self.k, asked)
            if complete:
                return out_scores, [id_at(p) if p >= 0 else self.override_ids[-1 - p] for p in sources.tolist()]
            asked = _deeper(asked, asked)

    def by_ids(self, i: int, hits: Hits, plan: KeywordPlan | None, text: str | None,
               forgotten: set[str] | None) -> tuple[np.ndarray, list[str]] | None:
        """Query row ``i`` ranked from its plain ``hits``, or None: search it deeper."""
        scores, ids, asked = hits
        overridden = self.overridden
        over_keep = self.usable
        if forgotten:
            keep = np.fromiter((n not in overridden or n in forgotten for n in ids), dtype=bool, count=len(ids))
            lost = [j for j, node in enumerate(self.override_ids) if node in forgotten]
            if lost:  # forgotten override nodes rank as their stored vectors
                over_keep = over_keep.copy()
                over_keep[lost] = False
        else:  # one C-level membership test per hit (a generator's frames cost more than the test)
            keep = ~np.fromiter(map(overridden.__contains__, ids), dtype=bool, count=len(ids))
        keywords = plan is not None and bool(text)
        head = self.head if keywords else 0
        depth, k = self.depth, (self.k if keywords or not self.head else self.depth)
        if keywords:
            index = plan.index
            rows, (over_rows, _, unindexed) = index.rows_of(ids), plan.override_rows(self.override_ids)
            given = self._text_scores(plan, text, rows, keep, over_keep, unindexed, ids.__getitem__)
            postings, terms, weight = index.postings, index.query_term_ids(text), float(plan.weight)
        else:
            rows = over_rows = _NO_ROWS
            given, postings, terms, weight = _NO_SCORES, _NO_POSTINGS, _NO_TERMS, 0.0
        out_scores, sources, complete = self.rank_row(
            scores, keep, rows, self.override_scores[i], over_keep, over_rows, given, *postings, terms, weight,
            head, depth, k, asked)
        if not complete:
            return None
        nodes = [ids[p] if p >= 0 else self.override_ids[-1 - p] for p in sources.tolist()]
        if self.head and not keywords and text:  # a model's own re-scoring of the top `head`, the rest after it
            nodes, out_scores = _reranked(self.store, self.model, text, nodes, out_scores, self.head)
        return out_scores[: self.k], nodes[: self.k]

    def _text_scores(self, plan: KeywordPlan, text: str, rows: np.ndarray, keep: np.ndarray, over_keep: np.ndarray,
                     unindexed: np.ndarray, id_at: Callable[[int], str]) -> np.ndarray:
        """BM25 from their current texts of the unindexed candidates that may reach the re-scored
        head (plain hits among the first ``head`` kept, usable override nodes), aligned to the
        kernel's pool (plain hits, then override nodes); empty when there are none (the usual case)."""
        if not len(unindexed) and (not len(rows) or rows.min() >= 0):
            return _NO_SCORES
        plain_at = np.flatnonzero(keep)[: self.head]
        plain_at = plain_at[rows[plain_at] < 0]
        over_at = unindexed[over_keep[unindexed]]
        if not len(plain_at) and not len(over_at):
            return _NO_SCORES
        ids = [id_at(p) for p in plain_at.tolist()] + [self.override_ids[j] for j in over_at.tolist()]
        positions = np.concatenate([plain_at, len(rows) + over_at])
        out = np.zeros(len(rows) + len(over_keep), dtype=np.float32)
        out[positions] = plan.index.text_scores(text, np.full(len(ids), -1, np.int64), self.store.texts_of(ids))
        return out


def _reranked(store: "StoreView", model: DeepMemoryModel, text: str, nodes: list[str], scores: np.ndarray,
              head: int) -> tuple[list[str], np.ndarray]:
    """The top ``head`` candidates re-scored by ``model.rerank`` (a model without a keyword plan)
    and re-ordered, the rest after them."""
    top = nodes[:head]
    fused = np.asarray(model.rerank(text, top, scores[:head], store.texts_of(top)), dtype=np.float32)
    if fused.shape != scores[:head].shape:
        raise ValueError(f"the Deep Memory model re-scored {len(top)} candidates into shape {fused.shape}")
    order = stable_order(fused)
    return [top[j] for j in order] + nodes[head:], np.concatenate([fused[order], scores[head:]])


def _query_plans(model: DeepMemoryModel, queries: np.ndarray) -> list[KeywordPlan | None]:
    """``model.keyword_plans``, checked: one plan (or None: ``model.rerank``) per query."""
    plans = model.keyword_plans(queries)
    if len(plans) != len(queries) or not all(p is None or isinstance(p, KeywordPlan) for p in plans):
        raise ValueError(
            f"the Deep Memory model gave {len(plans)} keyword plans for {len(queries)} queries; "
            "keyword_plans must return one KeywordPlan (or None) per query"
        )
    return plans


def check_keyword_depth(keyword_depth: Any) -> int | None:
    """``keyword_depth`` checked: None or a positive int."""
    if keyword_depth is None:
        return None
    if isinstance(keyword_depth, bool) or not isinstance(keyword_depth, (int, np.integer)) or keyword_depth < 1:
        raise ValueError(f"keyword_depth must be a positive int or None, got {keyword_depth!r}: pass e.g. 20, or None "
                         "for the default (the model's own head over the embedded store, 20 over a vector_store)")
    return int(keyword_depth)


def _deeper(depth: int, more: int) -> int:
    """``depth + more`` hits to ask for, at most the largest int64 (a k near ``sys.maxsize`` asks for
    every node, and the compiled kernels take int64)."""
    return min(depth + more, _MOST_HITS)


_MOST_HITS = 2**63 - 1


def _margin(n_overrides: int, k: int) -> int:
    """Hits asked beyond ``k`` so the override nodes among them rarely force a second search
    (asking for ``k`` alone re-searched 10 of 60 queries of ``bench_wrapped``'s keyword case:
    a second scan costs more than 16 more ids)."""
    return min(n_overrides, max(16, k // 4))


def _store_margin(store: "StoreView", n_overrides: int, k: int) -> int:
    """:func:`_margin`, or the store's own ``search_margin`` where it offers one (a wrapped engine,
    where each hit asked costs: rows read, a wider ANN walk): ``search_margin(n_overrides, k)``, or
    a number of hits; at most ``n_overrides`` either way."""
    own = getattr(store, "search_margin", None)
    if own is None:
        return _margin(n_overrides, k)
    return max(0, min(n_overrides, int(own(n_overrides, k) if callable(own) else own)))


def _key(transformed: np.ndarray) -> bytes:
    return hashlib.sha1(transformed.tobytes()).digest()


def _plain_searches(store: "StoreView", transformed: np.ndarray, asked: int, filters: Any,
                    cache: PlainCache | None) -> list[Hits]:
    """Each row's plain top ``asked`` (one batched search), or the searches ``cache`` kept for
    these transformed queries (rows searched deeper there stay deeper)."""
    if cache is not None and filters is None:
        kept = cache.get(_key(transformed))
        if kept is not None:
            return list(kept)
    return _search_rows_of(store, transformed, list(range(len(transformed))), [asked] * len(transformed), filters)


def _search_rows_of(store: "StoreView", transformed: np.ndarray, rows: list[int], asked: list[int],
                    filters: Any) -> list[Hits]:
    """The plain top ``asked[j]`` of query row ``rows[j]``, in one batched search."""
    deepest = max(asked)
    asked_rows = transformed if len(rows) == len(transformed) else transformed[rows]
    scores, ids = store.search_vectors(asked_rows, deepest, filters=filters)
    out = []
    for j, wanted in enumerate(asked):
        row_ids = list(ids[j])[:wanted]
        out.append((np.ascontiguousarray(np.asarray(scores[j])[: len(row_ids)], dtype=np.float32), row_ids, wanted))
    return out


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
    keyword_depth: int | None = None,
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
            plain_cache=plain_cache, keyword_depth=keyword_depth,
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
    return np.ascontiguousarray(transformed, dtype=np.float32), ids, np.ascontiguousarray(scores, dtype=np.float32)
