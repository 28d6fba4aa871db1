"""Any LlamaIndex vector store that keeps text (Qdrant, ...) as a Deep Memory backend.

The vectors live in the engine; this module only translates. ``DeepMemoryVectorStore(
vector_store=QdrantVectorStore(...))`` passes adds, deletes, ``get_nodes``, ``clear`` and filters
through to the engine, and ranks ``deep_memory=True`` queries with :func:`deep_memory.ranking.rank`
over the engine's own search, so the same trained model serves over FAISS and over the engine.

What a wrapped store must offer: ``query`` with ``MetadataFilters`` returning nodes with their
text, and ``get_nodes(node_ids=...)`` returning nodes with their embeddings (training reads the
relevant nodes' vectors). Listing the whole corpus (for the keyword index and whole-corpus
training) uses the engine's own paging where this module knows it (Qdrant's ``scroll``), else
``get_nodes()``; where neither works, keyword statistics come from the nodes added through the
wrapper and training mines negatives with the engine's search.

Scores: the engine must rank by cosine similarity (Qdrant's default ``Distance.COSINE``). The
plain search of a transformed query ``q_t`` returns ``cos(q_t, v)``; multiplied by ``|q_t|`` that
is ``q_t . v`` for the unit vectors the engine stores, the scale the model's scores are in.
Chroma's store reports ``exp(-distance)`` (cosine distance ``1 - cos`` in a collection created with
``metadata={"hnsw:space": "cosine"}``), turned back into the cosine here; Milvus must be created with
``similarity_metric="COSINE"`` (its store's default is IP). Other spaces or metrics are refused.

Engine specifics (``_chroma_*``, ``_milvus_*`` below): Chroma's store ignores ``node_ids`` and
``doc_ids`` in queries (passed as Chroma's ``ids=`` and ``where=``), returns no embeddings from
``get_nodes`` and deletes by filters only with ids (both read and written through the collection);
Milvus's store takes ids or filters in ``get_nodes`` but not both (combined into one filter), and
its ``clear`` drops the collection, after which it cannot add (the rows are deleted instead).
A store that cannot list its nodes gets keyword statistics, ``len`` and the training copy from the
nodes added through this wrapper, read back by id.

Node ids: engines such as Qdrant accept only UUIDs (or integers) as point ids, so an id that is not
a UUID (``node_7``) is stored under ``uuid5(NAMESPACE, id)`` and the original id travels in the
node's metadata (``deepmemory_id``, excluded from embedding and LLM text), restored on the way out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery, VectorStoreQueryResult

from llama_index_deepmemory.engine.usable_cache import UsableCache
from llama_index_deepmemory.vectors import as_matrix, padded

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

ID_KEY = "deepmemory_id"
ID_NAMESPACE = uuid.UUID("6f1c2a0e-4d43-5b8e-9a57-0d3e7c2b9f10")
GET_BATCH = 256  # ids per get_nodes call
LIST_BATCH = 1024  # nodes per page when listing the corpus
_USABLE_CACHE = 64  # (model overrides, restriction) entries kept
TEXT_CACHE = 100_000  # node texts kept from results (keyword re-scoring reads them)


def engine_id(node_id: str) -> str:
    """The id the engine stores ``node_id`` under: itself when it is a UUID, else its uuid5."""
    try:
        if str(uuid.UUID(node_id)) == node_id:
            return node_id
    except (ValueError, AttributeError, TypeError):
        pass
    return str(uuid.uuid5(ID_NAMESPACE, str(node_id)))


def to_engine(node: BaseNode) -> BaseNode:
    """A copy of ``node`` under its engine id, carrying the original id when they differ."""
    stored_id = engine_id(node.node_id)
    if stored_id == node.node_id:
        return node
    copy = node.model_copy(deep=True)
    copy.id_ = stored_id
    copy.metadata[ID_KEY] = node.node_id
    for keys in (copy.excluded_embed_metadata_keys, copy.excluded_llm_metadata_keys):
        if ID_KEY not in keys:
            keys.append(ID_KEY)
    return copy


def from_engine(node: BaseNode) -> BaseNode:
    """``node`` as it was added: its original id restored, the id key removed."""
    original = node.metadata.pop(ID_KEY, None)
    if original is None:
        return node
    node.id_ = str(original)
    for keys in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
        while ID_KEY in keys:
            keys.remove(ID_KEY)
    return node


@dataclass(frozen=True)
class Restriction:
    """What one query may return: metadata ``filters``, ``node_ids`` and ``doc_ids`` (None: any)."""

    filters: Optional[MetadataFilters] = None
    node_ids: Optional[tuple[str, ...]] = None
    doc_ids: Optional[tuple[str, ...]] = None

    def key(self) -> str:
        filters = self.filters.model_dump_json() if self.filters is not None else ""
        return hashlib.sha1(json.dumps([filters, self.node_ids, self.doc_ids]).encode()).hexdigest()

    def allows(self, node: BaseNode) -> bool:
        """The node and document restrictions (the engine applies the filters)."""
        if self.node_ids is not None and node.node_id not in self.node_ids:
            return False
        return self.doc_ids is None or node.ref_doc_id in self.doc_ids


def as_restriction(filters: Any) -> Restriction:
    if filters is None or isinstance(filters, Restriction):
        return filters or Restriction()
    if isinstance(filters, MetadataFilters):
        return Restriction(filters=filters if filters.filters else None)
    raise TypeError(f"filters must be LlamaIndex MetadataFilters or None, got {type(filters).__name__}")


def check_wrappable(vector_store: Any) -> None:
    """A clear error when ``vector_store`` cannot serve Deep Memory (names what is missing)."""
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

    if not isinstance(vector_store, BasePydanticVectorStore):
        raise TypeError(
            f"vector_store must be a LlamaIndex vector store (BasePydanticVectorStore), got "
            f"{type(vector_store).__name__}; e.g. QdrantVectorStore(client=QdrantClient(path=...), collection_name=...)"
        )
    name = type(vector_store).__name__
    if not getattr(vector_store, "stores_text", False):
        raise ValueError(
            f"{name} keeps no node text (stores_text=False), so Deep Memory could not return nodes or score "
            "keywords; wrap a store that keeps text (Qdrant, Milvus, Chroma, ...), or use the embedded "
            "DeepMemoryVectorStore() without vector_store="
        )
    if isinstance(vector_store, _face_type()):
        raise ValueError("vector_store is already a DeepMemoryVectorStore; pass the engine's own store")
    if type(vector_store).get_nodes is BasePydanticVectorStore.get_nodes:
        raise ValueError(
            f"{name} does not implement get_nodes(node_ids=...): Deep Memory reads the nodes its model "
            "names (memory, keyword re-scoring, training) by id; implement it (listing every node with "
            "node_ids=None is optional), or use the embedded DeepMemoryVectorStore() without vector_store="
        )
    check_cosine(vector_store)


def _face_type() -> type:
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    return DeepMemoryVectorStore


class WrappedStore:
    """A LlamaIndex vector store as a Deep Memory backend and ``StoreView``."""

    def __init__(self, vector_store: Any, embed_model: "BaseEmbedding | None" = None) -> None:
        check_wrappable(vector_store)
        self.engine = vector_store
        self.embed_model = embed_model
        self.metric = "cosine"
        self._dim: int | None = None
        self._lock = threading.RLock()
        self._added_texts: dict[str, str] = {}  # nodes added through this wrapper (keyword fallback)
        self._usable = UsableCache(_USABLE_CACHE)
        self._texts: OrderedDict[str, str] = OrderedDict()  # texts seen in results, until the next write
        self._original: dict[str, str] = {}  # engine id -> node id, of every node seen
        self._version = 0  # bumped by every write through the wrapper
        self._deep_memory: DeepMemory | None = None
        self._lister = (_qdrant_pages if _is_qdrant(vector_store) else _chroma_pages if _is_chroma(vector_store)
                        else _milvus_pages if _is_milvus(vector_store) else None)

    # --- the face's operations ----------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode]) -> list[str]:
        nodes = list(nodes)
        if not nodes:
            return []
        vectors = as_matrix([n.embedding for n in nodes], "node embeddings", self.dim, "cosine",
                            [n.node_id for n in nodes])
        self.engine.add([to_engine(n) for n in nodes])
        with self._lock:
            self._dim = int(vectors.shape[1])
            for node in nodes:
                self._added_texts[node.node_id] = node.get_content() if hasattr(node, "get_content") else ""
            self._changed(forget_texts=False)  # the added nodes' texts are remembered just below
        self._remember(nodes)
        if self._deep_memory is not None:
            self._deep_memory.texts_changed([n.node_id for n in nodes])
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str) -> None:
        if self._no_collection():  # nothing added yet: nothing to delete
            return
        self.engine.delete(ref_doc_id)
        with self._lock:
            self._changed()

    def delete_nodes(self, node_ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        if self._no_collection():
            return
        ids = None if node_ids is None else [engine_id(i) for i in node_ids]
        if _is_chroma(self.engine) and not ids and filters is not None:  # its store needs ids with filters
            self.engine._collection.delete(where=_chroma_where(filters))
        else:
            self.engine.delete_nodes(ids, filters=filters)
        with self._lock:
            for node_id in node_ids or ():
                self._added_texts.pop(node_id, None)
                self._texts.pop(node_id, None)
            self._changed(forget_texts=filters is not None or node_ids is None)

    def clear(self) -> None:
        if _is_milvus(self.engine):  # its clear drops the collection, and its add cannot re-create it
            if self.engine.client.has_collection(self.engine.collection_name):
                self.engine.client.delete(self.engine.collection_name, filter='id != ""')
        else:
            self.engine.clear()
        with self._lock:
            self._added_texts.clear()
            self._changed()

    def get_nodes(self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None) -> list[BaseNode]:
        """Stored nodes by id (in the given order, unknown ids skipped) and/or filters."""
        if self._no_collection():
            return []
        if node_ids is None:
            if filters is None and _is_milvus(self.engine):  # its get_nodes needs ids or filters
                return [n for page in self._pages(with_vectors=True) for n in page]
            if _is_chroma(self.engine):  # its get_nodes requires node_ids and returns no embeddings
                return _chroma_get(self.engine, None, filters)
            return [from_engine(n) for n in self.engine.get_nodes(filters=filters)]
        getter = (_chroma_get if _is_chroma(self.engine) else _milvus_get if _is_milvus(self.engine)
                  else _qdrant_get if _is_qdrant(self.engine) and filters is None else None)
        by_id: dict[str, BaseNode] = {}
        for start in range(0, len(node_ids), GET_BATCH):
            chunk = [engine_id(i) for i in node_ids[start : start + GET_BATCH]]
            found = (getter(self.engine, chunk, filters) if getter is not None
                     else self.engine.get_nodes(node_ids=chunk, filters=filters))
            for node in found:
                node = from_engine(node)
                by_id[node.node_id] = node
        return [by_id[i] for i in dict.fromkeys(node_ids) if i in by_id]

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
        k = query.similarity_top_k
        if model is None:
            scores, nodes = self._search_one(q[0], k, restriction)
            return VectorStoreQueryResult(nodes=nodes, similarities=[float(s) for s in scores],
                                          ids=[n.node_id for n in nodes])
        from llama_index_deepmemory.deep_memory.ranking import rank

        seen: dict[str, BaseNode] = {}
        scores, ids = rank(self._recording(seen), q, model, k,
                           texts=[query.query_str] if query.query_str else None, filters=restriction)
        missing = [i for i in ids[0] if i not in seen]
        if missing:  # Qdrant's search returned ids only, and override nodes are not searched
            seen.update((n.node_id, n) for n in self._result_nodes(missing))
        pairs = [(float(s), seen[i]) for s, i in zip(scores[0], ids[0]) if i in seen]  # deleted meanwhile: dropped
        return VectorStoreQueryResult(nodes=[n for _, n in pairs], similarities=[s for s, _ in pairs],
                                      ids=[n.node_id for _, n in pairs])

    def lists_only_index_nodes(self, node_ids: Sequence[str]) -> bool:
        """Whether every id names a stored image or index node (what ``as_retriever`` lists)."""
        from llama_index.core.schema import ImageNode, IndexNode

        found = self.get_nodes(list(node_ids))
        return len(found) == len(set(node_ids)) and all(isinstance(n, (ImageNode, IndexNode)) for n in found)

    def persist(self, persist_path: str | os.PathLike) -> None:
        """Save the Deep Memory models to ``persist_path`` (the engine keeps the nodes)."""
        from llama_index_deepmemory.deep_memory import state

        state.save_to(persist_path, self.deep_memory)

    @property
    def client(self) -> Any:
        return self.engine.client

    # --- StoreView ------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        if self._dim is None and self.engine_count():
            first = next(self._pages(with_vectors=True, limit=1), [])
            if first and first[0].embedding is not None:
                self._dim = len(first[0].embedding)
        return self._dim

    def __len__(self) -> int:
        return self.engine_count()

    def engine_count(self) -> int:
        """Nodes in the engine (listed once when the engine has no count)."""
        if _is_qdrant(self.engine):
            store = self.engine
            if not store.client.collection_exists(store.collection_name):
                return 0
            return int(store.client.count(store.collection_name, exact=True).count)
        if _is_chroma(self.engine):
            return int(self.engine._collection.count())
        if _is_milvus(self.engine):
            return _milvus_count(self.engine)
        try:
            return sum(len(page) for page in self._pages(with_vectors=False))
        except NotImplementedError:  # a store that cannot list: the nodes added through this wrapper
            with self._lock:
                return len(self._added_texts)

    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        found = {n.node_id for n in self.get_nodes(list(node_ids))}
        return [i for i in node_ids if i not in found]

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        nodes = {n.node_id: n for n in self.get_nodes(list(node_ids))}
        missing = [i for i in node_ids if i not in nodes or nodes[i].embedding is None]
        if missing:
            raise KeyError(
                f"{len(missing)} node id(s) are not in {type(self.engine).__name__} or came back without "
                f"their embedding, e.g. {missing[:3]}"
            )
        return as_matrix([nodes[i].embedding for i in node_ids], "stored vectors", None, "cosine")

    def iter_vectors(self, batch_size: int = LIST_BATCH) -> Iterator[tuple[list[str], np.ndarray]]:
        for page in self._pages(with_vectors=True, limit=batch_size):
            yield [n.node_id for n in page], as_matrix([n.embedding for n in page], "stored vectors", None, "cosine")

    def iter_texts(self, batch_size: int = LIST_BATCH) -> Iterator[tuple[list[str], list[str]]]:
        try:
            for page in self._pages(with_vectors=False, limit=batch_size):
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

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        deep_memory: bool = False,
        texts: Sequence[str | None] | None = None,
        filters: Any = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        restriction = as_restriction(filters)
        if deep_memory:
            from llama_index_deepmemory.deep_memory.ranking import rank

            model = self.deep_memory.require_active_model()
            scores, ids = rank(self, queries, model, k, texts=texts, filters=restriction)
        else:
            scores, ids, _ = self._search_many(queries, k, restriction)
        return padded(scores), ids

    def usable_ids(self, node_ids: Sequence[str], filters: Any = None) -> np.ndarray:
        """Stored and allowed, cached per id sequence and restriction until the next write
        through this wrapper (a node deleted by another process is dropped from results)."""
        restriction = as_restriction(filters)
        node_ids, version, key = tuple(node_ids), self._version, restriction.key()
        cached = self._usable.get(node_ids, key, version)
        if cached is not None:
            return cached
        found = {n.node_id for n in self._get_allowed(list(node_ids), restriction)}
        usable = np.fromiter((i in found for i in node_ids), dtype=bool, count=len(node_ids))
        return self._usable.put(node_ids, key, version, usable)

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        """Texts of ``node_ids`` (None: not stored), from the texts recent results carried."""
        with self._lock:
            unseen = [i for i in node_ids if i not in self._texts]
        if unseen:
            self._remember(self.get_nodes(unseen))
        with self._lock:
            return [self._texts.get(i) for i in node_ids]

    def _remember(self, nodes: Sequence[BaseNode]) -> None:
        """Keep the texts and engine ids of nodes a search or read returned (bounded)."""
        with self._lock:
            if len(self._original) > 4 * TEXT_CACHE:
                self._original.clear()
            for node in nodes:
                self._texts[node.node_id] = node.get_content()
                self._original[engine_id(node.node_id)] = node.node_id
            while len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)

    def training_view(self, max_nodes: int) -> Any:
        """What training reads and validates on: an exact in-memory copy of the collection (one
        scroll; training reads every vector anyway) up to ``max_nodes`` nodes, else this store
        (negatives mined and validation searched through the engine)."""
        if len(self) > max_nodes:
            return self
        from llama_index_deepmemory.engine.array_view import ArrayStoreView

        ids: list[str] = []
        vectors: list[np.ndarray] = []
        texts: list[str] = []
        for page in self._pages_or_added():
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
    def _changed(self, forget_texts: bool = True) -> None:
        """A write through this wrapper: cached allow-lists go; cached texts too, unless the
        caller updates the texts it changed (engine ids stay: they follow from the node ids)."""
        self._version += 1
        self._usable.clear()
        if forget_texts:
            self._texts.clear()

    def _get_allowed(self, node_ids: list[str], restriction: Restriction) -> list[BaseNode]:
        nodes = self.get_nodes(node_ids, filters=restriction.filters)
        return [n for n in nodes if restriction.allows(n)]

    def _search_many(
        self, queries: np.ndarray, k: int, restriction: Restriction
    ) -> tuple[list[np.ndarray], list[list[str]], list[BaseNode]]:
        """Plain top ``k`` scores and ids per query (and the nodes the engine returned with them).

        Qdrant is asked for ids and scores only, all queries in one call: the texts keyword
        re-scoring needs come from :meth:`texts_of`'s cache, the nodes of a result from one read."""
        queries = np.asarray(queries, dtype=np.float32)
        if not _is_qdrant(self.engine) or not hasattr(self.engine, "_build_query_filter"):
            found = [self._search_one(q, k, restriction) for q in queries]
            return [f[0] for f in found], [[n.node_id for n in f[1]] for f in found], [n for f in found for n in f[1]]
        if k <= 0 or (restriction.doc_ids is not None and not restriction.doc_ids) or self._no_collection():
            return [np.zeros(0, np.float32) for _ in queries], [[] for _ in queries], []
        from qdrant_client.http import models as rest

        engine = self.engine
        query_filter = engine._build_query_filter(VectorStoreQuery(
            filters=restriction.filters,
            node_ids=[engine_id(i) for i in restriction.node_ids] if restriction.node_ids else None,
            doc_ids=list(restriction.doc_ids) if restriction.doc_ids else None,
        ))
        requests = [
            rest.QueryRequest(query=q.astype(np.float64).tolist(), using=engine.dense_vector_name, limit=int(k),
                              filter=query_filter, with_payload=False)
            for q in queries
        ]
        responses = engine.client.query_batch_points(engine.collection_name, requests=requests)
        hits = [[(str(p.id), p.score) for p in r.points] for r in responses]
        unknown = {i for row in hits for i, _ in row if i not in self._original}
        if unknown:  # added by another process: read their payloads once
            points = engine.client.retrieve(engine.collection_name, ids=sorted(unknown), with_payload=True)
            self._remember([from_engine(n) for n in engine.parse_to_query_result(points).nodes])
        scores, ids = [], []
        for q, row in zip(queries, hits):
            row = [(self._original[i], s) for i, s in row if i in self._original]  # deleted meanwhile: dropped
            ids.append([i for i, _ in row])
            scores.append(np.asarray([s for _, s in row], dtype=np.float32) * np.float32(np.linalg.norm(q)))
        return scores, ids, []

    def _search_one(self, q: np.ndarray, k: int, restriction: Restriction) -> tuple[np.ndarray, list[BaseNode]]:
        """The engine's top ``k`` for one prepared (or transformed) query, scores as ``q . v``."""
        if k <= 0:
            return np.zeros(0, np.float32), []
        query = VectorStoreQuery(
            query_embedding=q.astype(np.float64).tolist(),
            similarity_top_k=int(k),
            filters=restriction.filters,
            node_ids=[engine_id(i) for i in restriction.node_ids] if restriction.node_ids else None,
            doc_ids=list(restriction.doc_ids) if restriction.doc_ids is not None else None,
        )
        if (restriction.doc_ids is not None and not restriction.doc_ids) or self._no_collection():
            return np.zeros(0, np.float32), []
        chroma = _is_chroma(self.engine)
        if chroma and (query.node_ids or query.doc_ids):  # its store ignores them: Chroma's ids= and where=
            kwargs = {"ids": query.node_ids} if query.node_ids else {}
            where = _chroma_where(restriction.filters, query.doc_ids)
            result = self.engine.query(dataclasses.replace(query, filters=None),
                                       **kwargs, **({"where": where} if where else {}))
        else:
            result = self.engine.query(query)
        found = result.nodes or []
        pairs = [(from_engine(n), s) for n, s in zip(found, result.similarities or [1.0] * len(found))]
        pairs = [(n, s) for n, s in pairs if restriction.allows(n)]  # for stores that ignore node or doc ids
        nodes = [n for n, _ in pairs]
        self._remember(nodes)
        scores = np.asarray([s for _, s in pairs], dtype=np.float64)
        if chroma:  # its store reports exp(-distance), and cosine distance is 1 - cos
            scores = 1.0 + np.log(np.maximum(scores, 1e-30))
        scores = scores.astype(np.float32)
        scores *= np.float32(np.linalg.norm(q))  # cosine -> q . v for unit stored vectors
        return scores, nodes

    def _result_nodes(self, node_ids: list[str]) -> list[BaseNode]:
        """The nodes of a query's result, read by id: without their vectors where the engine can
        leave them out (Qdrant), as its own query returns them."""
        if not _is_qdrant(self.engine) or self._no_collection():
            return self.get_nodes(node_ids)
        nodes = _qdrant_get(self.engine, [engine_id(i) for i in node_ids], None, with_vectors=False)
        return [from_engine(n) for n in nodes]

    def _no_collection(self) -> bool:
        """True for a Qdrant store whose collection is not created yet (or was cleared)."""
        engine = self.engine
        if not _is_qdrant(engine) or getattr(engine, "_collection_initialized", True):
            return False
        return not engine.client.collection_exists(engine.collection_name)

    def _recording(self, seen: dict[str, BaseNode]) -> "_RecordingView":
        return _RecordingView(self, seen)

    def _pages_or_added(self) -> Iterator[list[BaseNode]]:
        """Every node with its vector, a page at a time; where the store cannot list its nodes,
        the nodes added through this wrapper, read back by id."""
        try:
            pages = self._pages(with_vectors=True)
            first = next(pages, None)  # a store that cannot list says so before the first page
        except NotImplementedError:
            with self._lock:
                known = list(self._added_texts)
            for start in range(0, len(known), LIST_BATCH):
                yield self.get_nodes(known[start : start + LIST_BATCH])
            return
        if first is not None:
            yield first
            yield from pages

    def _pages(self, with_vectors: bool, limit: int = LIST_BATCH) -> Iterator[list[BaseNode]]:
        if self._lister is not None:
            yield from self._lister(self.engine, with_vectors, limit)
            return
        try:
            nodes = self.engine.get_nodes()
        except (NotImplementedError, TypeError, ValueError) as error:
            raise NotImplementedError(
                f"{type(self.engine).__name__} cannot list its nodes ({error})"
            ) from None
        nodes = [from_engine(n) for n in nodes]
        for start in range(0, len(nodes), limit):
            yield nodes[start : start + limit]


