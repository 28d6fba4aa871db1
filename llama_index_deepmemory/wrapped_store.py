"""Deep Memory over a LlamaIndex vector store that keeps text (Qdrant, Chroma, Milvus, PostgreSQL, ...).

The vectors live in the engine; a backend adapter (:func:`.engine.adapters.adapter_for`, one per
engine, chosen once) translates. :class:`WrappedStore` is what ``DeepMemoryVectorStore(
vector_store=...)`` delegates to: it owns the store's Deep Memory, answers ``StoreView`` for it,
and ranks ``deep_memory=True`` queries with :func:`deep_memory.ranking.rank` over the adapter's
search, so the same trained model serves over FAISS and over any engine.

Scores: the engine ranks by cosine similarity; the plain search of a transformed query ``q_t``
returns ``cos(q_t, v)``, multiplied here by ``|q_t|`` into ``q_t . v`` (the scale the model's scores
are in) for the unit vectors the engine stores.

Cost: an engine walks as wide as the hits asked (pgvector's HNSW returns at most ``ef_search``
rows), so a deep search asks few beyond its depth: ``search_margin`` (the override nodes expected
among the hits, no more; the ranking searches deeper where a query falls short), and a keyword
query re-scores the top ``keyword_depth`` candidates (default :data:`WRAPPED_KEYWORD_DEPTH`, where
the embedded store re-scores the model's 50); training validates with the model's own head.

Caches (texts of nodes results carried, which override nodes are usable) last until the next
write through this object (the adapter's ``version``); a node deleted by another process leaves
the results of the plain search at once, and the override set at this object's next write.
Thread safety: queries, adds and deletes may run from many threads at once; the adapters
serialise what their client cannot do concurrently.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery, VectorStoreQueryResult

from llama_index_deepmemory.engine.adapters import adapter_for
from llama_index_deepmemory.engine.backend import Restriction
from llama_index_deepmemory.engine.usable_cache import UsableCache
from llama_index_deepmemory.vectors import as_matrix, padded

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

LIST_BATCH = 1024  # nodes per page when listing the corpus
_USABLE_CACHE = 64  # (model overrides, restriction) entries kept
TEXT_CACHE = 100_000  # node texts kept from results (keyword re-scoring reads them)
COUNT_HINT_S = 5.0  # the node count behind search_margin: recounted after a write at most this often
# the keyword head over a wrapped engine (a plain query asks 10 hits, the model's head of 50 asks ~58,
# and an engine walks as wide as the hits asked): chosen on the train-only SciFact dev splits
# (``bench_dev.py --splits 0,1,2 --train-seeds 0,1,2 --variants head``, mean of 9 runs, nDCG@10 all /
# doc-disjoint): head 50 0.844 / 0.735, 30 0.843 / 0.734, 20 0.842 / 0.730, 10 0.835 / 0.719
WRAPPED_KEYWORD_DEPTH = 20


def as_restriction(filters: Any) -> Restriction:
    if filters is None or isinstance(filters, Restriction):
        return filters or Restriction()
    if isinstance(filters, MetadataFilters):
        return Restriction(filters=filters if filters.filters else None)
    raise TypeError(f"filters must be LlamaIndex MetadataFilters or None, got {type(filters).__name__}")



def _check_batch_size(batch_size: int) -> None:
    """A listing's page size must be positive (an engine asked for 0 rows a page would page forever)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


