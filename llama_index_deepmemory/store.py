"""``DeepMemoryVectorStore``: LlamaIndex's vector store protocol, with Deep Memory.

The face validates, delegates and answers LlamaIndex's conventions; a backend keeps the nodes:

* the embedded FAISS store (:class:`~llama_index_deepmemory.engine.faiss_store.FaissStore`,
  default), or
* any LlamaIndex store that keeps text, e.g. Qdrant, Chroma, Milvus or PostgreSQL
  (``vector_store=``, see :mod:`llama_index_deepmemory.wrapped_store`; one adapter per engine
  in :mod:`llama_index_deepmemory.engine`).

``stores_text=True``: nodes come back from ``query``/``get_nodes`` with text, metadata and
relationships, so no docstore is needed. ``query(..., deep_memory=True)`` applies the active Deep
Memory model (an error if none). Async methods run the sync code in a worker thread.

Over the embedded store the face owns Deep Memory: it hands the backend a ranker for ranked
queries and keeps the models beside the snapshot, in a model location the manifest names
(:mod:`llama_index_deepmemory.deep_memory.state`); a store loaded from a folder is bound to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    DEFAULT_PERSIST_DIR,
    DEFAULT_PERSIST_FNAME,
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from llama_index_deepmemory import persistence
from llama_index_deepmemory.engine.faiss_store import FaissStore
from llama_index_deepmemory.filters import check_filter_depth
from llama_index_deepmemory.index import AUTO
from llama_index_deepmemory.mmr import llama_index_mmr

if TYPE_CHECKING:  # pragma: no cover
    import fsspec
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

QUERY_KWARGS = ("deep_memory", "mmr_threshold", "mmr_prefetch_k")
DM_FIELD = "deep_memory"  # the manifest field naming the store's model location
NAMESPACE_SEP = "__"
DEFAULT_NAMESPACE = "default"


class DeepMemoryVectorStore(BasePydanticVectorStore):
    """A vector store that keeps node text and supports Deep Memory queries.

    Args:
        dim: embedding dimension; None (default) takes it from the first ``add``.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``: scores are cosine similarity, the
            inner product, or the *negative squared* L2 distance (higher is always better).
        index_factory: ``"auto"`` (default; None too): exact ``"Flat"`` below 20,000 nodes, then
            ``"HNSW32"`` (converted once when an add reaches that size); or a ``faiss.index_factory``
            string used at every size: ``"Flat"`` (always exact), ``"HNSW32"`` or ``"IVF1024,Flat"``
            (IVF trains on the first add, which must bring at least ``nlist`` vectors).
        embed_model: embedding model used by Deep Memory training/evaluation (not persisted).
        nprobe: IVF lists probed per query (FAISS default when None).
        ef_search: HNSW search breadth (``index.DEFAULT_EF_SEARCH``, 128, when None).
        vector_store: another LlamaIndex vector store that keeps text (e.g. ``QdrantVectorStore``)
            to keep the vectors in; adds, deletes, ``get_nodes``, ``clear`` and filters pass through
            to it, and ``deep_memory=True`` ranks over its search (see :mod:`.wrapped_store`).
            The FAISS options above do not apply then.
        model_dir: with ``vector_store``, the folder the Deep Memory models are shared through: every
            training, ``set_model`` and deletion is recorded there at once, and every process opening
            the same ``model_dir`` sees it within a second (see :mod:`.deep_memory.state`).
        keyword_depth: how many top candidates a ``deep_memory=True`` query with ``query_str``
            re-scores with keywords, at most the model's own head (50). None (default): the model's
            head over the embedded store, ``wrapped_store.WRAPPED_KEYWORD_DEPTH`` over a
            ``vector_store`` (an engine walks as wide as the hits asked: a smaller head asks fewer;
            chosen on a train-only dev split, ``bench_dev.py --variants head``).
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    _backend: Any = PrivateAttr(default=None)  # FaissStore, or wrapped_store.WrappedStore
    _deep_memory: Any = PrivateAttr(default=None)  # the face's DeepMemory over the embedded store
    _dm_lock: Any = PrivateAttr(default_factory=threading.Lock)
    _persist_lock: Any = PrivateAttr(default_factory=threading.Lock)
    _seen: dict = PrivateAttr(default_factory=dict)  # folder -> the generation this handle last saw there
    _legacy_folder: Any = PrivateAttr(default=None)  # loaded from a snapshot that kept models inside it
    _keyword_depth: Any = PrivateAttr(default=None)  # the embedded store's keyword head cap (None: the model's)

    def __init__(
        self,
        dim: int | None = None,
        metric: str = "cosine",
        index_factory: str | None = AUTO,
        embed_model: "BaseEmbedding | None" = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        vector_store: Any = None,
        model_dir: str | os.PathLike | None = None,
        keyword_depth: int | None = None,
    ) -> None:
        from llama_index_deepmemory.deep_memory.ranking import check_keyword_depth

        keyword_depth = check_keyword_depth(keyword_depth)
        if vector_store is None:
            if model_dir is not None:
                raise ValueError(
                    "model_dir is for stores wrapping another vector_store; the embedded store saves its models "
                    "with store.persist(path)"
                )
            backend: Any = FaissStore(dim, metric, index_factory, embed_model, nprobe, ef_search)
        else:
            options = {"dim": (dim, None), "metric": (metric, "cosine"), "index_factory": (index_factory or AUTO, AUTO),
                       "nprobe": (nprobe, None), "ef_search": (ef_search, None)}
            given = {name: value for name, (value, default) in options.items() if value != default}
            if given:
                raise ValueError(
                    f"{sorted(given)} configure the embedded FAISS index and do not apply with vector_store=; "
                    f"configure {type(vector_store).__name__} itself (it must rank by cosine similarity)"
                )
            backend = _wrapped_backend(vector_store, embed_model, model_dir, keyword_depth)
        super().__init__()
        self._backend = backend
        self._keyword_depth = keyword_depth if vector_store is None else None  # a wrapped store keeps its own

    def __getstate__(self) -> Any:
        raise TypeError(
            "DeepMemoryVectorStore cannot be pickled: it holds a FAISS index (or an engine client), locks and "
            "training jobs. Save it with store.persist(path) and load it with "
            "DeepMemoryVectorStore.from_persist_path(path) instead."
        )

    def __getattr__(self, item: str) -> Any:
        """Private attributes (``self._backend``) straight from pydantic's private dict: pydantic's
        own ``__getattr__`` first probes each for a descriptor, which raises and catches inside
        (about 1.7 µs a read, against 0.15 µs here)."""
        try:
            return object.__getattribute__(self, "__pydantic_private__")[item]
        except (AttributeError, KeyError, TypeError):
            return super().__getattr__(item)

    @classmethod
    def class_name(cls) -> str:
        return "DeepMemoryVectorStore"

    # --- properties ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The FAISS index (None until the dimension is known), or the wrapped store's client."""
        return self._backend.client

    @property
    def vector_store(self) -> Any:
        """The wrapped LlamaIndex vector store, or None for the embedded FAISS store."""
        return getattr(self._backend, "engine", None)

    @property
    def dim(self) -> int | None:
        return self._backend.dim

    @property
    def metric(self) -> str:
        return self._backend.metric

    @property
    def index_factory(self) -> str | None:
        """The FAISS index factory string (None over a wrapped store)."""
        return getattr(self._backend, "index_factory", None)

    @property
    def embed_model(self) -> "BaseEmbedding | None":
        return self._backend.embed_model

    @embed_model.setter
    def embed_model(self, value: "BaseEmbedding | None") -> None:
        self._backend.embed_model = value

    @property
    def keyword_depth(self) -> int | None:
        """The keyword head cap ``deep_memory=True`` queries rank with (see the class docstring;
        over a ``vector_store`` the default already resolved)."""
        if isinstance(self._backend, FaissStore):
            return self._keyword_depth
        return self._backend.keyword_depth

    @keyword_depth.setter
    def keyword_depth(self, value: int | None) -> None:
        if isinstance(self._backend, FaissStore):
            from llama_index_deepmemory.deep_memory.ranking import check_keyword_depth

            self._keyword_depth = check_keyword_depth(value)
        else:  # checked there; None restores the wrapped default
            self._backend.keyword_depth = value

    @property
    def vectorstore(self) -> "DeepMemoryVectorStore":
        """This store, under the name Deep Lake's LlamaIndex store gives its inner store, so
        Activeloop's tutorial line ``vector_store.vectorstore.deep_memory.train(...)`` runs as written."""
        return self

    @property
    def deep_memory(self) -> "DeepMemory":
        """This store's Deep Memory manager (created on first use)."""
        manager = self._deep_memory
        if manager is not None:
            return manager
        backend = self._backend
        if not isinstance(backend, FaissStore):
            return backend.deep_memory
        with self._dm_lock:
            if self._deep_memory is None:  # checked again: another thread may have made it
                from llama_index_deepmemory.deep_memory.api import DeepMemory

                manager = DeepMemory(self)
                backend.on_texts_changed = manager.texts_changed
                self._deep_memory = manager
            return self._deep_memory

    def __len__(self) -> int:
        return len(self._backend)

    def __bool__(self) -> bool:  # an empty store is still a store (LlamaIndex tests `if vector_store:`)
        return True

    # --- writes ------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Add nodes (with embeddings); returns their ids. Re-adding an id replaces that node.

        ``add([])`` returns ``[]`` (LlamaIndex itself calls it so). Nothing is stored unless
        every node is valid.
        """
        if add_kwargs:
            logger.debug("add ignores keyword arguments %s", sorted(add_kwargs))
        nodes = list(nodes)
        if not nodes:
            return []
        for node in nodes:
            if not isinstance(node, BaseNode):
                raise TypeError(f"add expects LlamaIndex nodes, got {type(node).__name__}")
            if node.embedding is None:
                raise ValueError(
                    f"node {node.node_id!r} has no embedding; embed nodes before adding them "
                    "(VectorStoreIndex does this for you)"
                )
        return self._backend.add(nodes)

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose ``ref_doc_id`` is ``ref_doc_id``."""
        if not isinstance(ref_doc_id, str):
            raise TypeError(f"ref_doc_id must be a str, got {type(ref_doc_id).__name__}")
        self._backend.delete(ref_doc_id)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    def delete_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and/or filters (both: ids that pass the filters).

        Passing neither is refused (use :meth:`clear` to delete everything).
        """
        if node_ids is None and (filters is None or not getattr(filters, "filters", None)):
            raise ValueError(
                f"delete_nodes needs node_ids and/or non-empty filters, got node_ids={node_ids!r}, "
                f"filters={filters!r}; call clear() to delete everything"
            )
        if isinstance(node_ids, str):
            raise TypeError("node_ids must be a list of ids, not a single string")
        self._backend.delete_nodes(node_ids, filters)

    async def adelete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    def clear(self) -> None:
        """Remove every node (the dimension, metric, a trained IVF index's training and the Deep
        Memory models are kept)."""
        self._backend.clear()

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    # --- reads -------------------------------------------------------------------------------
    def get_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
    ) -> List[BaseNode]:
        """Stored nodes by id (in the given order, unknown ids skipped) and/or filters."""
        if isinstance(node_ids, str):
            raise TypeError("node_ids must be a list of ids, not a single string")
        return self._backend.get_nodes(node_ids, filters)

    async def aget_nodes(self, node_ids: Optional[List[str]] = None,
                         filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes; ``deep_memory=True`` applies the active Deep Memory model.

        With a model that re-scores with keywords and a ``query_str``, similarities are the fused
        scores (cosine plus up to the model's ``lexical_weight``), so they can exceed 1.

        ``node_ids`` restricts the search when non-empty (an empty list, which
        ``VectorStoreIndex.as_retriever`` passes for text-keeping stores, means no restriction;
        so does a list naming only image and index nodes, which is what ``as_retriever`` lists for
        an index holding such nodes: restrict to those with a metadata filter instead).
        ``doc_ids`` restricts to those documents; an empty list returns nothing.

        ``vector_store_query_mode="mmr"`` re-orders the top ``mmr_prefetch_k`` (default
        ``max(4 * k, 50)``) candidates, ranked plain or with Deep Memory, by LlamaIndex's maximal
        marginal relevance (``mmr_threshold``, default 0.5, as ``SimpleVectorStore``); the
        similarities are then the MMR scores, as there.
        """
        deep_memory, threshold, prefetch = _query_options(kwargs)
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise ValueError(
                f"query mode {getattr(query.mode, 'value', query.mode)!r} is not supported; "
                "DeepMemoryVectorStore answers dense queries (mode='default' or 'mmr')"
            )
        k = query.similarity_top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= sys.maxsize:
            raise ValueError(
                f"similarity_top_k must be an int from 0 to sys.maxsize ({sys.maxsize}; a k above the store's size "
                f"returns every node), got {k!r}"
            )
        check_filter_depth(query.filters)
        if query.query_embedding is None:
            raise ValueError("query.query_embedding is None; embed the query first")
        model = self.deep_memory.require_active_model() if deep_memory else None
        if query.node_ids and self._backend.lists_only_index_nodes(query.node_ids):
            query = dataclasses.replace(query, node_ids=None)
        if query.mode == VectorStoreQueryMode.MMR:
            return self._mmr_query(query, model, threshold, prefetch)
        return self._backend.query(query, self._ranker(model))

    def _ranker(self, model: Any) -> Any:
        """What the backend's query takes: the embedded store a ranker over its lock-free view
        (or None: plain), a wrapped store the model itself."""
        if model is None or not isinstance(self._backend, FaissStore):
            return model
        return _Ranker(model, self._keyword_depth)

    def _mmr_query(
        self, query: VectorStoreQuery, model: Any, threshold: float, prefetch: int | None
    ) -> VectorStoreQueryResult:
        """Maximal marginal relevance over the top ``prefetch`` candidates (see :meth:`query`)."""
        k = query.similarity_top_k
        depth = max(k, prefetch if prefetch is not None else max(4 * k, 50))
        asked = dataclasses.replace(query, similarity_top_k=depth)
        if isinstance(self._backend, FaissStore):  # the pool and its vectors from one state of the store
            with self._backend.reading():
                pool = self._backend.query(asked, self._ranker(model))
                vectors = self._backend.get_vectors([n.node_id for n in pool.nodes]) if pool.nodes and k else None
        else:
            pool = self._backend.query(asked, self._ranker(model))
            if pool.nodes and k:
                pool, vectors = self._still_stored(pool)
        if not pool.nodes or k == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        picks, scores = llama_index_mmr(np.asarray(pool.similarities, dtype=np.float64), vectors, k, threshold)
        nodes = [pool.nodes[i] for i in picks]
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=[n.node_id for n in nodes])

    def _still_stored(self, pool: VectorStoreQueryResult) -> tuple[VectorStoreQueryResult, np.ndarray]:
        """``pool`` less the candidates deleted since its search (a wrapped engine other processes
        write too), and their vectors, in one read."""
        present, vectors = self._backend.present_vectors([n.node_id for n in pool.nodes])
        if len(present) < len(pool.nodes):
            kept = set(present)
            pairs = [(n, s) for n, s in zip(pool.nodes, pool.similarities) if n.node_id in kept]
            pool = VectorStoreQueryResult(nodes=[n for n, _ in pairs], similarities=[s for _, s in pairs],
                                          ids=[n.node_id for n, _ in pairs])
        return pool, vectors

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    # --- what Deep Memory reads (the backend's StoreView), for callers that want it directly -------
    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        return self._backend.missing_ids(node_ids)

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors (n, d) float32 as searched (normalised for cosine); KeyError if missing."""
        if isinstance(node_ids, str):
            raise TypeError(f"node_ids must be a list of ids, not a single string ({node_ids!r}); pass [{node_ids!r}]")
        return self._backend.get_vectors(node_ids)

    def iter_texts(self, batch_size: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        return self._backend.iter_texts(batch_size)

    def iter_vectors(self, batch_size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        return self._backend.iter_vectors(batch_size)

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        return self._backend.prepare_queries(vectors)

    def training_view(self, max_nodes: int) -> Any:
        """What Deep Memory trains on: this store, or a view of it searching exactly (approximate index)."""
        view = self._backend.training_view(max_nodes)
        return self if view is self._backend else view

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        deep_memory: bool = False,
        texts: Sequence[str | None] | None = None,
        filters: Optional[MetadataFilters] = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Batched search of prepared queries, ranked as :meth:`query` ranks them."""
        if not isinstance(self._backend, FaissStore):
            return self._backend.search_vectors(queries, k, deep_memory=deep_memory, texts=texts, filters=filters)
        from llama_index_deepmemory.deep_memory.base import check_query_texts

        model = self.deep_memory.require_active_model() if deep_memory else None
        texts = check_query_texts(texts, len(queries))
        return self._backend.search_vectors(queries, k, self._ranker(model), texts=texts, filters=filters)

    def usable_ids(self, node_ids: Sequence[str], filters: Optional[MetadataFilters] = None) -> np.ndarray:
        return self._backend.usable_ids(node_ids, filters)

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        return self._backend.texts_of(node_ids)

    # --- persistence --------------------------------------------------------------------------
    def persist(
        self,
        persist_path: str = os.path.join(DEFAULT_PERSIST_DIR, DEFAULT_PERSIST_FNAME),
        fs: "fsspec.AbstractFileSystem | None" = None,
        overwrite: bool = False,
    ) -> None:
        """Write a snapshot to the folder ``persist_path`` (atomic; see :mod:`.persistence`).

        The Deep Memory models live beside the nodes: a store loaded from ``persist_path`` keeps
        sharing its models there (recorded as they change); any other store writes a copy of its own.
        When another handle or process persisted to ``persist_path`` since this store loaded (or last
        persisted) it, nothing is written and :class:`~.persistence.StaleStoreError` names the fix;
        ``overwrite=True`` replaces what is there instead.

        A store wrapping another ``vector_store`` writes only its Deep Memory models there (the
        engine keeps the nodes); load them with ``DeepMemoryVectorStore(vector_store=...,
        model_dir=persist_path)``."""
        _check_local_fs(fs)
        if not isinstance(self._backend, FaissStore):
            self._backend.persist(persist_path, overwrite=overwrite)
            return
        self._persist_snapshot(persist_path, overwrite)
        if self.embed_model is not None:  # from_persist_path loads it again
            from llama_index_deepmemory.embeddings import write_embedding_record

            write_embedding_record(persist_path, self.embed_model)

    def _persist_snapshot(self, persist_path: str, overwrite: bool) -> None:
        """Write the embedded store's snapshot (refused over a folder changed since it was read)."""
        from llama_index_deepmemory.deep_memory import state

        key = os.path.realpath(persist_path)
        manager = self._deep_memory
        with self._persist_lock:
            expect = persistence.ANY if overwrite else self._seen.get(key, persistence.ANY)
            written: dict[str, str] = {}  # the sides this snapshot names (another writer may follow at once)

            def sides(root: Path) -> dict[str, str]:
                location = manager.location if manager is not None else None
                if location is not None and os.path.realpath(location.root.parent) == key and location.stamp():
                    written[DM_FIELD] = location.root.name  # already recorded there, change by change
                else:
                    written[DM_FIELD] = state.write_copy(root, *(manager.to_state() if manager is not None else (_EMPTY_STATE, {})))
                return dict(written)

            generation = self._backend.persist(persist_path, expect=expect, side_fields=sides,
                                               side_prefixes=(state.SIDE_PREFIX,))
            self._seen[key] = generation
            if self._legacy_folder == key and manager is not None and manager.location is None:
                manager.bind(state.ModelLocation(Path(persist_path) / written[DM_FIELD]))  # converted: shared now
                self._legacy_folder = None

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str,
        fs: "fsspec.AbstractFileSystem | None" = None,
        embed_model: "BaseEmbedding | None" = None,
        *,
        load_recorded_embedding: bool = True,
        keyword_depth: int | None = None,
    ) -> "DeepMemoryVectorStore":
        """Load a snapshot written by :meth:`persist` (checksums and consistency verified); its
        Deep Memory models are those of the folder, shared with every process serving it.
        ``keyword_depth`` is a serving setting of this process, as in the constructor (not persisted).

        Without ``embed_model``, the embedding model recorded at :meth:`persist` (or by the CLI's
        ``ingest``) is loaded: the bundled default or a sentence-transformers folder or name; an
        API model (OpenAI's, ...) cannot be rebuilt from its name, and is a ValueError asking
        for ``embed_model=``. ``load_recorded_embedding=False`` skips loading it (no model then)."""
        _check_local_fs(fs)
        if embed_model is None and load_recorded_embedding:
            from llama_index_deepmemory.embeddings import load_recorded_embedding as load_recorded

            embed_model = load_recorded(persist_path)
        from llama_index_deepmemory.deep_memory import state
        from llama_index_deepmemory.deep_memory.ranking import check_keyword_depth

        keyword_depth = check_keyword_depth(keyword_depth)
        for attempt in (1, 2, 3):  # retried only when a writer ignoring the folder's locks replaced the models
            store = cls()
            try:  # the models are read under the folder's read lock, with the generation naming them
                backend, manifest, _ = FaissStore.from_persist_path(
                    persist_path, embed_model, read_extra=lambda gen, m: store._read_models(persist_path, gen, m))
            except state.LocationGoneError as exc:  # only a writer ignoring the folder's locks does that
                if attempt == 3:
                    raise persistence.CorruptStoreError(
                        f"{os.path.join(persist_path, persistence.MANIFEST)!r} names the model location "
                        f"{exc.root.name!r}, which is missing; {persistence.DAMAGE_REMEDY}") from None
                logger.info("the model location of %s vanished while loading; retrying", persist_path)
                continue
            store._backend, store._seen[os.path.realpath(persist_path)] = backend, manifest["generation"]
            store._keyword_depth = keyword_depth
            return store
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_models(self, persist_path: str, gen: Path, manifest: dict[str, Any]) -> None:
        """Serve the models ``manifest`` names (its model location, or the older layout's inside
        generation ``gen``); call under the folder's read lock, so they cannot vanish meanwhile."""
        from llama_index_deepmemory.deep_memory import state

        area, where = manifest.get("sides", {}).get(DM_FIELD), os.path.join(persist_path, persistence.MANIFEST)
        legacy = state.read_legacy_snapshot(gen, manifest["files"])  # verified whenever listed
        try:
            if manifest["format_version"] >= 2:
                if not isinstance(area, str) or not area.startswith(state.SIDE_PREFIX):
                    raise persistence.CorruptStoreError(f"{where!r} names no valid model location ({area!r})")
                self.deep_memory.bind(state.ModelLocation(Path(persist_path) / area))
            elif legacy is not None and (legacy[0].get("models") or legacy[0].get("jobs")):
                self.deep_memory.load_state(*legacy)
                self._legacy_folder = os.path.realpath(persist_path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, persistence.CorruptStoreError):
                raise
            raise persistence.CorruptStoreError(
                f"{persist_path!r} holds an invalid Deep Memory state: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str = DEFAULT_PERSIST_DIR,
        namespace: str = DEFAULT_NAMESPACE,
        fs: "fsspec.AbstractFileSystem | None" = None,
        embed_model: "BaseEmbedding | None" = None,
    ) -> "DeepMemoryVectorStore":
        """Load what ``StorageContext.persist(persist_dir)`` wrote for ``namespace``."""
        persist_path = os.path.join(persist_dir, f"{namespace}{NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}")
        return cls.from_persist_path(persist_path, fs=fs, embed_model=embed_model)


