"""Chroma (``ChromaVectorStore``, embedded or ``chromadb.HttpClient``) as a backend.

Works on the store's collection (``ChromaVectorStore.client``) through chromadb's public API:
one ``collection.query`` answers every query vector of a search (one round trip to a server),
with the documents and metadata; ``collection.get`` reads by id with the embeddings (the store's
``get_nodes`` returns none) and pages through the corpus. The store ignores ``node_ids`` and
``doc_ids`` in queries; here they become Chroma's ``ids=`` and ``where=``. Distances are cosine
distances (the collection must be created with ``metadata={"hnsw:space": "cosine"}``), turned
into cosine similarity ``1 - d``. No call carries more than ``ID_BATCH`` ids, ``$in`` values or
rows (embedded Chroma binds them as SQLite variables): longer reads go in chunks, and a query
restricted to more ids runs once per chunk, the top ``k`` merged by distance. Chroma's ``add``
skips an id it holds, so re-adding an id deletes the old row first.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import GenericAdapter
from llama_index_deepmemory.engine.ids import engine_id, from_engine, owner

INCLUDE = ["documents", "metadatas"]
# hits up to which a Deep Memory search reads the rows with it: Chroma reads a row in about a tenth
# of a query's fixed cost, and a later ``collection.get`` of the result's rows costs 1-3 queries'
# (embedded) or a round trip (server); deeper (keyword re-scoring, 66) the ids alone come back
ROWS_IN_SEARCH = 32
# ids, ``$in`` values or rows per chromadb call: embedded Chroma binds them as SQLite variables
# (32,766 per statement; "too many SQL variables" past it); a client's max batch size caps it too
ID_BATCH = 5000
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


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def merge_results(parts: Sequence[dict], k: int, include: Sequence[str]) -> dict:
    """One ``collection.query`` result from queries over disjoint parts of a restriction: per query
    vector, the ``k`` smallest distances of all parts (ties: the earlier part's, in its order)."""
    keys = ["ids"] + [key for key in include]
    merged: dict[str, list] = {key: [] for key in keys}
    for q in range(len(parts[0]["ids"])):
        rows = [(d, p, j) for p, part in enumerate(parts) for j, d in enumerate(part["distances"][q])]
        best = heapq.nsmallest(k, rows)  # (distance, part, position): stable across and within parts
        for key in keys:
            merged[key].append([parts[p][key][q][j] for _, p, j in best])
    return merged


class ChromaAdapter(GenericAdapter):
    name = "chroma"
    pays_per_hit = True  # each hit a search asks costs (rows read, a wider HNSW walk): Deep Memory asks few beyond
    # chromadb fails a query that runs while rows it finds are deleted ("Error finding id", or rows
    # without metadata): reads run together, a write alone
    reads_together = True
    replaces = True  # its add skips an id it holds (the update lost): _replace deletes the old row first

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._max_batch: Optional[int] = None  # the client's max batch size, asked once

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
        version = self.version
        rows = bodies is None and k <= ROWS_IN_SEARCH
        include = ["distances"] + (INCLUDE if bodies or rows else [])
        size = self._batch_size()
        node_chunks = _chunks([engine_id(i) for i in dict.fromkeys(restriction.node_ids)], size) \
            if restriction.node_ids else [None]
        doc_chunks = _chunks(list(dict.fromkeys(restriction.doc_ids)), size) if restriction.doc_ids else [None]
        embeddings = np.asarray(queries, dtype=np.float32).tolist()
        parts = []
        for ids in node_chunks:  # a restriction past the batch size: one query per chunk, merged
            for docs in doc_chunks:
                kwargs: dict[str, Any] = {}
                where = chroma_where(restriction.filters, docs)
                if where:
                    kwargs["where"] = where
                if ids is not None:
                    kwargs["ids"] = ids
                with self._reading():
                    parts.append(self.collection.query(query_embeddings=embeddings, n_results=int(k),
                                                       include=include, **kwargs))
        result = parts[0] if len(parts) == 1 else merge_results(parts, int(k), include)
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
        result = self._get_rows(stored_ids, chroma_where(filters), include)
        nodes = _nodes(result["ids"], result["documents"], result["metadatas"],
                       result.get("embeddings") if with_vectors else None)
        found = [(n, t, m) for n, t, m in zip(nodes, result["documents"], result["metadatas"]) if n is not None]
        self._keep([(n.node_id, (t, m)) for n, t, m in found], version)
        return [n for n, _, _ in found]

    def _owners(self, stored_ids: list[str]) -> dict[str, str]:
        if not stored_ids:
            return {}
        with self._reading():
            result = self._get_rows(list(dict.fromkeys(stored_ids)), None, ["metadatas"])
        return {i: owner(i, m) for i, m in zip(result["ids"], result["metadatas"]) if m is not None}

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        where, include = chroma_where(filters), INCLUDE + ["embeddings"]
        nodes: list[BaseNode] = []
        for result in self._pages(include, where):
            nodes.extend(n for n in _nodes(result["ids"], result["documents"], result["metadatas"],
                                           result.get("embeddings")) if n is not None)
        return nodes

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        where = chroma_where(filters)  # the store deletes by filters only together with ids
        if ids is not None:
            if not ids:
                return
            for chunk in _chunks(ids, self._batch_size()):
                self.collection.delete(ids=chunk, **({"where": where} if where else {}))
        else:
            self.collection.delete(where=where)

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every node, a page of ``limit`` at a time (``get`` with ``limit``/``offset``, at most the
        batch size of rows per call: Chroma binds a page's rows as SQL variables)."""
        include = INCLUDE + (["embeddings"] if with_vectors else [])
        page: list[BaseNode] = []
        for result in self._pages(include, None):
            page.extend(n for n in _nodes(result["ids"], result["documents"], result["metadatas"],
                                          result.get("embeddings") if with_vectors else None) if n is not None)
            while len(page) >= limit:
                yield self._listed(page[:limit])
                page = page[limit:]
        if page:
            yield self._listed(page)

    def _pages(self, include: list[str], where: Optional[dict]) -> Iterator[dict]:
        """``collection.get`` results of every row (passing ``where``), the batch size at a time."""
        size, offset = self._batch_size(), 0
        while True:
            with self._reading():
                result = self.collection.get(limit=size, offset=offset, include=include,
                                             **({"where": where} if where else {}))
            if not result["ids"]:
                return
            yield result
            if len(result["ids"]) < size:
                return
            offset += len(result["ids"])

    def _get_rows(self, stored_ids: list[str], where: Optional[dict], include: list[str]) -> dict:
        """One ``collection.get`` result for ``stored_ids`` (repeats read once: Chroma refuses
        them), read the batch size at a time."""
        merged: dict[str, list] = {"ids": [], **{key: [] for key in include}}
        for chunk in _chunks(list(dict.fromkeys(stored_ids)), self._batch_size()):
            result = self.collection.get(ids=chunk, include=include, **({"where": where} if where else {}))
            for key in merged:
                merged[key].extend(result[key] if result.get(key) is not None else [None] * len(result["ids"]))
        return merged

    def _batch_size(self) -> int:
        """Ids or rows per chromadb call: ``ID_BATCH``, or the client's max batch size if smaller."""
        if self._max_batch is None:
            try:
                self._max_batch = int(self.collection._client.get_max_batch_size())
            except Exception:  # noqa: BLE001 - a client without it (or a server that cannot say)
                self._max_batch = ID_BATCH
        return max(1, min(ID_BATCH, self._max_batch))

    def count(self) -> int:
        with self._reading():
            return int(self.collection.count())