class WrappedStore:
    """A LlamaIndex vector store as the face's backend and Deep Memory's ``StoreView``."""

    def __init__(self, vector_store: Any, embed_model: "BaseEmbedding | None" = None,
                 keyword_depth: int | None = None) -> None:
        self.backend = adapter_for(vector_store)
        self.engine = vector_store
        self.embed_model = embed_model
        self.metric = "cosine"
        self._dim: int | None = None
        self._lock = threading.RLock()
        self._added_texts: dict[str, str] = {}  # nodes added through this object (keyword fallback)
        self._usable = UsableCache(_USABLE_CACHE)
        self._texts: OrderedDict[str, str] = OrderedDict()  # texts seen in results, until the next write
        self._deep_memory: DeepMemory | None = None
        self._count: tuple[int, int, float] | None = None  # (nodes, backend version, when): _share_margin's hint
        # Deep Memory's hits asked beyond its depth: a callable (n_overrides, depth) -> hits, a
        # number of hits, or None (the ranking's own margin)
        pays = getattr(self.backend, "pays_per_hit", False)
        self.search_margin: Any = self._share_margin if pays else None
        # the keyword head deep_memory=True queries re-score (None: the model's own); one default
        # for every engine, so a model ranks alike over each
        self.default_keyword_depth: int | None = WRAPPED_KEYWORD_DEPTH
        self.keyword_depth = keyword_depth  # checked here, not at the first query

    @property
    def keyword_depth(self) -> int | None:
        """The keyword head ``deep_memory=True`` queries re-score; setting None restores the default."""
        return self._keyword_depth

    @keyword_depth.setter
    def keyword_depth(self, value: int | None) -> None:
        from llama_index_deepmemory.deep_memory.ranking import check_keyword_depth

        value = check_keyword_depth(value)
        self._keyword_depth = value if value is not None else self.default_keyword_depth

    # --- the face's operations ----------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode]) -> list[str]:
        nodes = list(nodes)
        if not nodes:
            return []
        as_matrix([n.embedding for n in nodes], "node embeddings", self.dim, "cosine", [n.node_id for n in nodes])
        self.backend.add(nodes)
        with self._lock:
            self._dim = len(nodes[0].embedding)
            for node in nodes:
                self._added_texts[node.node_id] = node.get_content()
            self._forget(keep_texts=True)  # the added nodes' texts are remembered just below
        self._remember(nodes)
        if self._deep_memory is not None:
            self._deep_memory.texts_changed([n.node_id for n in nodes])
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str) -> None:
        self._forget_texts(self.backend.delete(ref_doc_id))  # the ids of its nodes added here

    def delete_nodes(self, node_ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        self._forget_texts(self.backend.delete_nodes(node_ids, filters))  # the named ids no longer stored

    def _forget_texts(self, gone: list[str]) -> None:
        """A delete through this object: the texts of the nodes it removed go, and the caches."""
        with self._lock:
            for node_id in gone:
                self._added_texts.pop(node_id, None)
        self._forget()

    def clear(self) -> None:
        self.backend.clear()
        with self._lock:
            self._added_texts.clear()
        self._forget()

    def get_nodes(self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None) -> list[BaseNode]:
        """Stored nodes by id (in the given order, unknown ids skipped) and/or filters."""
        if node_ids is None:
            if filters is None:
                return [n for page in self._pages_or_added(LIST_BATCH) for n in page]
            return self.backend.filtered(filters)
        return self.backend.get(node_ids, filters)

    def query(self, query: VectorStoreQuery, model: Any = None) -> VectorStoreQueryResult:
        """Plain top k from the engine, or ranked with a Deep Memory ``model``."""
        restriction = Restriction(
            filters=query.filters if query.filters is not None and query.filters.filters else None,
            node_ids=tuple(query.node_ids) if query.node_ids else None,
            doc_ids=tuple(query.doc_ids) if query.doc_ids is not None else None,
        )
        if self.dim is None:  # nothing stored yet: validate the input, find nothing
            as_matrix(query.query_embedding, "query embedding", None, "cosine")
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        q = self.prepare_queries(query.query_embedding)
        if len(q) != 1:
            raise ValueError(f"query_embedding must be one vector, got {len(q)}")
        seen: dict[str, BaseNode] = {}
        if model is None:
            rows, ids = self._search(q, query.similarity_top_k, restriction, seen, bodies=True)
            scores, ids = rows[0], ids[0]
        else:
            from llama_index_deepmemory.deep_memory.ranking import rank

            ranked, ranked_ids = rank(_RecordingView(self, seen), q, model, query.similarity_top_k,
                                      texts=[query.query_str] if query.query_str else None, filters=restriction,
                                      keyword_depth=self.keyword_depth)
            scores, ids = ranked[0], ranked_ids[0]
        missing = [i for i in ids if i not in seen]
        if missing:  # searched without bodies, or override nodes: built from rows read before, else one read
            seen.update((n.node_id, n) for n in self.backend.bodies(missing))
        pairs = [(float(s), seen[i]) for s, i in zip(scores, ids) if i in seen]  # deleted meanwhile: dropped
        return VectorStoreQueryResult(nodes=[n for _, n in pairs], similarities=[s for s, _ in pairs],
                                      ids=[n.node_id for _, n in pairs])

    def lists_only_index_nodes(self, node_ids: Sequence[str]) -> bool:
        """Whether every id names a stored image or index node (what ``as_retriever`` lists)."""
        from llama_index.core.schema import ImageNode, IndexNode

        found = self.backend.get(list(node_ids), with_vectors=False)
        return len(found) == len(set(node_ids)) and all(isinstance(n, (ImageNode, IndexNode)) for n in found)

    def persist(self, persist_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Save the Deep Memory models to ``persist_path`` (the engine keeps the nodes); models kept
        there that this store lacks are refused unless ``overwrite`` (see :func:`.state.save_to`)."""
        from llama_index_deepmemory.deep_memory import state

        state.save_to(persist_path, self.deep_memory, overwrite=overwrite)

    @property
    def client(self) -> Any:
        return self.engine.client

    # --- StoreView ------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        if self._dim is None:
            first = next(self._pages_or_added(1), [])
            if first and first[0].embedding is not None:
                self._dim = len(first[0].embedding)
        return self._dim

    def __len__(self) -> int:
        return self.backend.count()

    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        found = {n.node_id for n in self.backend.get(list(node_ids), with_vectors=False)}
        return [i for i in node_ids if i not in found]

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        present, vectors = self.present_vectors(node_ids)
        if len(present) < len(node_ids):
            kept = set(present)
            missing = [i for i in node_ids if i not in kept]
            raise KeyError(f"{len(missing)} node id(s) are not in {type(self.engine).__name__}, e.g. {missing[:3]}")
        return vectors

    def present_vectors(self, node_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Those of ``node_ids`` stored now (in order) and their vectors, in one read: a node deleted
        since a search found it (by another thread or process) is left out. KeyError where a stored
        node comes back without its embedding."""
        nodes = {n.node_id: n for n in self.backend.get(list(node_ids))}
        present = [i for i in node_ids if i in nodes]
        blank = [i for i in present if nodes[i].embedding is None]
        if blank:
            raise KeyError(f"{len(blank)} node id(s) came back from {type(self.engine).__name__} without their "
                           f"embedding, e.g. {blank[:3]}")
        if not present:
            return [], np.zeros((0, self.dim or 0), dtype=np.float32)
        return present, as_matrix([nodes[i].embedding for i in present], "stored vectors", None, "cosine")

    def iter_vectors(self, batch_size: int = LIST_BATCH) -> Iterator[tuple[list[str], np.ndarray]]:
        _check_batch_size(batch_size)
        for page in self.backend.pages(with_vectors=True, limit=batch_size):
            yield [n.node_id for n in page], as_matrix([n.embedding for n in page], "stored vectors", None, "cosine")

    def iter_texts(self, batch_size: int = LIST_BATCH) -> Iterator[tuple[list[str], list[str]]]:
        _check_batch_size(batch_size)
        try:
            for page in self.backend.pages(with_vectors=False, limit=batch_size):
                yield [n.node_id for n in page], [n.get_content() for n in page]
        except NotImplementedError:
            logger.warning(
                "%s cannot list its nodes: keyword statistics come from the %d nodes added through this wrapper",
                type(self.engine).__name__, len(self._added_texts),
            )
            with self._lock:
                items = list(self._added_texts.items())
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                yield [i for i, _ in chunk], [t for _, t in chunk]

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        dim = self.dim
        if dim is None:
            raise ValueError(f"{type(self.engine).__name__} holds no nodes yet, so its dimension is unknown; add nodes first")
        return as_matrix(vectors, "query vectors", dim, "cosine")

    def search_vectors(self, queries: np.ndarray, k: int, deep_memory: bool = False,
                       texts: Sequence[str | None] | None = None, filters: Any = None) -> tuple[np.ndarray, list[list[str]]]:
        restriction = as_restriction(filters)
        if deep_memory:
            from llama_index_deepmemory.deep_memory.ranking import rank

            model = self.deep_memory.require_active_model()
            scores, ids = rank(self, queries, model, k, texts=texts, filters=restriction,
                               keyword_depth=self.keyword_depth)
        else:
            scores, ids = self._search(queries, k, restriction, None, bodies=False)
        return padded(scores), ids

    def usable_ids(self, node_ids: Sequence[str], filters: Any = None) -> np.ndarray:
        """Stored and allowed, cached per id sequence and restriction until the next write
        through this object."""
        restriction = as_restriction(filters)
        node_ids, version, key = tuple(node_ids), self.backend.version, restriction.key()
        cached = self._usable.get(node_ids, key, version)
        if cached is not None:
            return cached
        nodes = self.backend.get(list(node_ids), filters=restriction.filters, with_vectors=False)
        self._remember(nodes)
        found = {n.node_id for n in nodes if restriction.allows(n)}
        usable = np.fromiter((i in found for i in node_ids), dtype=bool, count=len(node_ids))
        return self._usable.put(node_ids, key, version, usable)

    def _share_margin(self, n_overrides: int, depth: int) -> int:
        """``search_margin`` over an engine where each hit asked costs (its row read, a wider ANN
        walk): hits asked beyond ``depth`` for the override nodes expected among them (their share
        of the store), no more. The ranking searches deeper where they fall short (a second round
        trip for that query), so this changes speed only (an ANN engine walks as wide as the hits
        asked, so every spare hit widens every query's walk)."""
        share = min(1.0, n_overrides / max(self._count_hint(), 1))
        return min(n_overrides, math.ceil(depth * share / max(1.0 - share, 0.05)))

    def _count_hint(self) -> int:
        """The node count, recounted after a write through this object (at most every
        ``COUNT_HINT_S``) and every ``10 * COUNT_HINT_S`` (writes by other processes)."""
        now, version = time.monotonic(), self.backend.version
        kept = self._count
        if kept is None or now - kept[2] > 10 * COUNT_HINT_S or (kept[1] != version and now - kept[2] > COUNT_HINT_S):
            kept = self._count = (self.backend.count(), version, now)
        return kept[0]

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        """Texts of ``node_ids`` (None: not stored), from the texts recent results carried."""
        with self._lock:
            unseen = [i for i in node_ids if i not in self._texts]
        if unseen:
            self._remember(self.backend.get(unseen, with_vectors=False))
        with self._lock:
            return [self._texts.get(i) for i in node_ids]

    def training_view(self, max_nodes: int) -> Any:
        """What training reads and validates on: an exact in-memory copy of the collection (one
        listing; training reads every vector anyway) up to ``max_nodes`` nodes, else this store
        (negatives mined and validation searched through the engine)."""
        if len(self) > max_nodes:
            return self
        from llama_index_deepmemory.engine.array_view import ArrayStoreView

        ids: list[str] = []
        vectors: list[np.ndarray] = []
        texts: list[str] = []
        for page in self._pages_or_added(LIST_BATCH):
            ids.extend(n.node_id for n in page)
            vectors.append(as_matrix([n.embedding for n in page], "stored vectors", None, "cosine"))
            texts.extend(n.get_content() for n in page)
        if not ids:
            return self
        return ArrayStoreView(ids, np.concatenate(vectors), texts)

    @property
    def deep_memory(self) -> "DeepMemory":
        if self._deep_memory is None:
            with self._lock:
                if self._deep_memory is None:
                    from llama_index_deepmemory.deep_memory.api import DeepMemory

                    self._deep_memory = DeepMemory(self)
        return self._deep_memory

    # --- helpers ------------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int, restriction: Restriction, seen: Optional[dict[str, BaseNode]],
                bodies: bool | None) -> tuple[list[np.ndarray], list[list[str]]]:
        """Plain top ``k`` per prepared (or transformed) query, scores as ``q . v`` (and, with
        ``bodies``, the nodes into ``seen``; a deep search asks ids and scores only, ``None``: the
        adapter may keep the rows it reads with them, unbuilt, for the few nodes the query returns)."""
        queries = np.asarray(queries, dtype=np.float32)
        hits = self.backend.search(queries, int(k), restriction, bodies=bodies)
        if hits.nodes:
            self._remember(list(hits.nodes.values()))
            if seen is not None:
                seen.update(hits.nodes)
        if hits.texts:  # texts that came without bodies (keyword re-scoring reads them)
            with self._lock:
                self._texts.update(hits.texts)
        norms = np.linalg.norm(queries, axis=1).astype(np.float32)
        return [s * n for s, n in zip(hits.scores, norms)], [self.backend.ids(h) for h in hits.handles]

    def _forget(self, keep_texts: bool = False) -> None:
        """A write through this object: cached allow-lists go; cached texts too, unless the caller
        updates the texts it changed."""
        with self._lock:
            self._usable.clear()
            if not keep_texts:
                self._texts.clear()

    def _remember(self, nodes: Sequence[BaseNode]) -> None:
        """Keep the texts of nodes the engine returned (bounded)."""
        with self._lock:
            for node in nodes:
                self._texts[node.node_id] = node.get_content()
            while len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)

    def _pages_or_added(self, limit: int) -> Iterator[list[BaseNode]]:
        """Every node with its vector, a page at a time; where the store cannot list its nodes,
        the nodes added through this object, read back by id."""
        try:
            pages = self.backend.pages(with_vectors=True, limit=limit)
            first = next(pages, None)  # a store that cannot list says so before the first page
        except NotImplementedError:
            known = self.backend.added_ids()
            for start in range(0, len(known), limit):
                yield self.backend.get(known[start : start + limit])
            return
        if first is not None:
            yield first
            yield from pages


class _RecordingView:
    """A ``StoreView`` over a wrapped store that remembers the nodes its searches return (one
    query's result then needs no second read of their bodies)."""

    def __init__(self, store: WrappedStore, seen: dict[str, BaseNode]) -> None:
        self._store, self._seen = store, seen

    def __len__(self) -> int:
        return len(self._store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def search_vectors(self, queries: np.ndarray, k: int, filters: Any = None,
                       **_: Any) -> tuple[list[np.ndarray], list[list[str]]]:
        """The plain search, scores a float32 row per query as long as its ids (not padded into one
        matrix: the ranking reads each row up to its ids, and this view serves only the ranking)."""
        return self._store._search(queries, k, as_restriction(filters), self._seen, bodies=None)