def _wrapped_backend(vector_store: Any, embed_model: Any, model_dir: str | os.PathLike | None,
                     keyword_depth: int | None = None) -> Any:
    """A wrapped engine as the backend, its models shared through ``model_dir``."""
    from llama_index_deepmemory.wrapped_store import WrappedStore

    if isinstance(vector_store, DeepMemoryVectorStore):
        raise ValueError("vector_store is already a DeepMemoryVectorStore; pass the engine's own store")
    wrapped = WrappedStore(vector_store, embed_model, keyword_depth=keyword_depth)
    if model_dir is not None:
        from llama_index_deepmemory.deep_memory import state

        wrapped.deep_memory.bind(state.ModelLocation.open(model_dir))
    return wrapped


_EMPTY_STATE: dict[str, Any] = {"format_version": 1, "active": None, "models": {}, "jobs": []}


class _Ranker:
    """The Deep Memory ranking of one query with ``model``, as the embedded backend calls it."""

    __slots__ = ("model", "keyword_depth")

    def __init__(self, model: Any, keyword_depth: int | None = None) -> None:
        self.model, self.keyword_depth = model, keyword_depth

    def __call__(self, view: Any, queries: np.ndarray, k: int, texts: Any, restriction: Any) -> Any:
        return _rank()(view, queries, self.model, k, texts=texts, filters=restriction, keyword_depth=self.keyword_depth)


