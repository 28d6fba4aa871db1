"""Qdrant (``QdrantVectorStore``) as a backend, through ``qdrant_client``'s public API.

Searches go out all at once (``query_batch_points``) asking for ids and scores only; the payloads
of ids not seen before are read in one ``retrieve``. Reads by id use ``retrieve`` (the store's
``get_nodes`` scrolls with an id filter, which the local mode answers by scanning everything),
listing uses ``scroll``. The local modes (``QdrantClient(":memory:")`` or ``path=``) are not safe
under threads (``ValueError: operands could not be broadcast`` while points are added), so every
call to a local client is serialised here.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import GenericAdapter
from llama_index_deepmemory.engine.ids import ID_KEY, engine_id, from_engine, owner


def qdrant_filter(filters: Optional[MetadataFilters], node_ids: Optional[Sequence[str]] = None,
                  doc_ids: Optional[Sequence[str]] = None) -> Any:
    """LlamaIndex filters and id restrictions as a Qdrant ``Filter`` (None: no restriction),
    over the payload keys ``QdrantVectorStore`` writes (metadata at the top, ``doc_id``)."""
    from qdrant_client.http import models as rest

    must: list[Any] = []
    if doc_ids:
        must.append(rest.FieldCondition(key="doc_id", match=rest.MatchAny(any=list(doc_ids))))
    if node_ids:
        must.append(rest.HasIdCondition(has_id=list(node_ids)))
    if filters is not None and filters.filters:
        must.append(_subfilter(filters, rest))
    return rest.Filter(must=must) if must else None


def _subfilter(filters: MetadataFilters, rest: Any) -> Any:
    conditions = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if f.filters:
                conditions.append(_subfilter(f, rest))
            continue
        op, value, key = f.operator or FilterOperator.EQ, f.value, f.key
        values = value if isinstance(value, list) else str(value).split(",")
        if op == FilterOperator.EQ:
            conditions.append(_equal(key, value, rest))
        elif op in _RANGES:
            conditions.append(rest.FieldCondition(key=key, range=rest.Range(**{_RANGES[op]: value})))
        # NE and NIN as "not EQ" / "not IN": a point missing the key passes them, as in SimpleVectorStore
        # (Qdrant's MatchExcept skips it)
        elif op == FilterOperator.NE:
            conditions.append(rest.Filter(must_not=[_equal(key, value, rest)]))
        elif op == FilterOperator.IN:
            conditions.append(_any(key, values, rest))
        elif op == FilterOperator.NIN:
            conditions.append(rest.Filter(must_not=[_any(key, values, rest)]))
        elif op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
            conditions.append(rest.FieldCondition(key=key, match=rest.MatchText(text=value)))
        elif op == FilterOperator.IS_EMPTY:
            conditions.append(rest.IsEmptyCondition(is_empty=rest.PayloadField(key=key)))
        else:
            raise ValueError(f"filter operator {op.value!r} on {key!r} is not supported over Qdrant; "
                             "use EQ, NE, GT, GTE, LT, LTE, IN, NIN, TEXT_MATCH or IS_EMPTY")
    condition = filters.condition or FilterCondition.AND  # None: AND, as in SimpleVectorStore (not NOT)
    part = {FilterCondition.AND: "must", FilterCondition.OR: "should"}.get(condition, "must_not")
    return rest.Filter(**{part: conditions})


_RANGES = {FilterOperator.LT: "lt", FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LTE: "lte"}
_EXACT = 2**53  # ints up to this compare exactly as floats


def _equal(key: str, value: Any, rest: Any) -> Any:
    """``key`` equal to ``value``; a number as a one-point range, which matches an int and a float
    payload alike (``MatchValue(1)`` skips a payload ``1.0``; it takes no float)."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _EXACT):
        return rest.FieldCondition(key=key, range=rest.Range(gte=value, lte=value))
    return rest.FieldCondition(key=key, match=rest.MatchValue(value=value))


def _any(key: str, values: list, rest: Any) -> Any:
    """``key`` equal to one of ``values`` (numbers compared as :func:`_equal` compares them)."""
    numbers = [_equal(key, v, rest) for v in values]
    ranges = [c for c in numbers if c.range is not None]
    if not ranges:
        return rest.FieldCondition(key=key, match=rest.MatchAny(any=values))
    exact = [c.match.value for c in numbers if c.range is None]
    exact_match = [rest.FieldCondition(key=key, match=rest.MatchAny(any=exact))] if exact else []
    return rest.Filter(should=ranges + exact_match)


