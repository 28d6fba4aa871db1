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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
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

from llama_index_deepmemory.engine.faiss_store import FaissStore

if TYPE_CHECKING:  # pragma: no cover
    import fsspec
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

QUERY_KWARGS = ("deep_memory", "mmr_threshold", "mmr_prefetch_k")
NAMESPACE_SEP = "__"
DEFAULT_NAMESPACE = "default"


class DeepMemoryVectorStore(BasePydanticVectorStore):
    """A vector store that keeps node text and supports Deep Memory queries.

    Args:
        dim: embedding dimension; None (default) takes it from the first ``add``.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``: scores are cosine similarity, the
            inner product, or the *negative squared* L2 distance (higher is always better).
        index_factory: a ``faiss.index_factory`` string: ``"Flat"`` (exact, default),
            ``"HNSW32"`` or ``"IVF1024,Flat"`` (IVF trains on the first add, which must bring at
            least ``nlist`` vectors).
        embed_model: embedding model used by Deep Memory training/evaluation (not persisted).
        nprobe: IVF lists probed per query (FAISS default when None).
        ef_search: HNSW search breadth (FAISS default when None).
        vector_store: another LlamaIndex vector store that keeps text (e.g. ``QdrantVectorStore``)
            to keep the vectors in; adds, deletes, ``get_nodes``, ``clear`` and filters pass through
            to it, and ``deep_memory=True`` ranks over its search (see :mod:`.wrapped_store`).
            The FAISS options above do not apply then.
        model_dir: with ``vector_store``, the local folder the Deep Memory models are saved to after
            every training or ``set_model`` and loaded from at construction (versioned, atomic).
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    _backend: Any = PrivateAttr(default=None)  # FaissStore, or wrapped_store.WrappedStore

    def __init__(
        self,
        dim: int | None = None,
        metric: str = "cosine",
        index_factory: str = "Flat",
        embed_model: "BaseEmbedding | None" = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        vector_store: Any = None,
        model_dir: str | os.PathLike | None = None,
    ) -> None:
        if vector_store is None:
            if model_dir is not None:
                raise ValueError(
                    "model_dir is for stores wrapping another vector_store; the embedded store saves its models "
                    "with store.persist(path)"
                )
            backend: Any = FaissStore(dim, metric, index_factory, embed_model, nprobe, ef_search)
        else:
            options = {"dim": (dim, None), "metric": (metric, "cosine"), "index_factory": (index_factory, "Flat"),
                       "nprobe": (nprobe, None), "ef_search": (ef_search, None)}
            given = {name: value for name, (value, default) in options.items() if value != default}
            if given:
                raise ValueError(
                    f"{sorted(given)} configure the embedded FAISS index and do not apply with vector_store=; "
                    f"configure {type(vector_store).__name__} itself (it must rank by cosine similarity)"
                )
            backend = _wrapped_backend(vector_store, embed_model, model_dir)
        super().__init__()
        self._backend = backend

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
    def deep_memory(self) -> "DeepMemory":
        """This store's Deep Memory manager (created on first use)."""
        return self._backend.deep_memory

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

    async def adelete_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
        **delete_kwargs: Any,
    ) -> None:
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

    async def aget_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
    ) -> List[BaseNode]:
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
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"similarity_top_k must be an int >= 0, got {k!r}")
        if query.query_embedding is None:
            raise ValueError("query.query_embedding is None; embed the query first")
        model = self.deep_memory.require_active_model() if deep_memory else None
        if query.node_ids and self._backend.lists_only_index_nodes(query.node_ids):
            query = dataclasses.replace(query, node_ids=None)
        if query.mode == VectorStoreQueryMode.MMR:
            return self._mmr_query(query, model, threshold, prefetch)
        return self._backend.query(query, model)

    def _mmr_query(
        self, query: VectorStoreQuery, model: Any, threshold: float, prefetch: int | None
    ) -> VectorStoreQueryResult:
        """Maximal marginal relevance over the top ``prefetch`` candidates (see :meth:`query`)."""
        k = query.similarity_top_k
        depth = max(k, prefetch if prefetch is not None else max(4 * k, 50))
        pool = self._backend.query(dataclasses.replace(query, similarity_top_k=depth), model)
        if not pool.nodes or k == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        vectors = self._backend.get_vectors([n.node_id for n in pool.nodes])
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        picks, scores = mmr_order(np.asarray(pool.similarities, dtype=np.float64), vectors, k, threshold)
        nodes = [pool.nodes[i] for i in picks]
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=[n.node_id for n in nodes])

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    # --- what Deep Memory reads (the backend's StoreView), for callers that want it directly -------
    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        return self._backend.missing_ids(node_ids)

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors (n, d) float32 as searched (normalised for cosine); KeyError if missing."""
        return self._backend.get_vectors(node_ids)

    def iter_texts(self, batch_size: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        return self._backend.iter_texts(batch_size)

    def iter_vectors(self, batch_size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        return self._backend.iter_vectors(batch_size)

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        return self._backend.prepare_queries(vectors)

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        deep_memory: bool = False,
        texts: Sequence[str | None] | None = None,
        filters: Optional[MetadataFilters] = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Batched search of prepared queries, ranked as :meth:`query` ranks them."""
        return self._backend.search_vectors(queries, k, deep_memory=deep_memory, texts=texts, filters=filters)

    def usable_ids(self, node_ids: Sequence[str], filters: Optional[MetadataFilters] = None) -> np.ndarray:
        return self._backend.usable_ids(node_ids, filters)

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        return self._backend.texts_of(node_ids)

    # --- persistence --------------------------------------------------------------------------
    def persist(
        self,
        persist_path: str = os.path.join(DEFAULT_PERSIST_DIR, DEFAULT_PERSIST_FNAME),
        fs: "fsspec.AbstractFileSystem | None" = None,
    ) -> None:
        """Write a snapshot to the folder ``persist_path`` (atomic; see :mod:`.persistence`).

        A store wrapping another ``vector_store`` writes only its Deep Memory models there (the
        engine keeps the nodes); load them with ``DeepMemoryVectorStore(vector_store=...,
        model_dir=persist_path)``."""
        _check_local_fs(fs)
        self._backend.persist(persist_path)

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str,
        fs: "fsspec.AbstractFileSystem | None" = None,
        embed_model: "BaseEmbedding | None" = None,
    ) -> "DeepMemoryVectorStore":
        """Load a snapshot written by :meth:`persist` (checksums and consistency verified)."""
        _check_local_fs(fs)
        store = cls()
        store._backend = FaissStore.from_persist_path(persist_path, embed_model)
        return store

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