class _RecordingView:
    """A ``StoreView`` over a wrapped store that remembers the nodes its searches return (one
    query's result then needs no second read of their bodies)."""

    def __init__(self, store: WrappedStore, seen: dict[str, BaseNode]) -> None:
        self._store, self._seen = store, seen

    def __len__(self) -> int:
        return len(self._store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def search_vectors(self, queries: np.ndarray, k: int, filters: Any = None, **_: Any) -> tuple[np.ndarray, list[list[str]]]:
        rows, ids, nodes = self._store._search_many(queries, k, as_restriction(filters))
        self._seen.update((n.node_id, n) for n in nodes)
        out = np.full((len(ids), max((len(r) for r in ids), default=0)), -np.inf, dtype=np.float32)
        for row, values in zip(out, rows):
            row[: len(values)] = values
        return out, ids



def _is_qdrant(store: Any) -> bool:
    return type(store).__name__ == "QdrantVectorStore" and hasattr(store, "collection_name")


def _qdrant_get(store: Any, ids: list[str], filters: None, with_vectors: bool = True) -> list[BaseNode]:
    """Points by id, looked up directly (its store's ``get_nodes`` scrolls with an id filter,
    which an in-process Qdrant answers by scanning the whole collection)."""
    points = store.client.retrieve(store.collection_name, ids=ids, with_payload=True, with_vectors=with_vectors)
    return store.parse_to_query_result(points).nodes


def _qdrant_pages(store: Any, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
    """Every node of a Qdrant collection, a page at a time (Qdrant's ``scroll``)."""
    client = store.client
    if not client.collection_exists(store.collection_name):
        return
    offset = None
    while True:
        points, offset = client.scroll(
            collection_name=store.collection_name, limit=limit, offset=offset,
            with_payload=True, with_vectors=with_vectors,
        )
        if points:
            yield [from_engine(n) for n in store.parse_to_query_result(points).nodes]
        if offset is None:
            return


# --- Chroma (chromadb's collections through LlamaIndex's ChromaVectorStore) ----------------------
CHROMA_INCLUDE = ["documents", "metadatas"]


def _is_chroma(store: Any) -> bool:
    return type(store).__name__ == "ChromaVectorStore" and hasattr(store, "_collection")


def _chroma_space(collection: Any) -> str:
    """The distance a Chroma collection ranks by (``l2`` unless created otherwise)."""
    configuration = getattr(collection, "configuration", None) or {}
    for index in ("hnsw", "spann"):
        space = (configuration.get(index) or {}).get("space") if isinstance(configuration, dict) else None
        if space:
            return str(getattr(space, "value", space)).lower()
    return str((collection.metadata or {}).get("hnsw:space", "l2")).lower()


def _chroma_nodes(result: Any, with_vectors: bool) -> list[BaseNode]:
    """Nodes of a ``collection.get`` result (LlamaIndex's own ``get_nodes`` drops the embeddings)."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    embeddings = result.get("embeddings") if with_vectors else None
    nodes = []
    for j, (metadata, text) in enumerate(zip(result["metadatas"], result["documents"])):
        node = metadata_dict_to_node(metadata, text=text)
        if embeddings is not None:
            node.embedding = [float(x) for x in embeddings[j]]
        nodes.append(from_engine(node))
    return nodes


def _chroma_where(filters: Optional[MetadataFilters], doc_ids: Optional[Sequence[str]] = None) -> Optional[dict]:
    from llama_index.vector_stores.chroma.base import _to_chroma_filter

    parts = [_to_chroma_filter(filters)] if filters is not None and filters.filters else []
    if doc_ids:
        parts.append({"document_id": {"$in": list(doc_ids)}})
    return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}


def _chroma_get(store: Any, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> list[BaseNode]:
    result = store._collection.get(ids=ids, where=_chroma_where(filters), include=CHROMA_INCLUDE + ["embeddings"])
    return _chroma_nodes(result, with_vectors=True)


def _chroma_pages(store: Any, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
    """Every node of a Chroma collection, a page at a time (``get`` with ``limit``/``offset``)."""
    include = CHROMA_INCLUDE + (["embeddings"] if with_vectors else [])
    offset = 0
    while True:
        result = store._collection.get(limit=limit, offset=offset, include=include)
        if not result["ids"]:
            return
        yield _chroma_nodes(result, with_vectors)
        if len(result["ids"]) < limit:
            return
        offset += len(result["ids"])


# --- Milvus (Milvus Lite or a server through LlamaIndex's MilvusVectorStore) -------------------
def _is_milvus(store: Any) -> bool:
    return type(store).__name__ == "MilvusVectorStore" and hasattr(store, "collection_name")


def _milvus_metric(store: Any) -> str:
    """The metric the collection's dense index ranks by (the store's setting when unreadable)."""
    metric = (store.index_config or {}).get("metric_type", store.similarity_metric)
    try:
        if store.client.has_collection(store.collection_name):
            index = (store.index_config or {}).get("index_name", store.embedding_field)
            metric = store.client.describe_index(store.collection_name, index).get("metric_type", metric)
    except Exception:  # noqa: BLE001 - no index yet: the store's setting
        pass
    return str(metric).upper()


def _milvus_node(store: Any, row: dict) -> BaseNode:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    node = metadata_dict_to_node(row, text=row.get(store.text_key))
    node.embedding = row.get(store.embedding_field)
    if node.embedding is not None:
        node.embedding = [float(x) for x in node.embedding]
    return from_engine(node)


def _milvus_get(store: Any, ids: list[str], filters: Optional[MetadataFilters]) -> list[BaseNode]:
    """By ids and filters together (LlamaIndex's ``get_nodes`` takes one or the other)."""
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter

    by_id = MetadataFilter(key="id", value=list(ids), operator=FilterOperator.IN)
    both = MetadataFilters(filters=[filters, by_id]) if filters is not None and filters.filters else None
    nodes = store.get_nodes(filters=both) if both is not None else store.get_nodes(node_ids=list(ids))
    return [from_engine(n) for n in nodes]


def _milvus_count(store: Any) -> int:
    if not store.client.has_collection(store.collection_name):
        return 0
    rows = store.client.query(store.collection_name, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


def _milvus_pages(store: Any, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
    """Every node of a Milvus collection, a page at a time (``query_iterator``)."""
    if not store.client.has_collection(store.collection_name):
        return
    iterator = store.client.query_iterator(store.collection_name, batch_size=limit, filter="", output_fields=["*"])
    try:
        while True:
            rows = iterator.next()
            if not rows:
                return
            yield [_milvus_node(store, row) for row in rows]
    finally:
        iterator.close()


def check_cosine(vector_store: Any) -> None:
    """Refuse an engine known to rank by something other than cosine similarity (names the fix)."""
    if _is_chroma(vector_store):
        space = _chroma_space(vector_store._collection)
        if space != "cosine":
            raise ValueError(
                f"the Chroma collection {vector_store._collection.name!r} ranks by {space!r} distance, but Deep "
                "Memory needs cosine similarity; create the collection with "
                "client.get_or_create_collection(name, metadata={'hnsw:space': 'cosine'}) (a collection's space "
                "cannot be changed: re-create it under a new name)"
            )
    elif _is_milvus(vector_store):
        metric = _milvus_metric(vector_store)
        if metric != "COSINE":
            raise ValueError(
                f"the Milvus collection {vector_store.collection_name!r} ranks by {metric} (MilvusVectorStore's "
                "default is IP), but Deep Memory needs cosine similarity; pass "
                "MilvusVectorStore(..., similarity_metric='COSINE') (an existing collection keeps its index's "
                "metric: re-create it with overwrite=True or under a new collection_name)"
            )