class QdrantAdapter(GenericAdapter):
    name = "qdrant"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        options = getattr(engine.client, "init_options", {}) or {}
        local = options.get("location") == ":memory:" or options.get("path") is not None
        if local or not options:  # the local modes are not thread safe: one call at a time
            self._serial = threading.RLock()
        self._exists = False

    @property
    def _collection(self) -> str:
        return self.engine.collection_name

    def _ready(self) -> bool:
        """Whether the collection exists (remembered once it does; LlamaIndex creates it lazily)."""
        if not self._exists:
            with self._reading():
                self._exists = bool(self.engine.client.collection_exists(self._collection))
        return self._exists

    def _clear(self) -> None:
        super()._clear()
        with self._lock:
            self._exists = False  # a clear drops the collection (a delete keeps it: no new check)

    def delete(self, ref_doc_id: str) -> list[str]:
        return super().delete(ref_doc_id) if self._ready() else []

    def delete_nodes(self, node_ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> list[str]:
        return super().delete_nodes(node_ids, filters) if self._ready() else []

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        """The named points that pass ``filters`` (the store's own puts the ids among an OR
        group's conditions, deleting every match)."""
        if ids is not None and not ids:
            return
        where = qdrant_filter(filters, ids)
        if where is None:
            super()._delete_nodes(ids, filters)
            return
        self.engine.client.delete(self._collection, points_selector=where)


    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """Every query in one ``query_batch_points``; without ``bodies``, ids and scores only."""
        if k <= 0 or restriction.empty or not self._ready():
            return Hits.none(len(queries))
        from qdrant_client.http import models as rest

        where = qdrant_filter(restriction.filters, [engine_id(i) for i in restriction.node_ids or ()],
                              restriction.doc_ids)
        requests = [rest.QueryRequest(query=q.astype(np.float64).tolist(), using=self.engine.dense_vector_name,
                                      limit=int(k), filter=where, with_payload=bool(bodies))
                    for q in np.asarray(queries, dtype=np.float32)]
        version = self.version
        with self._reading():
            responses = self.engine.client.query_batch_points(self._collection, requests=requests)
        if not bodies:
            return self._named_hits([[(str(p.id), float(p.score)) for p in r.points] for r in responses])
        hits = Hits([], [])
        for response in responses:
            nodes = [from_engine(n) for n in self.engine.parse_to_query_result(response.points).nodes]
            hits.handles.append([n.node_id for n in nodes])
            hits.scores.append(np.asarray([p.score for p in response.points], dtype=np.float32))
            hits.nodes.update((n.node_id, n) for n in nodes)
            self._keep([(n.node_id, p) for n, p in zip(nodes, response.points)], version)
        return hits

    def _build(self, row: Any) -> BaseNode:
        return from_engine(self.engine.parse_to_query_result([row]).nodes[0])

    def _nodes(self, stored_ids: list[str], with_vectors: bool) -> list[BaseNode]:
        """Points by id as nodes under their own ids."""
        version = self.version
        with self._reading():
            points = self.engine.client.retrieve(self._collection, ids=stored_ids, with_payload=True,
                                                 with_vectors=with_vectors)
        nodes = [from_engine(n) for n in self.engine.parse_to_query_result(points).nodes]
        if not with_vectors:
            self._keep([(n.node_id, p) for n, p in zip(nodes, points)], version)
        return nodes

    def get(self, node_ids: Sequence[str], filters: Optional[MetadataFilters] = None,
            with_vectors: bool = True) -> list[BaseNode]:
        if not self._ready():
            return []
        if filters is not None:
            return super().get(node_ids, filters, with_vectors)
        nodes = {n.node_id: n for n in self._nodes([engine_id(i) for i in dict.fromkeys(node_ids)], with_vectors)}
        return [nodes[i] for i in dict.fromkeys(node_ids) if i in nodes]

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        """Points by id passing ``filters`` (translated as searches translate them, not by the store)."""
        if not stored_ids:
            return []
        return [n for page in self._scroll(qdrant_filter(filters, stored_ids), with_vectors, len(stored_ids))
                for n in page]

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        """Every point passing ``filters`` (translated as searches translate them, not by the store)."""
        if not self._ready():
            return []
        return [from_engine(n) for page in self._scroll(qdrant_filter(filters), True, 1024) for n in page]

    def _owners(self, stored_ids: list[str]) -> dict[str, str]:
        if not stored_ids or not self._ready():
            return {}
        with self._reading():
            points = self.engine.client.retrieve(self._collection, ids=list(dict.fromkeys(stored_ids)),
                                                 with_payload=[ID_KEY], with_vectors=False)
        return {str(p.id): owner(str(p.id), p.payload or {}) for p in points}

    def _add(self, nodes: list[BaseNode]) -> None:
        super()._add(nodes)
        self._exists = True

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every point, a page at a time (``scroll``)."""
        if not self._ready():
            return
        for nodes in self._scroll(None, with_vectors, limit):
            yield self._listed([from_engine(n) for n in nodes])

    def _scroll(self, where: Any, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """The points passing ``where`` (None: all), as stored, a page of ``limit`` at a time (``scroll``)."""
        offset = None
        while True:
            with self._reading():
                points, offset = self.engine.client.scroll(collection_name=self._collection, scroll_filter=where,
                                                           limit=limit, offset=offset, with_payload=True,
                                                           with_vectors=with_vectors)
            if points:
                yield self.engine.parse_to_query_result(points).nodes
            if offset is None:
                return

    def count(self) -> int:
        if not self._ready():
            return 0
        with self._reading():
            return int(self.engine.client.count(self._collection, exact=True).count)
