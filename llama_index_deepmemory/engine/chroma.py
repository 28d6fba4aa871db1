"""Chroma (``ChromaVectorStore``, embedded or ``chromadb.HttpClient``) as a backend.

Works on the store's collection (``ChromaVectorStore.client``) through chromadb's public API:
one ``collection.query`` answers every query vector of a search (one round trip to a server),
with the documents and metadata; ``collection.get`` reads by id with the embeddings (the store's
``get_nodes`` returns none) and pages through the corpus. The store ignores ``node_ids`` and
``doc_ids`` in queries; here they become Chroma's ``ids=`` and ``where=``. Distances are cosine
distances (the collection must be created with ``metadata={"hnsw:space": "cosine"}``), turned
into cosine similarity ``1 - d``.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import GenericAdapter
from llama_index_deepmemory.engine.ids import engine_id, from_engine, owner
from llama_index_deepmemory.rwlock import ReadWriteLock

INCLUDE = ["documents", "metadatas"]
# hits up to which a Deep Memory search reads the rows with it: Chroma reads a row in about a tenth
# of a query's fixed cost, and a later ``collection.get`` of the result's rows costs 1-3 queries'
# (embedded) or a round trip (server); deeper (keyword re-scoring, 66) the ids alone come back
ROWS_IN_SEARCH = 32
_OPERATORS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.LT: "$lt",
              FilterOperator.GTE: "$gte", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in",
              FilterOperator.NIN: "$nin"}


def is_chroma(store: Any) -> bool:
    return type(store).__name__ == "ChromaVectorStore"


def chroma_where(filters: Optional[MetadataFilters], doc_ids: Optional[Sequence[str]] = None) -> Optional[dict]:
    """LlamaIndex filters (and a document restriction) as a Chroma ``where`` (None: none)."""
    parts = [_where(filters)] if filters is not None and filters.filters else []
    if doc_ids:
        parts.append({"document_id": {"$in": list(doc_ids)}})
    return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}


def _where(filters: MetadataFilters) -> dict:
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if f.filters:
                parts.append(_where(f))
            continue
        op = f.operator or FilterOperator.EQ
        if op not in _OPERATORS:
            raise ValueError(f"filter operator {op.value!r} on {f.key!r} is not supported over Chroma; "
                             f"use one of {[o.value for o in _OPERATORS]}")
        parts.append({f.key: {_OPERATORS[op]: f.value}})
    condition = str(getattr(filters.condition, "value", filters.condition) or "and").lower()
    if condition not in ("and", "or"):
        raise ValueError(f"filter condition {condition!r} is not supported over Chroma; use 'and' or 'or'")
    return parts[0] if len(parts) == 1 else {f"${condition}": parts}


def chroma_space(collection: Any) -> str:
    """The distance a Chroma collection ranks by (``l2`` unless created otherwise)."""
    configuration = getattr(collection, "configuration", None) or {}
    for index in ("hnsw", "spann"):
        space = (configuration.get(index) or {}).get("space") if isinstance(configuration, dict) else None
        if space:
            return str(getattr(space, "value", space)).lower()
    return str((collection.metadata or {}).get("hnsw:space", "l2")).lower()


def _nodes(ids: list, texts: list, metadatas: list, embeddings: Any = None) -> list[Optional[BaseNode]]:
    """Nodes of a ``query`` or ``get`` result; None for a row that lost its metadata (deleted while
    the search ran: Chroma updates its vector index and its metadata apart)."""
    nodes: list[Optional[BaseNode]] = []
    for j, (metadata, text) in enumerate(zip(metadatas, texts)):
        if metadata is None:
            nodes.append(None)
            continue
        node = metadata_dict_to_node(metadata, text=text)
        if embeddings is not None:
            node.embedding = [float(x) for x in embeddings[j]]
        nodes.append(from_engine(node))
    return nodes


class ChromaAdapter(GenericAdapter):
    name = "chroma"
    pays_per_hit = True  # each hit a search asks costs (rows read, a wider HNSW walk): Deep Memory asks few beyond

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        # chromadb fails a query that runs while rows it finds are deleted ("Error finding id",
        # or rows without metadata): reads run together, a write alone
        self._lock_rw = ReadWriteLock()

    def _reading(self) -> Any:
        return self._lock_rw.read()

    def _writing(self) -> Any:
        return self._lock_rw.write()

    @property
    def collection(self) -> Any:
        return self.engine.client

    def check(self) -> None:
        super().check()
        space = chroma_space(self.collection)
        if space != "cosine":
            raise ValueError(
                f"the Chroma collection {self.collection.name!r} ranks by {space!r} distance, but Deep "
                "Memory needs cosine similarity; create the collection with "
                "client.get_or_create_collection(name, metadata={'hnsw:space': 'cosine'}) (a collection's space "
                "cannot be changed: re-create it under a new name)"
            )


    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """Every query in one ``collection.query``; without ``bodies``, ids and distances only (the
        rows of a deep search cost more to read than the search itself). ``bodies=None`` (a Deep
        Memory query, which builds only the ``k`` nodes it returns): the rows come with the search,
        kept unbuilt, up to ``ROWS_IN_SEARCH`` hits per query (one call where ids first and a
        ``collection.get`` of the result's rows later would be two), ids and distances beyond."""
        if k <= 0 or restriction.empty or len(queries) == 0:
            return Hits.none(len(queries))
        kwargs: dict[str, Any] = {}
        where = chroma_where(restriction.filters, restriction.doc_ids)
        if where:
            kwargs["where"] = where
        if restriction.node_ids:
            kwargs["ids"] = [engine_id(i) for i in restriction.node_ids]
        version = self.version
        rows = bodies is None and k <= ROWS_IN_SEARCH
        with self._reading():
            result = self.collection.query(query_embeddings=np.asarray(queries, dtype=np.float32).tolist(),
                                           n_results=int(k), include=["distances"] + (INCLUDE if bodies or rows else []),
                                           **kwargs)
        if rows:
            return self._kept_hits(result, version)
        if not bodies:  # distances as cosines
            named = [list(zip(ids, distances)) for ids, distances in zip(result["ids"], result["distances"])]
            return self._named_hits(named, similarity=lambda distances: 1.0 - distances)
        hits = Hits([], [])
        for ids, texts, metadatas, distances in zip(result["ids"], result["documents"], result["metadatas"],
                                                     result["distances"]):
            found = [(n, d, t, m) for n, d, t, m in zip(_nodes(ids, texts, metadatas), distances, texts, metadatas)
                     if n is not None]
            hits.handles.append([n.node_id for n, *_ in found])
            hits.scores.append(1.0 - np.asarray([d for _, d, *_ in found], dtype=np.float32))
            hits.nodes.update((n.node_id, n) for n, *_ in found)
            self._keep([(n.node_id, (t, m)) for n, _, t, m in found], version)
        return hits

    def _kept_hits(self, result: dict, version: int) -> Hits:
        """Ids and scores of a search that read the rows: each row kept unbuilt (a Deep Memory
        result builds the nodes it returns from them), each stored id named from its metadata."""
        hits = Hits([], [])
        kept, names = [], {}
        for ids, texts, metadatas, distances in zip(result["ids"], result["documents"], result["metadatas"],
                                                     result["distances"]):
            handles, scores = [], []
            for stored_id, text, metadata, distance in zip(ids, texts, metadatas, distances):
                if metadata is None:  # deleted while the search ran
                    continue
                node_id = names[stored_id] = owner(stored_id, metadata)
                handles.append(node_id)
                scores.append(distance)
                hits.texts[node_id] = text
                kept.append((node_id, (text, metadata)))
            hits.handles.append(handles)
            hits.scores.append(1.0 - np.asarray(scores, dtype=np.float32))
        self._name(names)
        self._keep(kept, version)
        return hits

    def _build(self, row: Any) -> BaseNode:
        return _nodes([None], [row[0]], [row[1]])[0]

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        include = INCLUDE + (["embeddings"] if with_vectors else [])
        version = self.version
        result = self.collection.get(ids=stored_ids, where=chroma_where(filters), include=include)
        nodes = _nodes(result["ids"], result["documents"], result["metadatas"],
                       result.get("embeddings") if with_vectors else None)
        found = [(n, t, m) for n, t, m in zip(nodes, result["documents"], result["metadatas"]) if n is not None]
        self._keep([(n.node_id, (t, m)) for n, t, m in found], version)
        return [n for n, _, _ in found]

    def _owners(self, stored_ids: list[str]) -> dict[str, str]:
        if not stored_ids:
            return {}
        with self._reading():
            result = self.collection.get(ids=list(dict.fromkeys(stored_ids)), include=["metadatas"])
        return {i: owner(i, m) for i, m in zip(result["ids"], result["metadatas"]) if m is not None}

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        with self._reading():
            result = self.collection.get(where=chroma_where(filters), include=INCLUDE + ["embeddings"])
        return [n for n in _nodes(result["ids"], result["documents"], result["metadatas"], result.get("embeddings"))
                if n is not None]

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        where = chroma_where(filters)  # the store deletes by filters only together with ids
        if ids is not None:
            if not ids:
                return
            self.collection.delete(ids=ids, **({"where": where} if where else {}))
        else:
            self.collection.delete(where=where)

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every node, a page at a time (``get`` with ``limit``/``offset``)."""
        include = INCLUDE + (["embeddings"] if with_vectors else [])
        offset = 0
        while True:
            with self._reading():
                result = self.collection.get(limit=limit, offset=offset, include=include)
            if not result["ids"]:
                return
            yield self._listed([n for n in _nodes(result["ids"], result["documents"], result["metadatas"],
                                                  result.get("embeddings") if with_vectors else None) if n is not None])
            if len(result["ids"]) < limit:
                return
            offset += len(result["ids"])

    def count(self) -> int:
        with self._reading():
            return int(self.collection.count())