def _wrapped_backend(vector_store: Any, embed_model: Any, model_dir: str | os.PathLike | None) -> Any:
    """A wrapped engine as the backend, its models loaded from and saved to ``model_dir``."""
    from llama_index_deepmemory.deep_memory import model_folder
    from llama_index_deepmemory.wrapped_store import WrappedStore

    if isinstance(vector_store, DeepMemoryVectorStore):
        raise ValueError("vector_store is already a DeepMemoryVectorStore; pass the engine's own store")
    wrapped = WrappedStore(vector_store, embed_model)
    if model_dir is not None:
        model_folder.load(model_dir, wrapped.deep_memory)
        engine = type(vector_store).__name__
        wrapped.deep_memory.on_change = lambda: model_folder.save(model_dir, wrapped.deep_memory, engine)
    return wrapped


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


def mmr_order(relevance: np.ndarray, unit_vectors: np.ndarray, k: int, threshold: float) -> tuple[list[int], list[float]]:
    """LlamaIndex's maximal marginal relevance (``get_top_k_mmr_embeddings``): first the most
    relevant candidate, then each time the one maximising ``threshold * relevance - (1 - threshold)
    * cosine(candidate, last pick)``. Returns the picks (positions) and their MMR scores."""
    n = len(relevance)
    first = int(np.argmax(relevance * threshold))
    picks, scores = [first], [float(relevance[first] * threshold)]
    left = np.ones(n, dtype=bool)
    left[first] = False
    while len(picks) < min(k, n):
        overlap = unit_vectors @ unit_vectors[picks[-1]]
        score = np.where(left, threshold * relevance - (1 - threshold) * overlap, -np.inf)
        best = int(np.argmax(score))
        picks.append(best)
        scores.append(float(score[best]))
        left[best] = False
    return picks, scores


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
