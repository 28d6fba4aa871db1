"""The embedded backend: FAISS vectors plus a node table (text, metadata, relationships).

* Scores are "higher is better": ``metric="cosine"`` (default) stores normalised vectors and
  scores with their inner product (cosine similarity, as LlamaIndex's ``SimpleVectorStore``);
  ``"ip"`` the raw inner product; ``"l2"`` the *negative squared* L2 distance.
* Filters follow ``SimpleVectorStore`` (:mod:`llama_index_deepmemory.filters`) and are applied
  before the top-k, so a filtered query returns ``k`` hits whenever that many match.
* Deep Memory queries merge the model's overrides into the plain FAISS hits and re-score with
  keywords; single queries run in compiled kernels (``deep_memory.kernels``) and rank exactly as
  :func:`llama_index_deepmemory.deep_memory.ranking.rank` (``tests/test_ranking.py``).
* Thread safety: a phase-fair readers-writer lock; any number of concurrent readers (query,
  get_nodes, persist, vector reads) or one writer (add, delete, clear). Persists of one store,
  and of one folder across processes, run one at a time.
* Snapshots: versioned, checksummed, written atomically (:mod:`llama_index_deepmemory.persistence`).

:class:`~llama_index_deepmemory.store.DeepMemoryVectorStore` is the LlamaIndex face over it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode, ImageNode, IndexNode
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery, VectorStoreQueryResult

from llama_index_deepmemory import persistence
from llama_index_deepmemory.deep_memory.base import (
    check_query_texts,
    checked_scores,
    checked_transform,
    compiled_kernels,
)
from llama_index_deepmemory.filters import MetadataColumns
from llama_index_deepmemory.index import METRICS, VectorIndex, build_faiss_index, top_k
from llama_index_deepmemory.node_codec import build_node, check_saveable, node_fields
from llama_index_deepmemory.node_table import NodeTable
from llama_index_deepmemory.rwlock import ReadWriteLock
from llama_index_deepmemory.vectors import as_matrix

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

EXACT_CANDIDATES = 4096  # restricted queries with at most this many candidates are scored exactly
_INDEX_STRUCT_TYPES = frozenset({ImageNode.class_name(), IndexNode.class_name()})


class FaissStore:
    """Nodes and their vectors in FAISS; the ``StoreView`` Deep Memory trains and ranks over."""

    def __init__(
        self,
        dim: int | None = None,
        metric: str = "cosine",
        index_factory: str = "Flat",
        embed_model: "BaseEmbedding | None" = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ValueError(f"dim must be a positive int or None (taken from the first add), got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        _check_factory(dim, metric, index_factory)
        self._dim = dim
        self._metric = metric
        self._index_factory = index_factory
        self._nprobe = nprobe
        self._ef_search = ef_search
        self._index: VectorIndex | None = self._new_index(dim) if dim is not None else None
        self._table = NodeTable()
        self._columns = MetadataColumns(self._read_filter_key)
        self._lock = ReadWriteLock()
        self._persist_lock = threading.Lock()
        self._deep_memory_lock = threading.Lock()
        self.embed_model = embed_model  # embeds queries for Deep Memory training and evaluation
        self._deep_memory: DeepMemory | None = None
        self._override_cache: Any = None  # ((model revision, version), (slots, mask, all stored))
        self._keyword_cache: Any = None  # ((keyword index revision, version), rows by slot or None)
        self._version = 0  # bumped by every change of the stored nodes

    @property
    def client(self) -> Any:
        """The FAISS index (None until the dimension is known)."""
        return None if self._index is None else self._index.faiss_index

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def index_factory(self) -> str:
        return self._index_factory

    @property
    def deep_memory(self) -> "DeepMemory":
        """This store's Deep Memory manager (created on first use)."""
        manager = self._deep_memory
        if manager is None:
            with self._deep_memory_lock:
                if self._deep_memory is None:  # checked again: another thread may have made it
                    from llama_index_deepmemory.deep_memory.api import DeepMemory

                    self._deep_memory = DeepMemory(self)
                manager = self._deep_memory
        return manager

    def __len__(self) -> int:
        return len(self._table)

    def _new_index(self, dim: int) -> VectorIndex:
        return VectorIndex(dim, self._metric, self._index_factory, self._nprobe, self._ef_search)

    def _read_filter_key(self, key: str) -> list[Any]:
        return self._table.read_key(key)

    def _as_matrix(self, vectors: Any, what: str, labels: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32 checked for shape, dimension and finiteness; normalised for cosine."""
        return as_matrix(vectors, what, self._dim, self._metric, labels)

    # --- writes ---------------------------------------------------------------------------

    def add(self, nodes: list[BaseNode]) -> list[str]:
        """Add nodes the face checked (each a ``BaseNode`` with an embedding); returns their ids.
        Re-adding an id replaces that node; nothing is stored unless every node is valid."""
        ids = [node.node_id for node in nodes]
        last = {node_id: i for i, node_id in enumerate(ids)}  # duplicates: the last one wins
        keep = sorted(last.values())
        kept = [nodes[i] for i in keep]
        expected = self._dim or len(kept[0].embedding)
        for node in kept:
            if len(node.embedding) != expected or not expected:
                raise ValueError(
                    f"node {node.node_id!r} has a {len(node.embedding)}-dimensional embedding, expected "
                    f"{expected} ({'the store' if self._dim else 'the first node of this batch'}); "
                    "embed every node with the same model and pass non-empty vectors."
                )
        vectors = self._as_matrix([n.embedding for n in kept], "node embeddings", [n.node_id for n in kept])
        rows = [node_fields(n) for n in kept]
        for row in rows:
            check_saveable(row)
        with self._lock.write():
            self._add_rows(rows, vectors)
            manager = self._deep_memory
            if manager is not None:  # re-added nodes may carry new text: keyword scores must follow
                manager.texts_changed([row[0] for row in rows])
        return ids

    def _add_rows(self, rows: list[tuple[str, str, str, str | None, str, str]], vectors: np.ndarray) -> None:
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, store holds {self._dim}")
        # the first add fixes the dimension (and checks the factory string against it)
        index = self._index if self._index is not None else self._new_index(int(vectors.shape[1]))
        first = self._dim is None
        self._dim = int(vectors.shape[1])
        table = self._table
        replaced = table.slots_for(r[0] for r in rows)
        slots = table.allocate(len(rows))
        try:
            index.add(slots, vectors)
        except BaseException:
            table.free_slots(slots)
            if first:
                self._dim = None
            raise
        self._index = index
        if len(replaced):
            self._remove_slots(replaced)
        effective = []
        track = bool(self._columns.keys)
        for slot, (node_id, text, meta, ref, node_type, extras) in zip(slots.tolist(), rows):
            table.put(slot, node_id, text, meta, ref, node_type, extras)
            if track:
                effective.append(table.effective_metadata(json.loads(meta), ref, node_type))
        if track:
            self._columns.set_rows(slots.tolist(), effective)
        self._version += 1

    def _remove_slots(self, slots: np.ndarray) -> None:
        if not len(slots):
            return
        index = self._index
        index.remove(slots)
        self._table.remove(slots.tolist(), reusable=index.removes_physically)
        self._columns.set_rows(slots.tolist(), [None] * len(slots))
        if index.needs_compaction():
            freed = index.compact()
            self._table.free_slots(freed.tolist())
        self._version += 1

    def delete(self, ref_doc_id: str) -> None:
        """Delete every node whose ``ref_doc_id`` is ``ref_doc_id``."""
        with self._lock.write():
            self._remove_slots(self._table.slots_of_docs([ref_doc_id]))

    def delete_nodes(self, node_ids: Optional[List[str]], filters: Optional[MetadataFilters]) -> None:
        """Delete nodes by id and/or filters (both: ids that pass the filters)."""
        with self._lock.write():
            self._remove_slots(self._select(node_ids, None, filters))

    def clear(self) -> None:
        """Remove every node (the dimension, metric, a trained IVF index's training and the Deep
        Memory models are kept)."""
        with self._lock.write():
            self._table = NodeTable()
            self._columns = MetadataColumns(self._read_filter_key)
            if self._index is not None:
                self._index.reset()
            self._version += 1

    # --- reads ----------------------------------------------------------------------------

    def _select(
        self,
        node_ids: Optional[Sequence[str]],
        doc_ids: Optional[Sequence[str]],
        filters: Optional[MetadataFilters],
    ) -> np.ndarray:
        """Live slots matching the restrictions (sorted unless ``node_ids`` gives the order)."""
        table = self._table
        if node_ids is not None:
            if isinstance(node_ids, str):
                raise TypeError("node_ids must be a list of ids, not a single string")
            slots = table.slots_for(node_ids)
        else:
            slots = table.live_slots()
        if doc_ids is not None:
            if isinstance(doc_ids, str):
                raise TypeError("doc_ids must be a list of ids, not a single string")
            wanted = set(doc_ids)
            refs = table.refs
            slots = slots[np.fromiter((refs[s] in wanted for s in slots.tolist()), dtype=bool, count=len(slots))]
        if filters is not None and getattr(filters, "filters", None) and len(slots):
            slots = slots[self._columns.evaluate(filters, slots)]
        return slots

    def _nodes_at(self, slots: Sequence[int]) -> list[BaseNode]:
        nodes = []
        row = self._table.row
        for slot in slots:
            node_id, text, meta, _ref, node_type, extras = row(int(slot))
            nodes.append(build_node(node_id, text, meta, node_type, extras))
        return nodes

    def get_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
    ) -> List[BaseNode]:
        """Stored nodes by id (in the given order, unknown ids skipped) and/or filters."""
        with self._lock.read():
            return self._nodes_at(self._select(node_ids, None, filters))

    def lists_only_index_nodes(self, node_ids: Sequence[str]) -> bool:
        """Whether every id names a stored image or index node (what ``as_retriever`` lists)."""
        with self._lock.read():
            slot_of, types = self._table.slot_of, self._table.types
            slots = [slot_of.get(i) for i in node_ids]
            return all(s is not None and types[s] in _INDEX_STRUCT_TYPES for s in slots)

    def query(self, query: VectorStoreQuery, model: Any) -> VectorStoreQueryResult:
        """The top ``similarity_top_k`` of a validated query, plain or ranked with ``model``."""
        k = query.similarity_top_k
        with self._lock.read():
            if self._dim is None or (query.doc_ids is not None and not query.doc_ids):
                self._as_matrix(query.query_embedding, "query embedding")  # still validate the input
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
            q = self._as_matrix(query.query_embedding, "query embedding")
            if len(q) != 1:
                raise ValueError(f"query_embedding must be one vector, got {len(q)}")
            # empty node_ids mean "no restriction": VectorStoreIndex.as_retriever passes
            # node_ids=[] for stores that keep text (its index struct lists no nodes then)
            node_ids = query.node_ids or None
            doc_ids = query.doc_ids
            restricted = node_ids is not None or doc_ids is not None or bool(
                query.filters is not None and query.filters.filters
            )
            candidates = self._select(node_ids, doc_ids, query.filters) if restricted else None
            if model is None:
                scores, slots = self._search(q, k, candidates)
            else:
                texts = [query.query_str] if query.query_str else None
                scores, slots = self._search_deep_memory(model, q, k, candidates, texts)
            scores, slots = scores[0], slots[0]
            valid = slots >= 0
            scores, slots = scores[valid], slots[valid]
            nodes = self._nodes_at(slots.tolist())
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[float(s) for s in scores], ids=[n.node_id for n in nodes]
        )

    def _search(
        self, q: np.ndarray, k: int, candidates: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, slots) of prepared queries among candidate slots (None = all live)."""
        index, table = self._index, self._table
        n_allowed = len(table) if candidates is None else len(candidates)
        kk = min(k, n_allowed)
        m = len(q)
        if kk <= 0 or index is None:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        if candidates is not None and len(candidates) <= EXACT_CANDIDATES:
            return index.search_exact(q, kk, candidates)
        allowed = None
        if candidates is not None:
            allowed = np.zeros(table.capacity, dtype=bool)
            allowed[candidates] = True
        scores, slots = index.search(q, kk, allowed)
        short = (slots[:, kk - 1] < 0) if kk else np.zeros(m, bool)
        if short.any():  # approximate index found too few: score the allowed rows exactly
            pool = table.live_slots() if candidates is None else candidates
            ex_scores, ex_slots = index.search_exact(q[short], kk, pool)
            scores, slots = scores.copy(), slots.copy()
            scores[short], slots[short] = ex_scores, ex_slots
        return scores, slots

    def _override_slots(self, model: Any, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, bool]:
        """Slots of the ``model``'s override ``ids`` (-1 when not stored), a by-slot membership
        mask and whether every id is stored.

        Cached under ``(model.revision, store version)``: a model with a revision promises the same
        ids until it changes (``DeepMemoryModel.revision``); a model without one (None) is looked
        up on every call.
        """
        key = (model.revision, self._version)
        cache = self._override_cache
        if cache is not None and cache[0] == key and key[0] is not None and len(cache[1][0]) == len(ids):
            return cache[1]
        get = self._table.slot_of.get
        slots = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        mask = np.zeros(self._table.capacity + 1, dtype=bool)  # last cell: the -1 padding slot
        stored = slots >= 0
        mask[slots[stored]] = True
        result = (slots, mask, bool(stored.all()))
        self._override_cache = (key, result)
        return result

    def _search_deep_memory(
        self,
        model: Any,
        q: np.ndarray,
        k: int,
        candidates: np.ndarray | None,
        texts: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, slots) of prepared queries ranked by ``model``; with ``texts`` (one
        query string or None per query) a model with ``rerank_depth`` re-scores its top
        ``max(k, rerank_depth)`` first (see :meth:`_rerank`). Queries the model's gate routes
        (``model.route``) are ranked by ``model.fallback``."""
        routed = model.route(q)
        if routed is not None and model.fallback is not None:
            return self._search_routed(model, q, k, candidates, texts, np.asarray(routed, dtype=bool))
        rerank = texts is not None and model.rerank_depth > 0
        depth = max(k, model.rerank_depth) if rerank else k
        text = texts[0] if rerank and len(q) == 1 else None
        scores, slots, reranked = self._merged_search(model, q, depth, candidates, text, k)
        if rerank and not reranked:
            scores, slots = self._rerank(model, scores, slots, texts, k)
        return scores, slots

    def _search_routed(
        self,
        model: Any,
        q: np.ndarray,
        k: int,
        candidates: np.ndarray | None,
        texts: Sequence[str | None] | None,
        routed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_search_deep_memory` with the ``routed`` queries ranked by ``model.fallback``."""
        if len(q) == 1:
            return self._search_deep_memory(model.fallback, q, k, candidates, texts)
        parts = []
        for rows, ranker in ((np.flatnonzero(~routed), model), (np.flatnonzero(routed), model.fallback)):
            if len(rows):
                part_texts = None if texts is None else [texts[i] for i in rows]
                parts.append((rows, *self._search_deep_memory(ranker, q[rows], k, candidates, part_texts)))
        width = max(part[2].shape[1] for part in parts)
        scores = np.full((len(q), width), -np.inf, dtype=np.float32)
        slots = np.full((len(q), width), -1, dtype=np.int64)
        for rows, part_scores, part_slots in parts:
            scores[rows, : part_scores.shape[1]], slots[rows, : part_slots.shape[1]] = part_scores, part_slots
        return scores, slots

    def _merged_search(
        self, model: Any, q: np.ndarray, k: int, candidates: np.ndarray | None, text: str | None, final_k: int
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Search with the model's transformed query, then merge its exact override scores.

        Every node outside the model's override set scores ``q_t . v`` (the index); override
        nodes score what the model says. So the plain top ``k`` *non-override* hits plus the
        (allowed, stored) override nodes contain the true top ``k``. The common case (no
        override node reaches the plain top ``k``) costs one search and a handful of calls.

        With ``text`` (one query), merge and keyword re-scoring to the top ``final_k`` may run in
        one compiled call; the last value says whether they did.
        """
        if model.dim != q.shape[1]:
            raise ValueError(
                f"the active Deep Memory model was trained for {model.dim}-dimensional vectors but this store "
                f"holds {q.shape[1]}-dimensional ones; train a new model on this store"
            )
        qt, over_ids, over_scores = model.apply(q)
        if not getattr(model.apply, "checks_own_output", False):  # a subclass's own apply: check its results
            qt, over_scores = checked_transform(q, qt), checked_scores(q, over_ids, over_scores)
        if not len(over_ids):  # nothing overridden (e.g. the gate's fallback): keep the override cache
            return (*self._search(qt, k, candidates), False)
        over_slots, over_mask, all_stored = self._override_slots(model, over_ids)
        if candidates is not None:
            allowed = np.zeros(self._table.capacity + 1, dtype=bool)  # last cell: slot -1
            allowed[candidates] = True
            usable = allowed[over_slots]
            over_slots, over_scores = over_slots[usable], over_scores[:, usable]
        elif not all_stored:
            usable = over_slots >= 0
            over_slots, over_scores = over_slots[usable], over_scores[:, usable]
        plain_scores, plain_slots = self._search(qt, k, candidates)
        if not len(over_slots):
            return plain_scores, plain_slots, False
        width = plain_slots.shape[1]
        if len(q) == 1 and width == k > 0:  # store.query's case, in a few calls
            if text:
                fused = self._merge_keyword_single(
                    model, text, final_k, plain_scores, plain_slots, over_scores, over_slots, over_mask
                )
                if fused is not None:
                    return fused
            merged = _merge_single(plain_scores, plain_slots, over_scores, over_slots, over_mask)
            if merged is not None:
                return (*merged, False)
        # Fetch more plain hits until, per query, at least as many override scores reach the
        # last fetched plain score as non-override hits are missing (every unfetched node
        # scores at most that much), or until every allowed node was fetched.
        for extra in dict.fromkeys((0, min(len(over_slots), 16), len(over_slots))):
            if extra:
                plain_scores, plain_slots = self._search(qt, k + extra, candidates)
                width = plain_slots.shape[1]
            dropped = over_mask[plain_slots] | (plain_slots < 0)
            fetched_all = width < k + extra or width == 0 or bool((plain_slots[:, -1] < 0).all())
            if fetched_all:
                break
            missing = min(k, width) - (~dropped).sum(axis=1)
            covered = (over_scores >= plain_scores[:, -1:]).sum(axis=1)
            if ((missing <= 0) | (covered >= missing)).all():
                break
        if not fetched_all:  # nodes below the last fetched plain score cannot reach the top k
            reach = np.flatnonzero((over_scores >= plain_scores[:, -1:]).any(axis=0))
            over_slots, over_scores = over_slots[reach], over_scores[:, reach]
        m = len(q)
        scores = np.concatenate([np.where(dropped, -np.inf, plain_scores), over_scores], axis=1)
        slots = np.concatenate([np.where(dropped, -1, plain_slots),
                                np.broadcast_to(over_slots, (m, len(over_slots)))], axis=1)
        scores, slots = top_k(scores.astype(np.float32, copy=False), slots, min(k, scores.shape[1]))
        return scores, np.where(np.isneginf(scores), -1, slots), False

    def _merge_keyword_single(
        self,
        model: Any,
        text: str,
        k: int,
        plain_scores: np.ndarray,
        plain_slots: np.ndarray,
        over_scores: np.ndarray,
        over_slots: np.ndarray,
        over_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """One query's merge and keyword re-scoring in one compiled call (the work after a FAISS
        scan, where every call costs): the top ``k`` and True, the merged candidates and False
        when some candidate needs scoring from its text, or None for the general path (no numba,
        no keyword plan, keyword rows not cached yet, or too few plain hits).

        The one place a :class:`~llama_index_deepmemory.deep_memory.base.KeywordPlan` becomes
        kernel arguments: its index's postings and the query's term ids, its weight."""
        kernels = compiled_kernels()
        plan = model.keyword_plan() if kernels is not None else None
        rows_by_slot = self._keyword_rows(plan.index, build=False) if plan is not None else None
        if rows_by_slot is None:  # the general path looks them up (and counts towards caching them)
            return None
        spans, doc_terms, doc_weights = plan.index.postings
        written, scores, slots = kernels.merge_keyword_top(
            plain_scores, plain_slots, over_scores, over_slots, over_mask, rows_by_slot,
            spans, doc_terms, doc_weights, plan.index.query_term_ids(text), plan.weight, k,
        )
        return None if written == -1 else (scores, slots, written != -2)

    def _keyword_rows(self, index: Any, build: bool = True) -> np.ndarray | None:
        """Row of every slot in the keyword ``index`` (-1: not indexed), cached under
        ``(index.revision, store version)``. None on the first query after a change: the lookup
        reads every stored id, which a store changing between queries would pay on each of them.
        ``build=False`` only reads the cache (a query that may ask again later)."""
        key = (index.revision, self._version)
        cache = self._keyword_cache
        if cache is None or cache[0] != key:
            if build:
                self._keyword_cache = (key, None)
            return None
        rows = cache[1]
        if rows is None and build:
            rows = index.rows_of(self._table.ids)
            self._keyword_cache = (key, rows)
        return rows  # not self._keyword_cache: a concurrent query of another model may have replaced it

    def _rerank(
        self, model: Any, scores: np.ndarray, slots: np.ndarray, texts: Sequence[str | None], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per row after the model re-scores each row's candidates with its query text.

        A model with a keyword index gets its candidates as index rows, read from the by-slot cache
        once the store is unchanged (a FAISS scan has just flushed the caches, so touching 50 id
        strings costs more than the scoring); the first query after a change looks them up by id."""
        ids, node_texts = self._table.ids, self._table.texts
        plan = model.keyword_plan()
        index = plan.index if plan is not None else None
        rows_by_slot = self._keyword_rows(index) if index is not None else None
        out_scores = np.full((len(slots), min(k, slots.shape[1])), -np.inf, dtype=np.float32)
        out_slots = np.full(out_scores.shape, -1, dtype=np.int64)
        for row, (row_scores, row_slots, text) in enumerate(zip(scores, slots, texts)):
            valid = row_slots >= 0
            row_scores, row_slots = row_scores[valid], row_slots[valid]
            if index is None:  # a model re-scoring without a keyword index: by id
                cands = row_slots.tolist()
                fused = np.asarray(
                    model.rerank(text, [ids[s] for s in cands], row_scores, [node_texts[s] for s in cands])
                )
            else:
                rows = (
                    rows_by_slot[row_slots] if rows_by_slot is not None
                    else index.rows_of([ids[s] for s in row_slots.tolist()])
                )
                unindexed = rows < 0  # added or re-added since training: scored from their text
                cand_texts = (
                    [node_texts[s] if u else None for s, u in zip(row_slots.tolist(), unindexed.tolist())]
                    if unindexed.any() else None
                )
                fused = np.asarray(plan.rescore(text, rows, row_scores, cand_texts))
            if fused.shape != row_scores.shape:
                raise ValueError(
                    f"the active Deep Memory model re-scored {len(row_scores)} candidates into shape {fused.shape}"
                )
            order = np.argsort(-fused, kind="stable")[: out_scores.shape[1]]
            out_scores[row, : len(order)] = fused[order]
            out_slots[row, : len(order)] = row_slots[order]
        return out_scores, out_slots

    # --- StoreView (what Deep Memory may ask) ----------------------------------------------

    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        slot_of = self._table.slot_of
        return [i for i in node_ids if i not in slot_of]

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors (n, d) float32 as searched (normalised for cosine); KeyError if missing."""
        with self._lock.read():
            missing = self.missing_ids(node_ids)
            if missing:
                raise KeyError(f"{len(missing)} node id(s) are not in the store, e.g. {missing[:3]}")
            if self._index is None:
                return np.zeros((0, self._dim or 0), dtype=np.float32)
            slot_of = self._table.slot_of
            slots = np.fromiter((slot_of[i] for i in node_ids), dtype=np.int64, count=len(node_ids))
            return self._index.reconstruct(slots)

    def _iter_live(self, batch_size: int, read: Any) -> Iterator[Any]:
        """``read(live slots)`` of one batch of the stored nodes at a time, each under the read lock."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        with self._lock.read():
            slots = self._table.live_slots()
        for start in range(0, len(slots), batch_size):
            with self._lock.read():
                chunk = slots[start : start + batch_size]
                result = read(chunk[self._table.live[chunk]].tolist())
            yield result

    def iter_texts(self, batch_size: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        """All stored (ids, texts) in batches; each batch is read under the lock."""

        def read(chunk: list[int]) -> tuple[list[str], list[str]]:
            table = self._table
            return [table.ids[s] for s in chunk], [table.texts[s] or "" for s in chunk]

        return self._iter_live(batch_size, read)

    def iter_vectors(self, batch_size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        """All stored (ids, vectors) in batches; each batch is read under the lock."""

        def read(chunk: list[int]) -> tuple[list[str], np.ndarray]:
            ids = self._table.ids
            return [ids[s] for s in chunk], self._index.reconstruct(np.asarray(chunk, dtype=np.int64))

        return self._iter_live(batch_size, read)

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        """Validated (m, d) float32 query vectors, normalised for cosine."""
        if self._dim is None:
            raise ValueError("the store is empty, so its dimension is unknown; add nodes first")
        return self._as_matrix(vectors, "query vectors")

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        deep_memory: bool = False,
        texts: Sequence[str | None] | None = None,
        filters: Optional[MetadataFilters] = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Batched search of prepared queries: scores (m, k') and node ids, ranked exactly as
        ``query(..., deep_memory=deep_memory)`` ranks them (plain search by default); ``texts``
        are the queries' strings (``query_str``), used by a model that re-scores with keywords;
        ``filters`` restrict every query as in :meth:`query`."""
        model = self.deep_memory.require_active_model() if deep_memory else None
        q = np.ascontiguousarray(queries, dtype=np.float32)
        texts = check_query_texts(texts, len(q))
        with self._lock.read():
            restricted = filters is not None and bool(filters.filters)
            candidates = self._select(None, None, filters) if restricted else None
            if model is None:
                scores, slots = self._search(q, k, candidates)
            else:
                scores, slots = self._search_deep_memory(model, q, k, candidates, texts)
            ids = self._table.ids
            return scores, [[ids[s] for s in row if s >= 0] for row in slots.tolist()]

    def usable_ids(self, node_ids: Sequence[str], filters: Optional[MetadataFilters] = None) -> np.ndarray:
        """Per id: stored and passing ``filters`` (a bool array in input order)."""
        with self._lock.read():
            get = self._table.slot_of.get
            slots = np.fromiter((get(i, -1) for i in node_ids), dtype=np.int64, count=len(node_ids))
            usable = slots >= 0
            if filters is not None and filters.filters and usable.any():
                allowed = np.zeros(self._table.capacity + 1, dtype=bool)  # last cell: slot -1
                allowed[self._select(None, None, filters)] = True
                usable &= allowed[slots]
            return usable

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        """Current texts of ``node_ids`` (None for ids not stored)."""
        with self._lock.read():
            get, texts = self._table.slot_of.get, self._table.texts
            return [texts[s] if (s := get(i)) is not None else None for i in node_ids]

    # --- snapshots ------------------------------------------------------------------------

    def persist(self, persist_path: str | os.PathLike) -> None:
        """Write a snapshot to the folder ``persist_path`` (atomic; see :mod:`...persistence`)."""
        # one persist at a time per store (a lock file in the folder serialises other processes)
        with self._persist_lock, self._lock.read():
            persistence.write_generation(persist_path, self._snapshot_writers())

    def _snapshot_writers(self) -> dict[str, Any]:
        """name -> function writing that file of a snapshot (call under the read lock)."""
        table = self._table
        slots = table.live_slots()
        dead = self._index.dead_ids() if self._index is not None else np.zeros(0, dtype=np.int64)
        config = {
            "dim": self._dim,
            "metric": self._metric,
            "index_factory": self._index_factory,
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
            "count": int(len(slots)),
        }
        dm_meta, dm_arrays = (
            self._deep_memory.to_state() if self._deep_memory is not None else ({"active": None, "models": {}}, {})
        )

        def rows() -> Iterator[list[Any]]:
            for slot in slots.tolist():
                yield list(table.row(slot))

        writers = {
            "store.json": lambda p: persistence.write_json(p, config),
            "slots.npy": lambda p: persistence.write_npy(p, slots),
            "dead.npy": lambda p: persistence.write_npy(p, dead),
            "nodes.jsonl": lambda p: persistence.write_jsonl(p, rows()),
            "deep_memory.json": lambda p: persistence.write_json(p, dm_meta),
            "deep_memory.safetensors": lambda p: persistence.write_arrays(p, dm_arrays),
        }
        if self._index is not None:
            writers["index.faiss"] = lambda p: self._index.write(str(p))
        return writers

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str,
        embed_model: "BaseEmbedding | None" = None,
    ) -> "FaissStore":
        """Load a snapshot written by :meth:`persist` (checksums and consistency verified)."""
        for attempt in (1, 2):
            seen = persistence.read_manifest(persist_path)["generation"]
            try:
                with persistence.reading(persist_path):
                    gen, manifest = persistence.open_generation(persist_path, _SNAPSHOT_FILES)
                    return cls._load_generation(gen, manifest, embed_model)
            except (FileNotFoundError, persistence.CorruptStoreError):
                # a writer that ignores the folder's lock may have replaced the generation under
                # us: read the manifest again and retry once if it moved on
                if attempt == 2 or persistence.read_manifest(persist_path)["generation"] == seen:
                    raise
                logger.info("generation %s of %s vanished while loading; retrying", seen, persist_path)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_generation(
        cls, gen: Path, manifest: dict[str, Any], embed_model: "BaseEmbedding | None"
    ) -> "FaissStore":
        config = persistence.read_json(gen / "store.json")
        store_json = str(gen / "store.json")
        if not isinstance(config, dict) or not {"dim", "metric", "index_factory", "count"} <= set(config):
            raise persistence.CorruptStoreError(f"{store_json!r} is not a store configuration")
        try:
            store = cls(
                dim=config["dim"],
                metric=config["metric"],
                index_factory=config["index_factory"],
                embed_model=embed_model,
                nprobe=config.get("nprobe"),
                ef_search=config.get("ef_search"),
            )
        except (TypeError, ValueError) as exc:
            raise persistence.CorruptStoreError(f"{store_json!r} holds an invalid configuration: {exc}") from None
        slots = _read_ids(gen / "slots.npy")
        dead = _read_ids(gen / "dead.npy")
        if config["dim"] is not None:
            if "index.faiss" not in manifest["files"]:
                raise persistence.CorruptStoreError(
                    f"the manifest of {str(gen)!r} does not list index.faiss, which a store of dim "
                    f"{config['dim']} needs"
                )
            index_path = gen / "index.faiss"
            store._index = persistence.load_file(
                index_path, "FAISS index",
                lambda p: VectorIndex.read(
                    str(p), config["dim"], config["metric"], config["index_factory"],
                    config.get("nprobe"), config.get("ef_search"), dead,
                ),
            )
            _check_slots(index_path, store._index.all_ids(), slots, dead)
        elif len(slots) or len(dead):
            raise persistence.CorruptStoreError(
                f"{str(gen / 'slots.npy')!r} lists {len(slots)} slots but the store has no index"
            )
        table = store._table
        capacity = int(max(slots.max(initial=-1), dead.max(initial=-1))) + 1
        table.allocate(capacity)  # empty slots; filled below
        count = 0
        nodes_path = gen / "nodes.jsonl"
        for slot, row in zip(slots.tolist(), persistence.iter_jsonl(nodes_path)):
            if not _valid_row(row):
                raise persistence.CorruptStoreError(
                    f"{str(nodes_path)!r} line {count + 1} is not a node row (id, text, metadata, "
                    "ref_doc_id, type, fields)"
                )
            table.put(slot, *row)
            count += 1
        if count != len(slots) or count != config["count"]:
            raise persistence.CorruptStoreError(
                f"{str(nodes_path)!r} holds {count} nodes, expected {len(slots)}"
            )
        if len(table) != count:
            raise persistence.CorruptStoreError(f"{str(nodes_path)!r} holds duplicate node ids")
        holes = np.ones(capacity, dtype=bool)
        holes[slots] = False
        holes[dead] = False
        table.free_slots(np.flatnonzero(holes).tolist())
        dm_path = gen / "deep_memory.json"
        dm_meta = persistence.read_json(dm_path)
        if not isinstance(dm_meta, dict):
            raise persistence.CorruptStoreError(f"{str(dm_path)!r} is not a Deep Memory state object")
        if dm_meta.get("models") or dm_meta.get("jobs"):
            arrays = persistence.read_arrays(gen / "deep_memory.safetensors")
            try:
                store.deep_memory.load_state(dm_meta, arrays)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise persistence.CorruptStoreError(
                    f"{str(dm_path)!r} / deep_memory.safetensors hold an invalid Deep Memory state: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        return store


_SNAPSHOT_FILES = ("store.json", "slots.npy", "dead.npy", "nodes.jsonl", "deep_memory.json",
                   "deep_memory.safetensors")
_FACTORY_PROBE_DIMS = (96, 128, 256, 384, 512, 768, 1024, 1536, 3072)


def _check_factory(dim: int | None, metric: str, factory: str) -> None:
    """Validate a factory string now: against ``dim``, or (dim=None) against common dimensions,
    leaving the check for the actual dimension to the first add."""
    if dim is not None:
        build_faiss_index(dim, metric, factory)
        return
    first_error: ValueError | None = None
    for probe in _FACTORY_PROBE_DIMS:
        try:
            build_faiss_index(probe, metric, factory)
            return
        except ValueError as exc:
            first_error = first_error or exc
            if "not supported" in str(exc) or "IDMap" in str(exc):
                break
    raise ValueError(
        f"index_factory={factory!r} could not be built for any common embedding dimension "
        f"{_FACTORY_PROBE_DIMS} ({first_error}). If it needs a particular dimension, pass dim= "
        "so it is checked against that."
    ) from None


def _read_ids(path: Path) -> np.ndarray:
    """A 1-D integer ``.npy`` array of slot numbers, as int64."""
    array = persistence.read_npy(path)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise persistence.CorruptStoreError(
            f"persisted store file {str(path)!r} holds a {array.dtype} array of shape {array.shape}, "
            "expected 1-D integer slot numbers"
        )
    return array.astype(np.int64, copy=False)


def _check_slots(index_path: Path, index_ids: np.ndarray, slots: np.ndarray, dead: np.ndarray) -> None:
    """The live slots and tombstones must be exactly the FAISS index's row ids, each once."""
    listed = np.concatenate([slots, dead])
    if len(listed) != len(index_ids) or not np.array_equal(np.sort(listed), np.sort(index_ids)):
        raise persistence.CorruptStoreError(
            f"slots.npy and dead.npy ({len(slots)} + {len(dead)} slots) do not match the "
            f"{len(index_ids)} row ids of {str(index_path)!r}: the snapshot is inconsistent"
        )
    if len(np.unique(listed)) != len(listed):
        raise persistence.CorruptStoreError(
            f"slots.npy and dead.npy list a slot twice (inconsistent with {str(index_path)!r})"
        )


def _valid_row(row: Any) -> bool:
    return (
        isinstance(row, list) and len(row) == 6
        and all(isinstance(v, str) for v in (row[0], row[1], row[2], row[4], row[5]))
        and (row[3] is None or isinstance(row[3], str))
    )


def _merge_single(
    plain_scores: np.ndarray,
    plain_slots: np.ndarray,
    over_scores: np.ndarray,
    over_slots: np.ndarray,
    over_mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact top k of one query from its k plain hits and the override scores in one compiled
    call, or None when the k plain hits do not suffice (too many of them are override nodes
    scored lower) or numba is missing: the store's general merge then answers.

    Plain hits that are override nodes are replaced by their override scores; override nodes
    below the k-th plain score cannot enter.
    """
    kernels = compiled_kernels()
    if kernels is None:
        return None
    k = plain_slots.shape[1]
    out_scores, out_slots = np.empty((1, k), dtype=np.float32), np.empty((1, k), dtype=np.int64)
    written = kernels.merge_overrides(
        plain_scores, plain_slots, np.ascontiguousarray(over_scores), over_slots, over_mask, out_scores, out_slots
    )
    return None if written < 0 else (out_scores, out_slots)