def _rank() -> Any:
    global _RANK
    if _RANK is None:
        from llama_index_deepmemory.deep_memory.ranking import rank

        _RANK = rank
    return _RANK


_RANK: Any = None


def _query_options(kwargs: dict[str, Any]) -> tuple[bool, float, int | None]:
    """``deep_memory``, ``mmr_threshold`` and ``mmr_prefetch_k`` of a query, checked."""
    unknown = sorted(set(kwargs) - set(QUERY_KWARGS))
    if unknown:
        raise TypeError(
            f"DeepMemoryVectorStore.query got unexpected keyword argument(s) {unknown}; "
            f"accepted: {list(QUERY_KWARGS)} (e.g. vector_store_kwargs={{'deep_memory': True}})"
        )
    deep_memory = kwargs.get("deep_memory", False)
    if not isinstance(deep_memory, bool):
        raise TypeError(f"deep_memory must be True or False, got {deep_memory!r}")
    threshold = kwargs.get("mmr_threshold")
    threshold = 0.5 if threshold is None else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"mmr_threshold must be a number in [0, 1] (1: relevance only), got {threshold!r}")
    prefetch = kwargs.get("mmr_prefetch_k")
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch <= 0):
        raise ValueError(f"mmr_prefetch_k must be a positive int (candidates MMR re-orders), got {prefetch!r}")
    return deep_memory, float(threshold), prefetch


def _check_local_fs(fs: Any) -> None:
    if fs is None:
        return
    protocol = getattr(fs, "protocol", "file")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if not {"file", "local"} & set(protocols):
        raise ValueError(
            f"DeepMemoryVectorStore persists to the local filesystem only, got fs protocol {protocol!r}"
        )


__all__ = ["DeepMemoryVectorStore"]
