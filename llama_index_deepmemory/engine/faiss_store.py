"""The embedded backend: FAISS vectors plus a node table (text, metadata, relationships).

* Scores are "higher is better": ``metric="cosine"`` (default) stores normalised vectors and
  scores with their inner product (cosine similarity, as LlamaIndex's ``SimpleVectorStore``);
  ``"ip"`` the raw inner product; ``"l2"`` the *negative squared* L2 distance.
* Filters follow ``SimpleVectorStore`` (:mod:`llama_index_deepmemory.filters`) and are applied
  before the top-k, so a filtered query returns ``k`` hits whenever that many match.
* Ranked queries: ``query`` and ``search_vectors`` take an optional ``ranker`` (the face's Deep
  Memory ranking), called under the read lock with a lock-free view of this store; the backend
  knows nothing of what it does.
* Thread safety: a phase-fair readers-writer lock; any number of concurrent readers (query,
  get_nodes, persist, vector reads) or one writer (add, delete, clear). Persists of one store,
  and of one folder across processes, run one at a time.
* Index: ``index_factory="auto"`` (default; None means the same) holds an exact ``Flat`` index
  and converts it, under the write lock, to an approximate one when an add reaches
  ``index.AUTO_APPROXIMATE_FROM`` nodes, re-probing its recall each time the store doubles
  (:mod:`.faiss_auto`: ef_search raised while it misses, exact for good past the cap). It stays
  approximate when deletes shrink it; ``clear`` starts over. A factory string given is used as is.
* Snapshots (:mod:`.faiss_snapshot`): versioned, checksummed, written atomically
  (:mod:`llama_index_deepmemory.persistence`); vectors and nodes only (the face hands the manifest
  anything else it keeps beside them).

:class:`~llama_index_deepmemory.store.DeepMemoryVectorStore` is the LlamaIndex face over it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode, ImageNode, IndexNode
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery, VectorStoreQueryResult

from llama_index_deepmemory import persistence
from llama_index_deepmemory.engine import faiss_auto, faiss_snapshot
from llama_index_deepmemory.engine.faiss_view import ExactView, HeldView, Slots
from llama_index_deepmemory.engine.usable_cache import UsableCache
from llama_index_deepmemory.filters import MetadataColumns
from llama_index_deepmemory.index import AUTO, METRICS, VectorIndex, check_factory
from llama_index_deepmemory.node_codec import build_node, check_saveable, node_fields
from llama_index_deepmemory.node_table import NodeTable
from llama_index_deepmemory.rwlock import ReadWriteLock
from llama_index_deepmemory.vectors import as_matrix, padded

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)

# (lock-free view, prepared queries, k, query texts, restriction) -> (scores, node ids)
Ranker = Callable[[Any, np.ndarray, int, Any, Any], tuple[np.ndarray, list[list[str]]]]
EXACT_CANDIDATES = 4096  # restricted queries with at most this many candidates are scored exactly
_INDEX_STRUCT_TYPES = frozenset({ImageNode.class_name(), IndexNode.class_name()})


class FaissStore:
    """Nodes and their vectors in FAISS; the ``StoreView`` Deep Memory trains and ranks over."""

    def __init__(
        self,
        dim: int | None = None,
        metric: str = "cosine",
        index_factory: str | None = AUTO,
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
        index_factory = AUTO if index_factory is None else index_factory
        if isinstance(index_factory, str) and index_factory != AUTO and index_factory.strip().lower() == AUTO:
            raise ValueError(f"index_factory={index_factory!r} is not a FAISS factory string; the default is "
                             f"spelled index_factory={AUTO!r} (lower case), or leave index_factory out")
        if index_factory != AUTO:
            check_factory(dim, metric, index_factory)
        self._dim = dim
        self._metric = metric
        self._index_factory = index_factory
        self._nprobe = nprobe
        self._ef_search = ef_search
        self._index: VectorIndex | None = self._new_index(dim) if dim is not None else None
        self._retry_at = 0  # "auto": nodes from which to try the approximate index (NEVER: stays exact)
        self._probe_at = 0  # "auto" over a graph: nodes at which the add re-probes its recall (faiss_auto)
        self._table = NodeTable()
        self._columns = MetadataColumns(self._read_filter_key)
        self._lock = ReadWriteLock()
        self._persist_lock = threading.Lock()
        self.embed_model = embed_model  # embeds queries for Deep Memory training and evaluation
        self.on_texts_changed: Callable[[list[str]], None] | None = None  # told of re-added ids, under the lock
        self._usable = UsableCache(8)  # override ids usable without restriction, per version
        self._held = HeldView(self)  # what the ranking reads while a query holds the lock
        # (keyword index, its used rows, store version, its row per slot or None: asked once)
        self._slot_rows: tuple[Any, int, int, np.ndarray | None] | None = None
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
        """The factory string given (``"auto"``: see :attr:`index_in_use`)."""
        return self._index_factory

    @property
    def index_in_use(self) -> str | None:
        """The factory string of the FAISS index held now (None until the dimension is known)."""
        return None if self._index is None else self._index.factory

    def __len__(self) -> int:
        return len(self._table)

    def _new_index(self, dim: int) -> VectorIndex:
        """An empty index of the store's factory (``"auto"``: ``"Flat"``)."""
        factory = "Flat" if self._index_factory == AUTO else self._index_factory
        return VectorIndex(dim, self._metric, factory, self._nprobe, self._ef_search)

    def _read_filter_key(self, key: str) -> list[Any]:
        return self._table.read_key(key)

    def reading(self) -> Any:
        """The read lock as a context manager: the reads made inside it see one state of the store
        (re-entrant; no write may be made inside it)."""
        return self._lock.read()

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
            hook = self.on_texts_changed
            if hook is not None:  # re-added nodes may carry new text: keyword scores must follow
                hook([row[0] for row in rows])
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
        try:  # "auto": the add that reaches a size turns it approximate, or re-probes the graph
            self._index = faiss_auto.maintained(self, self._index)
        except Exception as exc:  # the nodes are added; the index held keeps serving them (a failure such
            # as a MemoryError may pass: the next doubling tries again, not every add, and not never)
            again = faiss_auto.next_probe_at(len(self._table))
            if self._index.exact:
                logger.warning("index_factory='auto' could not build its approximate index (%s); search stays exact "
                               "and the graph is tried again at %d nodes", exc, again)
                self._retry_at = again
            else:
                logger.warning("index_factory='auto' could not re-probe its graph (%s); the graph keeps serving "
                               "and is probed again at %d nodes", exc, again)
                self._probe_at = again

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
                if self._index_factory == AUTO:  # an empty "auto" store is exact again
                    self._index, self._retry_at, self._probe_at = self._new_index(self._index.dim), 0, 0
                else:
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

    def query(self, query: VectorStoreQuery, ranker: Ranker | None = None) -> VectorStoreQueryResult:
        """The top ``similarity_top_k`` of a validated query, plain or ranked by ``ranker``."""
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
            if ranker is None:
                scores, slots = self._search(q, k, candidates)
                scores, slots = scores[0], slots[0]
                valid = slots >= 0
                scores, slot_list = scores[valid], slots[valid].tolist()
            else:
                texts = [query.query_str] if query.query_str else None
                restriction = Slots(candidates) if candidates is not None else None
                ranked_scores, ranked_ids = ranker(self._held, q, k, texts, restriction)
                scores, slot_of = ranked_scores[0], self._table.slot_of
                slot_list = [slot_of[i] for i in ranked_ids[0]]
            nodes = self._nodes_at(slot_list)
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[float(s) for s in scores], ids=[n.node_id for n in nodes]
        )

    def _search(
        self, q: np.ndarray, k: int, candidates: np.ndarray | None, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, slots) of prepared queries among candidate slots (None = all live);
        ``exact``: exact whatever the index (training's searches)."""
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
        if exact:
            return index.search_all_exact(q, kk, allowed)
        scores, slots = index.search(q, kk, allowed)
        short = (slots[:, kk - 1] < 0) if kk else np.zeros(m, bool)
        if short.any():  # approximate index found too few: score the allowed rows exactly
            pool = table.live_slots() if candidates is None else candidates
            ex_scores, ex_slots = index.search_exact(q[short], kk, pool)
            scores, slots = scores.copy(), slots.copy()
            scores[short], slots[short] = ex_scores, ex_slots
        return scores, slots

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
        """``read(live slots)`` of one batch of the stored nodes at a time, each under the read lock;
        a ``clear`` between two batches ends the listing (its slots may hold other nodes by then)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        with self._lock.read():
            table = self._table
            slots = table.live_slots()
        for start in range(0, len(slots), batch_size):
            with self._lock.read():
                if self._table is not table:  # cleared: the nodes listed at the start are gone
                    return
                chunk = slots[start : start + batch_size]
                result = read(chunk[table.live[chunk]].tolist())
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
        ranker: Ranker | None = None,
        texts: Sequence[str | None] | None = None,
        filters: Optional[MetadataFilters] = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Batched search of prepared queries: scores (m, k') and node ids, ranked by ``ranker``
        exactly as :meth:`query` ranks them (plain search by default); ``texts`` are the queries'
        strings, handed to the ranker; ``filters`` restrict every query as in :meth:`query`."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock.read():
            if ranker is not None:
                scores, ids = ranker(self._held, q, k, texts, filters)
                return padded(scores), ids
            return self._search_ids(q, k, filters)

    def _search_ids(self, q: np.ndarray, k: int, filters: "MetadataFilters | Slots | None",
                    exact: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Plain top ``k`` (scores, node ids) of prepared queries; the caller holds the lock."""
        candidates = self._candidates(filters)
        scores, slots = self._search(q, k, candidates, exact=True) if exact else self._search(q, k, candidates)
        ids = self._table.ids
        return scores, [[ids[s] for s in row if s >= 0] for row in slots.tolist()]

    def training_view(self, max_nodes: int = 0) -> Any:
        """What Deep Memory trains and validates on: this store while its index is exact for good, else
        a view of it whose plain searches are exact (:class:`~.faiss_view.ExactView`; no copy). An
        ``"auto"`` store always gets the view: an add made while the job runs may turn it approximate."""
        index = self._index
        exact_for_good = index is not None and index.exact and self._index_factory != AUTO
        return self if index is None or exact_for_good else ExactView(self)

    def _search_rows(
        self, q: np.ndarray, k: int, filters: "MetadataFilters | Slots | None", index: Any
    ) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]] | None:
        """Plain top ``k`` of one prepared query as (scores, the hits' ``index`` rows, the id at a
        position), for the ranking's one-call keyword path; the caller holds the lock. None until
        the same index is asked for twice at this store version: the row of every slot is then
        kept, and a store that changes between queries never pays the pass over all its ids."""
        version, used = self._version, index.n_used
        kept = self._slot_rows
        if kept is None or kept[0] is not index or kept[1:3] != (used, version):
            self._slot_rows = (index, used, version, None)
            return None
        rows_by_slot = kept[3]
        if rows_by_slot is None:
            rows_by_slot = index.rows_of(self._table.ids)
            self._slot_rows = (index, used, version, rows_by_slot)
        scores, slots = self._search(q, k, self._candidates(filters))
        row, ids = slots[0], self._table.ids  # every slot valid: _search fills short rows exactly
        return scores[0], rows_by_slot[row], lambda position: ids[row[position]]

    def _search_slots(
        self, q: np.ndarray, k: int, filters: "MetadataFilters | Slots | None", override_ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]]:
        """Plain top ``k`` of one prepared query as (scores, whether each hit is not one of
        ``override_ids``, the id at a position), for the ranking's one-call dense path: no hit's
        id is looked up but those asked for; the caller holds the lock."""
        scores, slots = self._search(q, k, self._candidates(filters))
        row, ids = slots[0], self._table.ids  # every slot valid: _search fills short rows exactly
        return scores[0], ~self._override_flags(override_ids)[row], lambda position: ids[row[position]]

    def _override_flags(self, node_ids: Sequence[str]) -> np.ndarray:
        """A flag per slot (and a last, False, for slot -1): the slot holds one of ``node_ids``
        (cached until the next change, like :meth:`usable_ids`)."""
        node_ids, version = tuple(node_ids), self._version
        cached = self._usable.get(node_ids, "flags by slot", version)
        if cached is not None:
            return cached
        flags = np.zeros(self._table.capacity + 1, dtype=bool)
        get = self._table.slot_of.get
        slots = np.fromiter((get(i, -1) for i in node_ids), dtype=np.int64, count=len(node_ids))
        flags[slots[slots >= 0]] = True
        return self._usable.put(node_ids, "flags by slot", version, flags)

    def _candidates(self, filters: "MetadataFilters | Slots | None") -> np.ndarray | None:
        """The slots a restriction allows (None: every live node)."""
        if isinstance(filters, Slots):
            return filters.slots
        return self._select(None, None, filters) if filters is not None and filters.filters else None

    def usable_ids(self, node_ids: Sequence[str], filters: "MetadataFilters | Slots | None" = None) -> np.ndarray:
        """Per id: stored and passing ``filters`` (a read-only bool array in input order; cached
        without a restriction until the next change)."""
        with self._lock.read():
            return self._usable_ids(node_ids, filters)

    def _usable_ids(self, node_ids: Sequence[str], filters: "MetadataFilters | Slots | None") -> np.ndarray:
        node_ids, version = tuple(node_ids), self._version
        candidates = self._candidates(filters)
        if candidates is None and (cached := self._usable.get(node_ids, None, version)) is not None:
            return cached
        get = self._table.slot_of.get
        slots = np.fromiter((get(i, -1) for i in node_ids), dtype=np.int64, count=len(node_ids))
        usable = slots >= 0
        if candidates is None:
            return self._usable.put(node_ids, None, version, usable)
        if usable.any():
            allowed = np.zeros(self._table.capacity + 1, dtype=bool)  # last cell: slot -1
            allowed[candidates] = True
            usable &= allowed[slots]
        return usable

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        """Current texts of ``node_ids`` (None for ids not stored)."""
        with self._lock.read():
            return self._texts_of(node_ids)

    def _texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        get, texts = self._table.slot_of.get, self._table.texts
        return [texts[s] if (s := get(i)) is not None else None for i in node_ids]

    # --- snapshots (:mod:`.faiss_snapshot`) ------------------------------------------------

    def persist(
        self,
        persist_path: str | os.PathLike,
        expect: Any = persistence.ANY,
        side_fields: Callable[[Path], dict[str, str]] | None = None,
        side_prefixes: tuple[str, ...] = (),
    ) -> str:
        """Write a snapshot to the folder ``persist_path`` (atomic; see :mod:`...persistence`,
        which explains ``expect``, ``side_fields`` and ``side_prefixes``); returns its generation."""
        return faiss_snapshot.persist(self, persist_path, expect, side_fields, side_prefixes)

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str,
        embed_model: "BaseEmbedding | None" = None,
        read_extra: Callable[[Path, dict[str, Any]], Any] | None = None,
    ) -> tuple["FaissStore", dict[str, Any], Any]:
        """Load a snapshot written by :meth:`persist` (checksums and consistency verified):
        the store, its manifest and ``read_extra(generation folder, manifest)`` (called while the
        generation cannot vanish, for what the face keeps beside the nodes)."""
        return faiss_snapshot.load(cls, persist_path, embed_model, read_extra)
